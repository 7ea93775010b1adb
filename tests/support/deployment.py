"""
The formula applied as an admin would, on a target (support.target: this host, or a
systemd lab node): deploy.sh with a pillar file, then salt-call for later applies.
Several deployments live side by side on one target (own deploy.sh config dir, pillar,
site, program, ports, paths).

On THIS host every test deployment uses names, ports and paths of its own (never the
formula's defaults: a real deployment may run here) and is removed at the end with
jupyter.clean. Tests that apply to the host hold host_lock(), so that two test sessions
never apply at the same time.
"""

import contextlib
import fcntl
import json
import os
import time
from pathlib import Path, PurePosixPath

import yaml

from support.jupyter_http import JupyterClient
from support.target import HOST, HOST_VENV, REPO, Result  # noqa: F401 - REPO, Result: for callers

VENV = HOST_VENV
# Pillar files live on tmpfs under /run (on nodes too): not under the trees the secrets
# test scans, gone after a reboot.
PILLAR_DIR = Path("/run/jupyter-formula-tests")
# deploy.sh's config dir of each test deployment (JUPYTER_FORMULA_ETC): never the
# default /etc/jupyter-formula, which belongs to a real deployment
ETC_ROOT = "/etc/jupyter-formula-tests"
LOCK = Path("/run/jupyter-formula-tests.lock")
JUPYTERLAB = "jupyterlab==4.6.6"

# The formula's defaults that a real deployment on this host would use: a host test's
# pillar must set each of these keys to a value of its own.
SHARED_DEFAULTS = {
    "user": "jupyter",
    "root_dir": "/srv/jupyter",
    "venv": "/opt/jupyter/venv",
    "venv_store": "/opt/jupyter/venvs",
    "state_dir": "/var/lib/jupyter-formula",
    "supervisor:program": "jupyter",
    "supervisor:log_dir": "/var/log/jupyter",
    "nginx:site": "jupyter",
    "nginx:listen": 80,
    "server:port": 8888,
}
RESERVED_PORTS = {80, 443, 8888}


_HELD = {"depth": 0, "handle": None}


@contextlib.contextmanager
def host_lock():
    """Serialise everything that applies the formula to this host or kills its daemons.
    Re-entrant within this process (a session fixture and a module fixture may both
    hold it); flock serialises processes."""
    if _HELD["depth"] == 0:
        handle = open(LOCK, "w", encoding="utf-8")  # noqa: SIM115 - held across the yield
        fcntl.flock(handle, fcntl.LOCK_EX)
        _HELD["handle"] = handle
    _HELD["depth"] += 1
    try:
        yield
    finally:
        _HELD["depth"] -= 1
        if _HELD["depth"] == 0:
            handle, _HELD["handle"] = _HELD["handle"], None
            fcntl.flock(handle, fcntl.LOCK_UN)
            handle.close()


