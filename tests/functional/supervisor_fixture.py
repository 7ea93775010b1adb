"""
A real, private supervisord for functional tests.

Each test gets its own supervisord (``nodaemon``, in the background) in a
short temporary directory, with its own unix socket and include directory of
program files; it is stopped at the end of the test, failed or not, and so
are the programs it started.

Tests run against both supervisor versions the formula supports: Debian 12's
``/usr/bin/supervisord`` (4.2.5) and 4.3.0 from PyPI, pip-installed once into a
cached virtualenv and reused (``SUPERVISOR_TEST_CACHE`` or
``/var/cache/jupyter-formula-tests``, else pytest's cache directory).
"""

import fcntl
import os
import pathlib
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import xmlrpc.client

import pytest
from support.loader import load

DEBIAN_SUPERVISORD = "/usr/bin/supervisord"
PIP_VERSION = "4.3.0"
VERSIONS = ("4.2.5", PIP_VERSION)

PYTHON = "/usr/bin/python3"  # what the test programs run with


_TRANSPORT = load("_modules", "supervisor_rpc")


def _cache_root(config):
    wanted = os.environ.get("SUPERVISOR_TEST_CACHE", "/var/cache/jupyter-formula-tests")
    try:
        os.makedirs(wanted, exist_ok=True)
        if os.access(wanted, os.W_OK):
            return pathlib.Path(wanted)
    except OSError:
        pass
    return pathlib.Path(config.cache.mkdir("jupyter-formula-tests"))


