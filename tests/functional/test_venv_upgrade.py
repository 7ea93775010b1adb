"""
Upgrades that cannot break a working server, for real: a jupyterlab==4.6.6 venv built
by ``jupyter_venv.built`` from a local wheelhouse (no network), a Jupyter server run by
a private supervisord as ``nobody`` through the venv link, and ``jupyter_venv.live``
switching it. In order (one server and its venvs are shared by the tests of this file):

1. a set with a server extension that raises while loading: the state fails naming the
   'extensions' check, the link and the server's pid are unchanged and it still serves
   login and kernels; a second apply fails in seconds without rebuilding;
2. a good set (+ an extension that serves a page): switch, one restart, the extension
   answers through the live server;
3. ``jupyter.rollback``: the previous venv serves again; the next apply with the
   rolled-back pillar fails saying so;
4. a pip failure (an sdist whose build fails, an extra index with credentials that
   cannot be reached): the half-built venv is gone, the live one untouched, no
   credential in the failure.

Runs as root (a server as another user, supervisord). Figures: build, check and
fail-fast times.
"""

import copy
import json
import os
import pathlib
import shutil
import socket
import stat
import sys
import tempfile
import threading
import time

import argon2
import psutil
import pytest
import requests

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))

from support import wheelhouse  # noqa: E402
from support.figures import Section  # noqa: E402
from support.jupyter_http import JupyterClient  # noqa: E402
from support.loader import load  # noqa: E402
from supervisor_fixture import DEBIAN_SUPERVISORD, PrivateSupervisord  # noqa: E402

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="runs a server as nobody under supervisord: root only")

FIGURES = Section("venv upgrade")
PYTHON = "/usr/bin/python3"
BASE = [wheelhouse.JUPYTERLAB]
PASSWORD = "venv-upgrade-Functional-7"
PROGRAM = "jupyter"
BASE_URL = "/jfv/"
SECRET = "s3cretTOKEN-9f8e7d"

VENV_FUNCTIONS = (
    "mask", "venv_id", "manifest", "build", "instance_settings", "link_target", "switch",
    "read_history", "record", "mark_rolled_back", "rolled_back", "prune", "check_key",
    "failed_check", "check",
)


def free_port():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class ProcessWatch(threading.Thread):
    """Every command line, and each JUPYTER_TOKEN in an environment, seen while it runs."""

    def __init__(self):
        super().__init__(daemon=True)
        self.cmdlines, self.tokens = set(), set()
        self.done = threading.Event()

    def run(self):
        while not self.done.is_set():
            for proc in psutil.process_iter(["cmdline", "environ"]):
                self.cmdlines.add(" ".join(proc.info["cmdline"] or []))
                token = (proc.info["environ"] or {}).get("JUPYTER_TOKEN")
                if token:
                    self.tokens.add(token)
            time.sleep(0.02)

    def __enter__(self):
        self.start()
        return self

    def __exit__(self, *exc):
        self.done.set()
        self.join()


class Poller(threading.Thread):
    """GET the login page every 10 ms: the longest gap between two good answers."""

    def __init__(self, url):
        super().__init__(daemon=True)
        self.url = url
        self.good = []
        self.done = threading.Event()

    def run(self):
        session = requests.Session()
        while not self.done.is_set():
            try:
                if session.get(self.url, timeout=2).status_code == 200:
                    self.good.append(time.monotonic())
            except requests.RequestException:
                session = requests.Session()
            time.sleep(0.01)

    def longest_gap(self):
        return max(b - a for a, b in zip(self.good, self.good[1:]))

    def __enter__(self):
        self.start()
        time.sleep(0.2)
        return self

    def __exit__(self, *exc):
        time.sleep(0.2)
        self.done.set()
        self.join()