def merge(base, extra):
    out = dict(base)
    for key, value in extra.items():
        out[key] = merge(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


def changed(results):
    """{state id: changes} of the states that changed something."""
    return {ret["__id__"]: ret["changes"] for ret in results.values() if ret.get("changes")}


def failed(results):
    return {ret["__id__"]: ret["comment"] for ret in results.values() if ret.get("result") is False}


def first_json(text):
    """The first JSON document in text (Salt's --out=json with other output around it)."""
    start = text.find("{")
    if start < 0:
        raise ValueError("no JSON in the output")
    return json.JSONDecoder().raw_decode(text[start:])[0]


def own_pillar(tag, listen, port, password, **extra):
    """A pillar whose every host-wide name is the test's own: user jft<tag>, program,
    site, config, logs, venvs and record under jft-<tag>; nginx on `listen`, Jupyter on
    `port`; not the catch-all server of its port."""
    base = {
        "user": f"jft{tag}",
        "root_dir": f"/srv/jft-{tag}",
        "venv": f"/opt/jft-{tag}/venv",
        "venv_store": f"/opt/jft-{tag}/venvs",
        "state_dir": f"/var/lib/jft-{tag}",
        "config_file": f"/etc/jft-{tag}/jupyter.json",
        "packages": [JUPYTERLAB],
        "password": password,
        "server": {"port": port},
        "supervisor": {"program": f"jft-{tag}", "log_dir": f"/var/log/jft-{tag}"},
        "nginx": {"site": f"jft-{tag}", "listen": listen, "default_server": False},
    }
    return merge(base, extra)


def _dotted(layer, dotted):
    value = layer
    for key in dotted.split(":"):
        value = value.get(key) if isinstance(value, dict) else None
    return value


# per server: with `instances`, each instance's own value (its entry over the top level)
PER_INSTANCE = ("user", "server:port")


def shared_names(pillar):
    """The keys of pillar that would touch a real deployment on this host: left at the
    formula's default (or set to it), or a reserved port. Empty when the pillar is safe."""
    layers = {"": pillar}
    if isinstance(pillar.get("instances"), dict):
        top = {k: v for k, v in pillar.items() if k != "instances"}
        layers = {f"instances:{name}:": merge(top, entry or {}) for name, entry in pillar["instances"].items()}
    problems = []
    for dotted, default in SHARED_DEFAULTS.items():
        for prefix, layer in (layers.items() if dotted in PER_INSTANCE else [("", pillar)]):
            value = _dotted(layer, dotted)
            if value is None or value == default:
                problems.append(f"{prefix}{dotted} ({'the default' if value is None else repr(value)})")
            elif dotted.endswith(("port", "listen")) and value in RESERVED_PORTS:
                problems.append(f"{prefix}{dotted} ({value})")
    tls = _dotted(pillar, "nginx:tls")
    if tls and tls.get("listen", 443) in RESERVED_PORTS:
        problems.append(f"nginx:tls:listen ({tls.get('listen', 443)})")
    return problems


class Deployment:
    """
    Deployment(target, name, pillar): the formula applied on target with pillar (the
    contents under ``jupyter:``). Deployment(name, pillar) is one on this host.
    """

    def __init__(self, target, name=None, pillar=None, check_names=True, etc=None):
        if isinstance(target, str):  # Deployment(name, pillar): this host
            target, name, pillar = HOST, target, name
        self.target = target
        self.name = name
        self.check_names = check_names and target is HOST
        # etc: deploy.sh's config dir; the default one (/etc/jupyter-formula) on lab nodes only
        assert etc is None or target is not HOST, "on this host a test deployment has a config dir of its own"
        self.etc = PurePosixPath(etc or f"{ETC_ROOT}/{name}")
        self.pillar_file = PILLAR_DIR / f"{name}.sls"
        self.pillar = {}
        self.write_pillar(pillar)

    def __repr__(self):
        return f"<Deployment {self.name} on {self.target.name}>"

    # --- pillar and applies --------------------------------------------

    def write_pillar(self, pillar, path=None):
        """Write {'jupyter': pillar} to the pillar file (or to path) on the target."""
        if self.check_names and path is None:
            problems = shared_names(pillar)
            assert not problems, (
                f"test deployment {self.name!r} would share names with a real deployment on this host: "
                + ", ".join(problems) + " (set every one of them to a name, port or path of the test's own)"
            )
        if path is None:
            self.pillar = pillar
        self.target.write(str(path or self.pillar_file), yaml.safe_dump({"jupyter": pillar}), mode="0600")
        return path or self.pillar_file

    def update_pillar(self, extra):
        self.write_pillar(merge(self.pillar, extra))

    @property
    def cache_dir(self):
        """Salt's cache dir of this deployment (deploy.sh: one per config dir)."""
        return "/var/cache/jupyter-formula/" + str(self.etc).replace("/", "_")

    def env(self):
        """The environment deploy.sh and salt-call get (on the host: this process's too)."""
        env = {"JUPYTER_FORMULA_VENV": self.target.salt_venv}
        if str(self.etc) != "/etc/jupyter-formula":  # the README's own path sets nothing
            env["JUPYTER_FORMULA_ETC"] = str(self.etc)
        return {**os.environ, **env} if self.target is HOST else env

    def deploy_argv(self, *args, pillar_file=True):
        file = [str(self.pillar_file)] if pillar_file is True else ([str(pillar_file)] if pillar_file else [])
        return [f"{self.target.repo}/deploy.sh", *file, *args]

    def deploy(self, *args, timeout=1500, pillar_file=True):
        """The quick start: ./deploy.sh PILLAR_FILE [ARGS] (pillar_file=None: no file)."""
        return self.target.run(self.deploy_argv(*args, pillar_file=pillar_file), env=self.env(), timeout=timeout)

    def deploy_streamed(self, *args, pillar_file=True):
        """deploy.sh, its stderr lines read as they come: (Result, [(seconds since start, line)],
        seconds it took)."""
        start = time.monotonic()
        proc = self.target.popen(self.deploy_argv(*args, pillar_file=pillar_file), env=self.env())
        stdout = []
        import threading  # noqa: PLC0415

        reader = threading.Thread(target=lambda: stdout.append(proc.stdout.read()), daemon=True)
        reader.start()
        lines = [(time.monotonic() - start, line.rstrip("\n")) for line in proc.stderr]
        rc = proc.wait(timeout=1500)
        reader.join(60)
        took = time.monotonic() - start
        return Result(rc, "".join(stdout), "\n".join(line for _, line in lines)), lines, took

    def salt_call(self, *args, timeout=1500):
        return self.target.run(
            [f"{self.target.salt_venv}/bin/salt-call", f"--config-dir={self.etc}", "--local", *args],
            env=self.env(), timeout=timeout,
        )

    def apply(self, *args, sls="jupyter", timeout=1500):
        """state.apply with the formula's modules synced first (as deploy.sh and the README
        do); returns Salt's result dict (raises when the output is not JSON)."""
        proc = self.salt_call("state.apply", sls, "sync_mods=modules,states", *args, "--out=json",
                              "--retcode-passthrough", timeout=timeout)
        try:
            results = first_json(proc.stdout)["local"]
        except (ValueError, KeyError, TypeError) as exc:
            raise AssertionError(f"state.apply gave no JSON on {self.target.name}:\n{proc}") from exc
        if not isinstance(results, dict):
            raise AssertionError(f"state.apply on {self.target.name} did not run states:\n{proc}")
        return results

    def settings(self):
        proc = self.salt_call("jupyter.settings", "--out=json")
        return first_json(proc.stdout)["local"]

    def refused(self):
        """The validator's message when jupyter.settings refuses the current pillar, else None."""
        proc = self.salt_call("jupyter.settings", "--out=json")
        try:
            out = first_json(proc.stdout)["local"]
        except (ValueError, KeyError, TypeError):
            return (proc.stdout + proc.stderr).strip() or f"no output (rc={proc.rc})"
        if not isinstance(out, str):
            return None
        # salt-call adds the function's docstring to an invalid-arguments error: the reason only
        for marker in ("Invalid pillar", "Passed invalid arguments:"):
            if marker in out:
                return out[out.index(marker):].split("\n\nUsage:")[0].strip()
        return out

    # --- what runs -------------------------------------------------------

    @property
    def program(self):
        return self.pillar.get("supervisor", {}).get("program", "jupyter")

    @property
    def password(self):
        return self.pillar.get("password")

    def status(self):
        return self.target.supervisor_status(self.program)

    def jupyter_pid(self):
        """The Jupyter process while it is up: RUNNING, or STARTING (an apply returns as
        soon as Jupyter listens, supervisor says RUNNING only after its startsecs)."""
        return self.status()[1]

    def wait_settled(self, timeout=60):
        """Until supervisor no longer says STARTING (startsecs passed)."""
        deadline = time.monotonic() + timeout
        while self.status()[0] == "STARTING" and time.monotonic() < deadline:
            time.sleep(0.2)
        return self.status()

    def wait_for_jupyter(self, timeout=90, scheme=None):
        scheme = scheme or self.scheme
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                if self.client(scheme).session.get(self.url("api/status", scheme), timeout=5).status_code in (200, 403):
                    return
            except OSError:
                pass
            time.sleep(0.3)
        raise AssertionError(f"Jupyter did not answer at {self.url(scheme=scheme)} within {timeout}s")

    @property
    def scheme(self):
        return "https" if (self.pillar.get("nginx") or {}).get("tls") else "http"

    def port(self, scheme=None):
        nginx = self.pillar.get("nginx", {})
        if (scheme or self.scheme) == "https":
            return (nginx.get("tls") or {}).get("listen", 443)
        return nginx.get("listen", 80)

    def url(self, path="", scheme=None):
        scheme = scheme or self.scheme
        port = self.port(scheme)
        base = self.pillar.get("server", {}).get("base_url", "/")
        default = {"http": 80, "https": 443}[scheme]
        host = self.target.address
        netloc = host if port == default else f"{host}:{port}"  # as a browser writes it
        return f"{scheme}://{netloc}{base}{path}"

    def client(self, scheme=None, timeout=30):
        return JupyterClient(self.url(scheme=scheme), verify=False, timeout=timeout)

    def login(self, password=None, scheme=None):
        """A logged-in client (AssertionError when the password is refused)."""
        client = self.client(scheme)
        assert client.login(password or self.password), f"login refused: HTTP {client.last_login_status}"
        return client

    def serves(self, password=None, scheme=None, timeout=10):
        """Login and a kernel computing 6*7, through nginx: True or False, never raises."""
        return self.client(scheme, timeout=timeout).serves(password or self.password, timeout=timeout)

    def wait_serving(self, timeout=120, password=None, step=0.5):
        """Seconds until login + kernel work through nginx (AssertionError after timeout)."""
        start = time.monotonic()
        while time.monotonic() - start < timeout:
            if self.serves(password):
                return time.monotonic() - start
            time.sleep(step)
        raise AssertionError(f"{self}: login + kernel through nginx did not work within {timeout}s")

    # --- the end --------------------------------------------------------

    def clean(self, user=True, notebooks=False):
        """jupyter.clean (with clean:user: the accounts the formula created), then the
        pillar file, deploy.sh's config dir and Salt's cache of this deployment. With
        notebooks, the test's root_dir goes too (jupyter.clean keeps notebooks, and a
        record of them), and a second jupyter.clean lets the formula forget it."""
        results = {}
        root_dir, state_dir = self.pillar.get("root_dir"), self.pillar.get("state_dir")
        if self.target.exists(f"{self.etc}/minion"):
            self.update_pillar({"clean": {"user": bool(user)}})
            results = self.apply(sls="jupyter.clean")
            if notebooks and root_dir and root_dir != SHARED_DEFAULTS["root_dir"] and self.target.exists(root_dir):
                self.target.remove(root_dir)
                again = self.apply(sls="jupyter.clean")
                user = self.pillar.get("user")
                assert not failed(again), (failed(again), self.target.run(["ps", "-f", "-u", user]).stdout if user else "")
        # the formula keeps its record while a notebook directory it made is left (an
        # instance's own root_dir, not removed above): the test's own state_dir goes by hand
        if notebooks and state_dir and state_dir != SHARED_DEFAULTS["state_dir"]:
            self.target.remove(state_dir)
        self.forget()
        return results

    def forget(self):
        """Remove the pillar file, deploy.sh's config dir and Salt's cache of this
        deployment (what deploy.sh made besides the deployment itself)."""
        self.target.remove(str(self.pillar_file), str(self.etc), self.cache_dir)


def nginx_pids(target=HOST):
    """(master pid, sorted worker pids) of the running nginx."""
    return target.nginx_pids()