def pip_supervisord(config):
    """bin/supervisord of a cached venv with supervisor 4.3.0 (built once)."""
    venv = _cache_root(config) / "supervisor-{}".format(PIP_VERSION)
    binary = venv / "bin" / "supervisord"
    stamp = venv / ".complete"
    venv.parent.mkdir(parents=True, exist_ok=True)
    with open(str(venv) + ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not stamp.exists():
            shutil.rmtree(venv, ignore_errors=True)
            subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
            subprocess.run(
                [str(venv / "bin" / "python"), "-m", "pip", "install", "--quiet",
                 "supervisor=={}".format(PIP_VERSION)],
                check=True,
            )
            stamp.write_text(PIP_VERSION + "\n")
    return str(binary)


def supervisord_binary(version, config):
    if version == PIP_VERSION:
        return pip_supervisord(config)
    if not os.path.exists(DEBIAN_SUPERVISORD):
        pytest.fail(
            "{} is missing: install Debian's supervisor package".format(DEBIAN_SUPERVISORD)
        )
    return DEBIAN_SUPERVISORD


class PrivateSupervisord:
    """One supervisord of our own: files under ``root``, socket ``root/s.sock``."""

    def __init__(self, binary, version):
        self.binary = binary
        self.version = version
        # short path: a unix socket path must stay under 108 bytes
        self.root = pathlib.Path(tempfile.mkdtemp(prefix="supd-"))
        self.conf_d = self.root / "conf.d"
        self.logs = self.root / "logs"
        self.conf_d.mkdir()
        self.logs.mkdir()
        self.socket = str(self.root / "s.sock")
        self.conf = self.root / "supervisord.conf"
        self.conf.write_text(
            "[unix_http_server]\n"
            "file={root}/s.sock\n"
            "chmod=0700\n"
            "[supervisord]\n"
            "nodaemon=true\n"
            "logfile={root}/supervisord.log\n"
            "pidfile={root}/supervisord.pid\n"
            "childlogdir={root}/logs\n"
            "[rpcinterface:supervisor]\n"
            "supervisor.rpcinterface_factory = supervisor.rpcinterface:make_main_rpcinterface\n"
            "[include]\n"
            "files = {root}/conf.d/*.conf\n".format(root=self.root)
        )
        self.process = None

    # program files -----------------------------------------------------

    def program_text(self, name, command, **options):
        settings = {
            "command": command,
            "autostart": "true",
            "autorestart": "false",
            "startsecs": "1",
            "startretries": "0",
            "stopwaitsecs": "5",
            "stdout_logfile": "{}/{}.out".format(self.logs, name),
            "stderr_logfile": "{}/{}.err".format(self.logs, name),
            # marks the programs as ours, see stop()
            "environment": 'SUPD_TEST_ROOT="{}"'.format(self.root),
        }
        settings.update({k: str(v) for k, v in options.items()})
        return "[program:{}]\n{}\n".format(
            name, "\n".join("{}={}".format(k, v) for k, v in settings.items())
        )

    def write_program(self, name, command, **options):
        """Write conf.d/NAME.conf with one [program:NAME]; returns its path."""
        return self.write_file(name, self.program_text(name, command, **options))

    def write_file(self, filename, text):
        path = self.conf_d / (filename + ".conf")
        path.write_text(text)
        return str(path)

    # daemon ------------------------------------------------------------

    def rpc(self):
        """supervisord's XML-RPC namespace, through our module's transport."""
        return _TRANSPORT._proxy(self.socket).supervisor

    def start(self, timeout=15):
        log = open(self.root / "stdout.log", "wb")
        self.process = subprocess.Popen(
            [self.binary, "-c", str(self.conf)],
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
        log.close()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                break
            if os.path.exists(self.socket):
                try:
                    if self.rpc().getState()["statename"] == "RUNNING":
                        return self
                except (OSError, xmlrpc.client.Error):
                    pass
            time.sleep(0.05)
        self.stop()
        raise RuntimeError(
            "private supervisord did not come up:\n" + self.read_log()
        )

    def kill_hard(self):
        """
        SIGKILL supervisord alone, as the OOM killer would: its programs live
        on, orphaned (what Debian's KillMode=process leaves behind). ``start``
        then starts a new supervisord on the same files and socket.
        """
        self.process.kill()
        self.process.wait(10)

    def spawns(self, name):
        """How often supervisord spawned NAME (its log survives restarts)."""
        text = (self.root / "supervisord.log").read_text()
        return text.count("spawned: '{}' with pid".format(name))

    def read_log(self):
        text = ""
        for name in ("stdout.log", "supervisord.log"):
            path = self.root / name
            if path.exists():
                text += "--- {}\n{}".format(name, path.read_text(errors="replace"))
        return text

    def wait_for(self, spec, state, timeout=10):
        deadline = time.monotonic() + timeout
        while True:
            info = self.rpc().getProcessInfo(spec)
            if info["statename"] == state:
                return info
            if time.monotonic() > deadline:
                raise AssertionError("{} is {}, not {}".format(spec, info["statename"], state))
            time.sleep(0.05)

    def _our_children(self):
        """pids of live processes started by this supervisord (by marker)."""
        marker = "SUPD_TEST_ROOT={}".format(self.root).encode()
        pids = []
        for entry in os.listdir("/proc"):
            if not entry.isdigit():
                continue
            try:
                with open("/proc/{}/environ".format(entry), "rb") as f:
                    if marker in f.read().split(b"\0"):
                        pids.append(int(entry))
            except OSError:
                continue
        return pids

    def stop(self):
        """Kill it and its programs: a test's daemon needs no graceful end."""
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(10)
        for pid in self._our_children():
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        shutil.rmtree(self.root, ignore_errors=True)


@pytest.fixture(scope="session", params=VERSIONS, ids=["supervisor-" + v for v in VERSIONS])
def supervisord_build(request):
    """(version, path of its supervisord) for each supported version."""
    return request.param, supervisord_binary(request.param, request.config)


@pytest.fixture
def supervisord_factory(supervisord_build):
    """Make (not start) a private supervisord; all are stopped at teardown."""
    version, binary = supervisord_build
    made = []

    def make():
        daemon = PrivateSupervisord(binary, version)
        made.append(daemon)
        return daemon

    yield make
    for daemon in made:
        daemon.stop()