class World:
    """One instance 'jupyter': its settings, the loaded modules, a supervisord."""

    def __init__(self, root, wh, daemon):
        self.root = root
        self.wh = wh
        self.daemon = daemon
        self.store = str(root / "venvs")
        self.link = str(root / "venv")
        self.port = free_port()
        self.config_file = str(root / "etc" / "jupyter.json")
        self.pip = {"index_url": wh["index_url"], "extra_index_urls": [wh["extra_index_url"]],
                    "trusted_hosts": [], "proxy": None}
        self.packages = list(BASE)
        self.funcs = {}
        self.venv = load("_modules", "jupyter_venv", salt=self.funcs)
        self.funcs.update({f"jupyter_venv.{n}": getattr(self.venv, n) for n in VENV_FUNCTIONS})
        self.funcs["jupyter.settings"] = self.settings
        self.rpc = load("_modules", "supervisor_rpc", salt={"config.get": lambda key, default="": default})
        self.funcs["supervisor_rpc.restart"] = self.rpc.restart
        self.states = load("_states", "jupyter_venv", salt=self.funcs)
        self.history = load("_modules", "jupyter_history", salt=self.funcs)

    def instance(self):
        home = str(self.root / "home")
        venv_id = self.venv.venv_id(PYTHON, self.packages, self.pip, self.store)
        return {
            "name": "jupyter", "user": "nobody", "group": "nogroup", "home": home,
            "root_dir": str(self.root / "notebooks"), "venv": self.link, "python": PYTHON,
            "app": "lab", "packages": list(self.packages), "pip": copy.deepcopy(self.pip),
            "config_file": self.config_file,
            "server": {"ip": "127.0.0.1", "port": self.port, "base_url": BASE_URL},
            "environment": {"HOME": home, "USER": "nobody", "LOGNAME": "nobody", "SHELL": "/bin/sh",
                            "PATH": f"{self.link}/bin:/usr/local/bin:/usr/bin:/bin",
                            "JUPYTER_CONFIG_DIR": f"{home}/.jupyter"},
            "program": PROGRAM,
            "program_file": str(self.daemon.conf_d / f"{PROGRAM}.conf"),
            "supervisor": {"socket": self.daemon.socket},
            "venv_id": venv_id,
            "venv_dir": os.path.join(self.store, venv_id),
        }

    def settings(self, reveal_secrets=False, require_password=True):
        inst = self.instance()
        if not reveal_secrets:
            inst["pip"] = {k: ("<hidden>" if k == "index_url" and v else v) for k, v in inst["pip"].items()}
        return {"venv_store": self.store, "upgrade": {"keep": 2, "timeout": 120}, "instances": {"jupyter": inst}}

    def apply(self):
        """What the sls does: built, then live; the program watches live (one restart)."""
        inst = self.instance()
        started = time.monotonic()
        built = self.states.built(inst["venv_dir"], "jupyter")
        built_s = time.monotonic() - started
        live = None
        if built["result"]:
            live = self.states.live(self.link, "jupyter")
            if live["result"] and live["changes"]:
                self.restart()
        return built, live, built_s, time.monotonic() - started

    def restart(self):
        self.rpc.restart(PROGRAM, socket=self.daemon.socket, ready_port=self.port, timeout=120)
        self.wait_listening()

    def wait_listening(self, timeout=60):
        """supervisord says RUNNING after startsecs (1 s), Jupyter listens a little later."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=1):
                    return
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.1)

    def pid(self):
        return self.daemon.rpc().getProcessInfo(PROGRAM)["pid"]

    def spawns(self):
        return (self.daemon.root / "supervisord.log").read_text().count(f"spawned: '{PROGRAM}' with pid")

    def target(self):
        return os.readlink(self.link)

    def client(self):
        return JupyterClient(f"http://127.0.0.1:{self.port}{BASE_URL}", timeout=30)

    def serves(self):
        """Login with the password and 6*7 on a kernel, through the live server."""
        client = self.client()
        assert client.login(PASSWORD), f"login refused: HTTP {client.last_login_status}"
        kernel = client.start_kernel()
        try:
            return client.execute(kernel, "6*7", timeout=60)
        finally:
            client.delete_kernel(kernel)

    def good_ext(self):
        return requests.get(f"http://127.0.0.1:{self.port}{BASE_URL}jfv-good-ext", timeout=10)


@pytest.fixture(scope="module")
def world():
    root = pathlib.Path(tempfile.mkdtemp(prefix="jfv-upgrade-"))
    root.chmod(0o755)
    patch = pytest.MonkeyPatch()
    daemon = None
    try:
        # pip reads nothing but the wheelhouse: not the machine's config, not the network
        patch.setenv("PIP_CONFIG_FILE", os.devnull)
        for var in ("PIP_FIND_LINKS", "PIP_INDEX_URL", "PIP_EXTRA_INDEX_URL", "PIP_NO_INDEX"):
            patch.delenv(var, raising=False)
        wh = wheelhouse.build(root / "wheelhouse")
        for sub, mode in (("home", 0o755), ("notebooks", 0o750)):
            (root / sub).mkdir(mode=mode)
            shutil.chown(root / sub, "nobody", "nogroup")
        (root / "etc").mkdir()
        daemon = PrivateSupervisord(DEBIAN_SUPERVISORD, "4.2.5")
        w = World(root, wh, daemon)
        # jupyter_server's own argon2 parameters (jupyter_server.auth.passwd)
        hashed = "argon2:" + argon2.PasswordHasher(memory_cost=10240, time_cost=10, parallelism=8).hash(PASSWORD)
        config = {
            "ServerApp": {"ip": "127.0.0.1", "port": w.port, "port_retries": 0, "base_url": BASE_URL,
                          "root_dir": str(root / "notebooks"), "open_browser": False,
                          "allow_remote_access": True, "allow_root": False},
            "IdentityProvider": {"token": ""},
            "PasswordIdentityProvider": {"password_required": True, "allow_password_change": False,
                                         "hashed_password": hashed},
        }
        pathlib.Path(w.config_file).write_text(json.dumps(config, indent=2))
        os.chown(w.config_file, 0, 65534)
        os.chmod(w.config_file, 0o640)
        inst = w.instance()
        env = ",".join(f'{k}="{v}"' for k, v in {**inst["environment"], "SUPD_TEST_ROOT": str(daemon.root)}.items())
        daemon.write_program(
            PROGRAM, f"{w.link}/bin/jupyter-lab --no-browser --config={w.config_file}",
            directory=inst["root_dir"], user="nobody", environment=env, autostart="false",
            autorestart="true", startsecs="1", stopwaitsecs="10", stopasgroup="true", killasgroup="true",
        )
        daemon.start()

        # first install: built, then the link (no candidate check: nothing serves yet)
        built, live, built_s, total_s = w.apply()
        assert built["result"] is True and built["changes"]["venv"]["new"] == inst["venv_dir"], built
        assert live["result"] is True and live["changes"]["venv"] == {"old": None, "new": inst["venv_dir"]}, live
        FIGURES.append(f"base venv (jupyterlab==4.6.6, ~90 distributions) built in {built_s:.1f} s")
        w.rpc.start(PROGRAM, socket=daemon.socket, ready_port=w.port, timeout=120)
        w.wait_listening()
        assert w.serves() == "42"
        w.base_dir = inst["venv_dir"]
        yield w
    finally:
        patch.undo()
        if daemon is not None:
            daemon.stop()
        shutil.rmtree(root, ignore_errors=True)


def test_first_apply_is_idempotent(world):
    # root owns the venv; the server's user can run it, not change it
    top = os.stat(world.base_dir)
    assert (top.st_uid, stat.S_IMODE(top.st_mode)) == (0, 0o755)
    writable = [os.path.join(d, n) for d, dirs, files in os.walk(world.base_dir) for n in dirs + files
                if not os.path.islink(os.path.join(d, n))
                and (os.lstat(os.path.join(d, n)).st_mode & 0o022 or os.lstat(os.path.join(d, n)).st_uid != 0)]
    assert writable == []
    assert world.venv.manifest(world.base_dir)["packages"] == BASE

    built, live, _, _ = world.apply()
    assert (built["result"], built["changes"]) == (True, {}), built
    assert (live["result"], live["changes"]) == (True, {}), live
    history = world.history.history()["jupyter"]
    assert history["live"] == world.base_dir
    assert [v["venv"] for v in history["venvs"]] == [world.base_dir]
    assert history["venvs"][0]["packages"] == BASE


def test_a_raising_extension_never_goes_live(world):
    pid, spawns, target = world.pid(), world.spawns(), world.target()
    world.packages = BASE + ["jfv-bad-ext==1.0"]
    candidate = world.instance()["venv_dir"]

    built, live, built_s, total_s = world.apply()
    assert built["result"] is True and built["changes"], built
    assert live["result"] is False
    assert "failed the 'extensions' check" in live["comment"]
    assert wheelhouse.BAD_EXT_ERROR in live["comment"]
    assert f"{world.link} still points at {target}" in live["comment"]
    FIGURES.append(f"candidate venv with the raising extension built in {built_s:.1f} s; "
                   f"its check failed after {total_s - built_s:.1f} s")

    # nothing changed: the link, the process, and it still serves
    assert world.target() == target
    assert (world.pid(), world.spawns()) == (pid, spawns)
    assert world.serves() == "42"

    # the same pillar again: no rebuild, no new check, a fast failure saying why
    built_at = world.venv.manifest(candidate)["built_at"]
    started = time.monotonic()
    built, live, _, _ = world.apply()
    again_s = time.monotonic() - started
    assert (built["result"], built["changes"]) == (True, {})
    assert live["result"] is False
    assert "is not checked again until they change" in live["comment"]
    assert "'extensions' check" in live["comment"]
    assert world.venv.manifest(candidate)["built_at"] == built_at
    assert again_s < 2.0, f"second apply took {again_s:.2f} s"
    assert (world.pid(), world.spawns(), world.target()) == (pid, spawns, target)
    FIGURES.append(f"second apply with the same pillar failed in {again_s * 1000:.1f} ms (no rebuild, no check)")


def test_a_good_upgrade_switches_with_one_restart(world):
    pid, spawns, old = world.pid(), world.spawns(), world.target()
    world.packages = BASE + ["jfv-good-ext==1.0"]
    new = world.instance()["venv_dir"]
    assert world.good_ext().status_code == 404

    inst = world.instance()
    built = world.states.built(inst["venv_dir"], "jupyter")
    assert built["result"] is True and built["changes"]["packages"] == world.packages, built
    started = time.monotonic()
    with ProcessWatch() as watch:
        live = world.states.live(world.link, "jupyter")
    check_s = time.monotonic() - started
    assert live["result"] is True, live["comment"]
    # the candidate got its one-time token in its environment, never on a command line
    token, = watch.tokens
    assert len(token) >= 32
    assert not [c for c in watch.cmdlines if token in c or "token" in c.lower()]
    assert any(f"{new}/bin/jupyter-lab" in c for c in watch.cmdlines)
    assert live["changes"]["venv"] == {"old": old, "new": new}
    # the state switches the link only; the restart is the program's watch
    assert world.target() == new
    assert (world.pid(), world.spawns()) == (pid, spawns)
    FIGURES.append(f"good candidate built in {built['comment'].split(' in ')[-1]}, checked and switched "
                   f"in {check_s:.1f} s ({live['comment'].split('(')[-1].rstrip(')')})")

    with Poller(f"http://127.0.0.1:{world.port}{BASE_URL}login") as poller:
        world.restart()  # what the program's watch on the live state does
    FIGURES.append(f"unavailability of the switch: {poller.longest_gap():.2f} s without an answer "
                   "(the old server's last login page to the new one's first, polled every 10 ms)")
    assert world.spawns() == spawns + 1
    assert world.pid() != pid
    assert world.good_ext().text == "jfv-good-ext 1.0"
    assert world.serves() == "42"

    again = world.apply()
    assert (again[0]["changes"], again[1]["changes"], again[1]["result"]) == ({}, {}, True)
    history = world.history.history()["jupyter"]
    assert [v["venv"] for v in history["venvs"]] == [world.base_dir, new]
    assert history["live"] == new


def test_rollback_serves_the_previous_venv_again(world):
    good = world.target()
    spawns = world.spawns()

    started = time.monotonic()
    result = world.history.rollback()
    FIGURES.append(f"jupyter.rollback returned in {time.monotonic() - started:.1f} s (switch + restart)")
    assert result["jupyter"]["old"] == good and result["jupyter"]["new"] == world.base_dir
    world.wait_listening()
    assert world.target() == world.base_dir
    assert world.spawns() == spawns + 1
    assert world.good_ext().status_code == 404
    assert world.serves() == "42"

    listed = world.history.history()["jupyter"]["venvs"]
    assert [(v["venv"], v["live"]) for v in listed] == [(good, False), (world.base_dir, True)]
    assert "rolled back by jupyter.rollback" in listed[0]["rolled_back"]

    # the pillar still names the good set: the apply refuses it instead of upgrading again
    built, live, _, _ = world.apply()
    assert built["changes"] == {}
    assert live["result"] is False
    assert "rolled back by jupyter.rollback at" in live["comment"]
    assert "change packages in pillar, or remove" in live["comment"]
    assert world.target() == world.base_dir

    # nothing earlier than the base venv
    with pytest.raises(Exception, match="no earlier venv"):
        world.history.rollback(instance="jupyter")


def test_a_pip_failure_leaves_the_live_venv_alone(world, monkeypatch):
    monkeypatch.setenv("PIP_RETRIES", "0")
    pid, spawns, target = world.pid(), world.spawns(), world.target()
    world.packages = BASE + ["jfv-broken==1.0"]
    # an index that needs credentials and cannot be reached (nothing listens on port 9)
    world.pip["extra_index_urls"] = [world.wh["extra_index_url"], f"http://jfvuser:{SECRET}@127.0.0.1:9/simple/"]
    world.pip["trusted_hosts"] = ["127.0.0.1"]
    candidate = world.instance()["venv_dir"]

    started = time.monotonic()
    with ProcessWatch() as watch:
        built = world.states.built(candidate, "jupyter")
    failed_s = time.monotonic() - started
    # pip ran, and no command line carried the index credentials
    assert any(f"{candidate}/bin/python -m pip install -r" in c for c in watch.cmdlines)
    assert not [c for c in watch.cmdlines if SECRET in c or "jfvuser" in c]
    assert built["result"] is False
    assert wheelhouse.BROKEN_ERROR in built["comment"]
    assert SECRET not in built["comment"] and "jfvuser" not in built["comment"]
    assert not os.path.exists(candidate)
    assert (world.target(), world.pid(), world.spawns()) == (target, pid, spawns)
    assert world.serves() == "42"
    FIGURES.append(f"pip failure reported after {failed_s:.1f} s; half-built venv removed")
