"""
Unit tests of _modules/supervisor_rpc.py: the loader is mocked, supervisord is
an in-memory fake of its XML-RPC namespace (plus one real XML-RPC server on a
unix socket for the transport). No root, no supervisord, seconds.
"""

import inspect
import os
import shlex
import signal
import socket
import socketserver
import subprocess
import sys
import threading
import time
import types
import xmlrpc.client
import xmlrpc.server

import psutil
import pytest
from salt.exceptions import CommandExecutionError
from support.loader import load

SOCK = "/fake/supervisor.sock"


def info(group, name, state="RUNNING", pid=100, **extra):
    data = {
        "group": group,
        "name": name,
        "statename": state,
        "pid": pid if state in ("RUNNING", "STARTING", "STOPPING") else 0,
        "start": 1000,
        "stop": 0,
        "now": 1042,
        "exitstatus": 0,
        "spawnerr": "",
        "description": "",
        "stdout_logfile": "/log/{}.out".format(name),
        "stderr_logfile": "/log/{}.err".format(name),
    }
    data.update(extra)
    return data


def config(group, name, command="/usr/bin/python3 -m server 8888", **extra):
    """One entry of getAllConfigInfo (the keys the module reads)."""
    data = {"group": group, "name": name, "command": command, "serverurl": "none",
            "stopsignal": 15, "stopwaitsecs": 10, "killasgroup": True}
    data.update(extra)
    return data


class FakeSupervisord:
    """
    supervisord's XML-RPC namespace in memory. After startProcess or
    stopProcess a process walks through ``plans[spec]`` (one state per
    getAllProcessInfo call), by default STARTING -> RUNNING, STOPPING -> STOPPED.
    """

    def __init__(self, *infos, diff=([], [], []), configured=()):
        self.procs = {}
        for i in infos:
            self.procs[self.spec(i)] = dict(i)
        self.diff = diff
        self.configured = {i["group"]: i for i in configured}
        self.calls = []
        self.start_plans = {}
        self.stop_plans = {}
        self.queues = {}
        self.faults = {}
        self.logs = {}
        self.next_pid = 500
        self.config_infos = [config(i["group"], i["name"]) for i in infos]

    @staticmethod
    def spec(i):
        return i["name"] if i["group"] == i["name"] else "{}:{}".format(i["group"], i["name"])

    def _record(self, method, *args):
        self.calls.append((method,) + args)
        if (method, args[:1]) in self.faults:
            code, text = self.faults[(method, args[:1])]
            raise xmlrpc.client.Fault(code, text)

    def _get(self, spec):
        if spec not in self.procs:
            raise xmlrpc.client.Fault(10, "BAD_NAME: " + spec)
        return self.procs[spec]

    def getAllProcessInfo(self):
        self._record("getAllProcessInfo")
        for spec, queue in self.queues.items():
            if queue and spec in self.procs:
                state = queue.pop(0)
                proc = self.procs[spec]
                if state == "STARTING":
                    if proc["statename"] != "STARTING":
                        self.next_pid += 1
                        proc["pid"] = self.next_pid
                elif state not in ("RUNNING", "STOPPING"):
                    proc["pid"] = 0
                proc["statename"] = state
        return [dict(p) for _, p in sorted(self.procs.items())]

    def reloadConfig(self):
        self._record("reloadConfig")
        return [[list(x) for x in self.diff]]

    def startProcess(self, spec, wait):
        self._record("startProcess", spec, wait)
        proc = self._get(spec)
        if proc["statename"] in ("RUNNING", "STARTING", "BACKOFF"):
            raise xmlrpc.client.Fault(60, "ALREADY_STARTED: " + spec)
        self.queues[spec] = list(self.start_plans.get(spec, ["STARTING", "RUNNING"]))
        return True

    def stopProcess(self, spec, wait):
        self._record("stopProcess", spec, wait)
        proc = self._get(spec)
        if proc["statename"] not in ("RUNNING", "STARTING", "BACKOFF"):
            raise xmlrpc.client.Fault(70, "NOT_RUNNING: " + spec)
        self.queues[spec] = list(self.stop_plans.get(spec, ["STOPPING", "STOPPED"]))
        return True

    def removeProcessGroup(self, group):
        self._record("removeProcessGroup", group)
        for spec in [s for s, p in self.procs.items() if p["group"] == group]:
            del self.procs[spec]
        return True

    def addProcessGroup(self, group):
        self._record("addProcessGroup", group)
        new = dict(self.configured[group])
        self.procs[self.spec(new)] = new
        return True

    def tailProcessStderrLog(self, spec, offset, length):
        self._record("tailProcessStderrLog", spec, offset, length)
        return [self.logs.get((spec, "stderr"), ""), 0, False]

    def tailProcessStdoutLog(self, spec, offset, length):
        self._record("tailProcessStdoutLog", spec, offset, length)
        return [self.logs.get((spec, "stdout"), ""), 0, False]

    def getAllConfigInfo(self):
        self._record("getAllConfigInfo")
        return [dict(c) for c in self.config_infos]

    def getState(self):
        return {"statecode": 1, "statename": "RUNNING"}

    def getSupervisorVersion(self):
        return "4.2.5"

    def getAPIVersion(self):
        return "3.0"

    def getIdentification(self):
        return "supervisor"

    def getPID(self):
        return 42

    def changing_calls(self):
        return [c for c in self.calls if c[0] not in (
            "getAllProcessInfo", "reloadConfig", "tailProcessStderrLog", "tailProcessStdoutLog",
        "getAllConfigInfo")]


@pytest.fixture
def rpc(monkeypatch):
    module = load("_modules", "supervisor_rpc",
                  salt={"config.get": lambda key, default="": default})
    monkeypatch.setattr(module, "POLL_INTERVAL", 0)
    return module


@pytest.fixture
def fake(rpc, monkeypatch):
    """Install a FakeSupervisord: ``fake(*infos, **kw)`` returns it."""

    def install(*infos, **kwargs):
        daemon = FakeSupervisord(*infos, **kwargs)
        monkeypatch.setattr(rpc, "_proxy", lambda path: types.SimpleNamespace(supervisor=daemon))
        return daemon

    return install


# --- loader contract ----------------------------------------------------------


def test_virtual_and_cli_examples(rpc):
    assert rpc.__virtual__() == "supervisor_rpc"
    public = [
        name for name, f in vars(rpc).items()
        if inspect.isfunction(f) and not name.startswith("_")
    ]
    assert sorted(public) == sorted(
        ["status", "reread", "update", "start", "stop", "restart", "tail", "state", "port_holders"]
    )
    for name in public:
        assert "CLI Example:" in inspect.getdoc(getattr(rpc, name)), name
        assert "socket" in inspect.signature(getattr(rpc, name)).parameters, name


def test_virtual_refuses_without_unix_sockets(rpc, monkeypatch):
    monkeypatch.delattr(rpc._socket_mod, "AF_UNIX")
    result = rpc.__virtual__()
    assert result[0] is False and "unix sockets" in result[1]


# --- socket ---------------------------------------------------------------------


def test_socket_argument_wins(rpc):
    rpc.__salt__["config.get"] = lambda key, default="": "/from/config.sock"
    assert rpc._socket_path("/given.sock") == "/given.sock"
    assert rpc._socket_path() == "/from/config.sock"


def test_socket_default_is_first_existing(rpc, monkeypatch, tmp_path):
    paths = [str(tmp_path / n) for n in ("a.sock", "b.sock", "c.sock")]
    (tmp_path / "b.sock").touch()
    (tmp_path / "c.sock").touch()
    monkeypatch.setattr(rpc, "DEFAULT_SOCKETS", tuple(paths))
    assert rpc._socket_path() == paths[1]


def test_no_socket_anywhere_is_a_clear_error(rpc, monkeypatch, tmp_path):
    paths = (str(tmp_path / "a.sock"), str(tmp_path / "b.sock"))
    monkeypatch.setattr(rpc, "DEFAULT_SOCKETS", paths)
    with pytest.raises(CommandExecutionError) as err:
        rpc.status()
    assert "supervisord is not reachable" in str(err.value)
    assert paths[0] in str(err.value) and paths[1] in str(err.value)


@pytest.mark.parametrize(
    "error", [ConnectionRefusedError(111, "Connection refused"),
              FileNotFoundError(2, "No such file or directory")]
)
def test_unreachable_supervisord_names_the_socket(rpc, monkeypatch, error):
    class Down:
        def __getattr__(self, name):
            def call(*args):
                raise error
            return call

    monkeypatch.setattr(rpc, "_proxy", lambda path: types.SimpleNamespace(supervisor=Down()))
    for call in (rpc.status, rpc.reread, rpc.state):
        with pytest.raises(CommandExecutionError) as err:
            call(socket=SOCK)
        assert "not reachable on its socket {}: {}".format(SOCK, error.strerror) in str(err.value)


def test_http_error_is_reported(rpc, monkeypatch):
    class Refusing:
        def getAllProcessInfo(self):
            raise xmlrpc.client.ProtocolError("localhost/RPC2", 401, "Unauthorized", {})

    monkeypatch.setattr(rpc, "_proxy", lambda path: types.SimpleNamespace(supervisor=Refusing()))
    with pytest.raises(CommandExecutionError, match="refused getAllProcessInfo: HTTP 401 Unauthorized"):
        rpc.status(socket=SOCK)


class UnixRequestHandler(xmlrpc.server.SimpleXMLRPCRequestHandler):
    disable_nagle_algorithm = False  # a TCP option: not for unix sockets
    protocol_version = "HTTP/1.1"  # keep-alive, as supervisord does


class UnixXMLRPCServer(socketserver.UnixStreamServer, xmlrpc.server.SimpleXMLRPCDispatcher):
    def __init__(self, path):
        xmlrpc.server.SimpleXMLRPCDispatcher.__init__(self, allow_none=False, encoding=None)
        socketserver.UnixStreamServer.__init__(self, path, UnixRequestHandler)
        self.logRequests = False


def test_transport_speaks_xmlrpc_over_a_unix_socket(rpc, tmp_path):
    path = str(tmp_path / "s.sock")
    server = UnixXMLRPCServer(path)
    server.register_function(lambda: {"statecode": 1, "statename": "RUNNING"}, "supervisor.getState")
    server.register_function(lambda: "4.3.0", "supervisor.getSupervisorVersion")
    server.register_function(lambda: "3.0", "supervisor.getAPIVersion")
    server.register_function(lambda: "supervisor", "supervisor.getIdentification")
    server.register_function(lambda: 4242, "supervisor.getPID")
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        assert rpc.state(socket=path) == {
            "state": "RUNNING", "version": "4.3.0", "api_version": "3.0",
            "identification": "supervisor", "pid": 4242, "socket": path,
        }
    finally:
        server.shutdown()
        server.server_close()


# --- status ---------------------------------------------------------------------


def test_status_keys_and_values(rpc, fake):
    fake(
        info("web", "web", pid=321),
        info("idle", "idle", "STOPPED"),
        info("grp", "a", "FATAL", spawnerr="Exited too quickly", description="Exited too quickly"),
        info("grp", "b", "BACKOFF"),
    )
    status = rpc.status(socket=SOCK)
    assert sorted(status) == ["grp:a", "grp:b", "idle", "web"]
    assert status["web"] == {
        "state": "RUNNING", "pid": 321, "uptime": 42, "exitstatus": 0, "group": "web",
        "name": "web", "description": "", "spawnerr": "",
        "stdout_logfile": "/log/web.out", "stderr_logfile": "/log/web.err",
    }
    assert status["idle"]["state"] == "STOPPED"
    assert status["idle"]["pid"] is None and status["idle"]["uptime"] == 0
    assert status["grp:a"]["spawnerr"] == "Exited too quickly"
    assert status["grp:b"]["state"] == "BACKOFF"


@pytest.mark.parametrize(
    "name,expected",
    [("web", ["web"]), ("grp", ["grp:a", "grp:b"]), ("grp:", ["grp:a", "grp:b"]),
     ("grp:*", ["grp:a", "grp:b"]), ("grp:b", ["grp:b"]), (" grp:* ", ["grp:a", "grp:b"])],
)
def test_status_name_selection(rpc, fake, name, expected):
    fake(info("web", "web"), info("grp", "a"), info("grp", "b"))
    assert sorted(rpc.status(name, socket=SOCK)) == expected


@pytest.mark.parametrize("name", ["nope", "grp:c", "a", "nope:*"])
def test_unknown_name_is_named(rpc, fake, name):
    fake(info("web", "web"), info("grp", "a"))
    with pytest.raises(CommandExecutionError) as err:
        rpc.status(name, socket=SOCK)
    assert "has no program or group named '{}'".format(name.strip()) in str(err.value)
    assert SOCK in str(err.value)


# --- reread / update ---------------------------------------------------------


def test_reread_returns_sorted_lists(rpc, fake):
    fake(diff=(["z", "a"], ["m"], []))
    assert rpc.reread(socket=SOCK) == {"added": ["a", "z"], "changed": ["m"], "removed": []}


def test_reread_reports_a_bad_configuration(rpc, fake):
    daemon = fake()
    daemon.faults[("reloadConfig", ())] = (92, "CANT_REREAD: bad line 3")
    with pytest.raises(CommandExecutionError, match="cannot read its configuration: CANT_REREAD: bad line 3"):
        rpc.reread(socket=SOCK)


def test_update_changed_group_only(rpc, fake):
    daemon = fake(
        info("app", "app", pid=10), info("other", "other", pid=20),
        diff=([], ["app", "other"], []),
        configured=[info("app", "app", "STARTING", pid=11)],
    )
    assert rpc.update("app", socket=SOCK) == {"added": [], "changed": ["app"], "removed": []}
    assert daemon.changing_calls() == [
        ("stopProcess", "app", False),
        ("removeProcessGroup", "app"),
        ("addProcessGroup", "app"),
    ]
    assert daemon.procs["other"]["pid"] == 20


def test_update_removed_and_added_groups(rpc, fake):
    daemon = fake(
        info("old", "old"), info("grp", "a"), info("grp", "b", "STOPPED"),
        diff=(["new"], [], ["grp", "old"]),
        configured=[info("new", "new", "STOPPED")],
    )
    assert rpc.update("grp:*", socket=SOCK) == {"added": [], "changed": [], "removed": ["grp"]}
    assert daemon.changing_calls() == [("stopProcess", "grp:a", False), ("removeProcessGroup", "grp")]
    daemon.calls.clear()
    assert rpc.update("new:", socket=SOCK) == {"added": ["new"], "changed": [], "removed": []}
    assert daemon.changing_calls() == [("addProcessGroup", "new")]
    assert "old" in daemon.procs


def test_update_up_to_date_and_unknown(rpc, fake):
    daemon = fake(info("app", "app"))
    assert rpc.update("app", socket=SOCK) == {"added": [], "changed": [], "removed": []}
    assert daemon.changing_calls() == []
    with pytest.raises(CommandExecutionError, match="no program or group named 'nope'"):
        rpc.update("nope", socket=SOCK)


def test_update_does_not_remove_a_group_that_did_not_stop(rpc, fake):
    daemon = fake(info("app", "app"), diff=([], [], ["app"]))
    daemon.stop_plans["app"] = ["STOPPING"] * 1000
    with pytest.raises(CommandExecutionError, match="not updating group app: it did not stop"):
        rpc.update("app", socket=SOCK, timeout=0.05)
    assert ("removeProcessGroup", "app") not in daemon.calls


# --- start / stop / restart ----------------------------------------------------


def test_start_waits_for_running(rpc, fake):
    daemon = fake(info("app", "app", "STOPPED"), info("up", "up", pid=7))
    daemon.start_plans["app"] = ["STARTING", "STARTING", "STARTING", "RUNNING"]
    result = rpc.start("app", socket=SOCK)
    assert result == {"app": {"old": {"state": "STOPPED", "pid": None},
                              "new": {"state": "RUNNING", "pid": 501}}}
    assert daemon.changing_calls() == [("startProcess", "app", False)]
    assert daemon.queues["app"] == []  # it polled until RUNNING


def test_start_leaves_running_processes_alone(rpc, fake):
    daemon = fake(info("grp", "a", pid=7), info("grp", "b", "EXITED"))
    result = rpc.start("grp:", socket=SOCK)
    assert daemon.changing_calls() == [("startProcess", "grp:b", False)]
    assert result["grp:a"]["old"] == result["grp:a"]["new"] == {"state": "RUNNING", "pid": 7}


def test_start_that_backs_off_fails_with_state_and_stderr_tail(rpc, fake):
    daemon = fake(info("app", "app", "STOPPED", description="Exited too quickly"))
    daemon.start_plans["app"] = ["STARTING", "BACKOFF", "STARTING", "RUNNING"]
    daemon.logs[("app", "stderr")] = "line 1\nTraceback\nOSError: port in use\n"
    with pytest.raises(CommandExecutionError) as err:
        rpc.start("app", socket=SOCK)
    text = str(err.value)
    assert "app: start failed (state BACKOFF: Exited too quickly)" in text
    assert "last lines of /log/app.err:\nline 1\nTraceback\nOSError: port in use" in text


def test_start_waits_out_a_backoff_it_did_not_cause(rpc, fake):
    daemon = fake(info("app", "app", "BACKOFF"))
    daemon.queues["app"] = ["BACKOFF", "STARTING", "RUNNING"]
    assert rpc.start("app", socket=SOCK)["app"]["new"]["state"] == "RUNNING"
    assert daemon.changing_calls() == []  # supervisord was already retrying it


def test_start_of_a_fatal_program_tries_again(rpc, fake):
    daemon = fake(info("app", "app", "FATAL"))
    daemon.start_plans["app"] = ["STARTING", "FATAL"]
    with pytest.raises(CommandExecutionError, match="state FATAL"):
        rpc.start("app", socket=SOCK)
    assert daemon.changing_calls() == [("startProcess", "app", False)]


def test_spawn_error_fails_at_once(rpc, fake):
    daemon = fake(info("app", "app", "STOPPED"))
    daemon.faults[("startProcess", ("app",))] = (20, "NO_FILE: /opt/missing/bin/jupyter")
    with pytest.raises(CommandExecutionError, match="could not start it: NO_FILE: /opt/missing/bin/jupyter"):
        rpc.start("app", socket=SOCK)


def test_start_timeout_names_the_state(rpc, fake):
    daemon = fake(info("app", "app", "STOPPED"))
    daemon.start_plans["app"] = ["STARTING"] * 10000
    with pytest.raises(CommandExecutionError, match=r"did not reach RUNNING within 0.05 s \(state STARTING\)"):
        rpc.start("app", timeout=0.05, socket=SOCK)


def test_redirected_stderr_tail_comes_from_stdout_log(rpc, fake):
    daemon = fake(info("app", "app", "STOPPED", stderr_logfile=""))
    daemon.start_plans["app"] = ["STARTING", "FATAL"]
    daemon.logs[("app", "stdout")] = "boom on stdout\n"
    with pytest.raises(CommandExecutionError, match="last lines of /log/app.out:\nboom on stdout"):
        rpc.start("app", socket=SOCK)
    assert rpc.tail("app", socket=SOCK) == "boom on stdout\n"


def test_stop_waits_and_tolerates_not_running(rpc, fake):
    daemon = fake(info("grp", "a", pid=5), info("grp", "b", "STOPPED"))
    result = rpc.stop("grp:*", socket=SOCK)
    assert daemon.changing_calls() == [("stopProcess", "grp:a", False)]
    assert result == {
        "grp:a": {"old": {"state": "RUNNING", "pid": 5}, "new": {"state": "STOPPED", "pid": None}},
        "grp:b": {"old": {"state": "STOPPED", "pid": None}, "new": {"state": "STOPPED", "pid": None}},
    }


def test_stop_that_stays_stopping_fails(rpc, fake):
    daemon = fake(info("deaf", "deaf", pid=9))
    daemon.stop_plans["deaf"] = ["STOPPING"] * 10000
    with pytest.raises(CommandExecutionError, match=r"deaf: did not reach STOPPED within 0.05 s \(state STOPPING\)"):
        rpc.stop("deaf", timeout=0.05, socket=SOCK)


def test_stop_refused_by_supervisord_fails(rpc, fake):
    daemon = fake(info("app", "app"))
    daemon.faults[("stopProcess", ("app",))] = (30, "FAILED: permission denied")
    with pytest.raises(CommandExecutionError, match="could not stop it: FAILED: permission denied"):
        rpc.stop("app", socket=SOCK)


def test_restart_stops_then_starts(rpc, fake):
    daemon = fake(info("app", "app", pid=5), info("other", "other", pid=6))
    result = rpc.restart("app", socket=SOCK)
    assert daemon.changing_calls() == [("stopProcess", "app", False), ("startProcess", "app", False)]
    assert result == {"app": {"old": {"state": "RUNNING", "pid": 5},
                              "new": {"state": "RUNNING", "pid": 501}}}
    assert daemon.procs["other"]["pid"] == 6


# --- tail / state -----------------------------------------------------------------


def test_tail(rpc, fake):
    daemon = fake(info("app", "app"), info("grp", "a"), info("grp", "b"))
    daemon.logs[("app", "stdout")] = "out"
    daemon.logs[("grp:a", "stderr")] = "err a"
    daemon.logs[("grp:b", "stderr")] = "err b"
    assert rpc.tail("app", stream="stdout", length=10, socket=SOCK) == "out"
    assert ("tailProcessStdoutLog", "app", 0, 10) in daemon.calls
    assert rpc.tail("grp:", socket=SOCK) == "==> grp:a <==\nerr a\n==> grp:b <==\nerr b\n"
    with pytest.raises(CommandExecutionError, match="stream must be"):
        rpc.tail("app", stream="both", socket=SOCK)


def test_state(rpc, fake):
    fake()
    assert rpc.state(socket=SOCK) == {
        "state": "RUNNING", "version": "4.2.5", "api_version": "3.0",
        "identification": "supervisor", "pid": 42, "socket": SOCK,
    }


# --- stale instances ---------------------------------------------------------------

SERVER = "/usr/bin/python3 -m server 8888"
TWIN_ENV = {"SUPERVISOR_PROCESS_NAME": "app", "SUPERVISOR_GROUP_NAME": "app",
            "SUPERVISOR_SERVER_URL": "unix://" + SOCK, "PATH": "/usr/bin:/bin"}


def holder(pid=77, cmdline=None, user="jupyter", **env):
    environ = dict(TWIN_ENV)
    environ.update(env)
    return {"pid": pid, "user": user, "environ": {k: v for k, v in environ.items() if v is not None},
            "cmdline": shlex.split(SERVER) if cmdline is None else cmdline}


def script(tmp_path, name, first_line):
    path = tmp_path / name
    path.write_text(first_line + "\nprint('hi')\n")
    path.chmod(0o755)
    return str(path)


def test_command_views_plain_wrapped_and_scripts(rpc, tmp_path):
    assert rpc._command_views(SERVER, "/usr/bin") == [shlex.split(SERVER)]
    lab = script(tmp_path, "jupyter-lab", "#!/opt/venv/bin/python3")
    wrapped = "systemd-run --scope -p MemoryMax=1G -- setpriv --reuid=alice -- {} --no-browser".format(lab)
    views = rpc._command_views(wrapped, "/usr/bin")
    assert shlex.split(wrapped) in views
    assert [lab, "--no-browser"] in views  # after the last --
    assert ["/opt/venv/bin/python3", lab, "--no-browser"] in views  # as the kernel shows it
    assert ["setpriv", "--reuid=alice", "--", lab, "--no-browser"] not in views
    # `#!interp arg`: one argument; `#!/usr/bin/env python3`: env execs python3
    opt = script(tmp_path, "opt", "#! /usr/bin/python3  -u -X dev ")
    assert [["/usr/bin/python3", "-u -X dev", opt]] == rpc._command_views(opt, "")[1:]
    env = script(tmp_path, "env-script", "#!/usr/bin/env python3")
    assert rpc._command_views(env + " x", "")[1:] == [
        ["/usr/bin/env", "python3", env, "x"], ["python3", env, "x"]]
    # a bare name is looked up in the process's PATH, as supervisord and setpriv do
    assert ["/opt/venv/bin/python3", lab, "-y"] in rpc._command_views("jupyter-lab -y", str(tmp_path))
    assert rpc._command_views("jupyter-lab -y", "/nowhere") == [["jupyter-lab", "-y"]]
    assert rpc._command_views("unbalanced 'quote", "") == []


def test_twin_verdict(rpc, tmp_path):
    sv = types.SimpleNamespace(path=SOCK)
    conf = config("app", "app", SERVER)
    assert rpc._twin_verdict(sv, holder(), conf) is None
    cases = {
        "its SUPERVISOR_PROCESS_NAME is 'other', not 'app' (app)":
            holder(SUPERVISOR_PROCESS_NAME="other"),
        "its SUPERVISOR_GROUP_NAME is None, not 'app' (app)": holder(SUPERVISOR_GROUP_NAME=None),
        "its SUPERVISOR_SERVER_URL 'unix:///run/other.sock' is not this supervisord":
            holder(SUPERVISOR_SERVER_URL="unix:///run/other.sock"),
        "its command line is not app's command": holder(cmdline=["/usr/bin/python3", "-m", "server"]),
        "its environment cannot be read": dict(holder(), environ=None),
    }
    for reason, h in cases.items():
        assert reason in rpc._twin_verdict(sv, h, conf)
    # a group member: GROUP:NAME
    member = holder(SUPERVISOR_PROCESS_NAME="a", SUPERVISOR_GROUP_NAME="grp")
    assert rpc._twin_verdict(sv, member, config("grp", "a", SERVER)) is None
    assert "not 'b' (grp:b)" in rpc._twin_verdict(sv, member, config("grp", "b", SERVER))
    # the program's own serverurl counts; so does another name of the same socket
    url = holder(SUPERVISOR_SERVER_URL="http://127.0.0.1:9001")
    assert rpc._twin_verdict(sv, url, dict(conf, serverurl="http://127.0.0.1:9001")) is None
    (tmp_path / "real").mkdir()
    (tmp_path / "real" / "s.sock").touch()
    os.symlink(tmp_path / "real", tmp_path / "link")
    linked = types.SimpleNamespace(path=str(tmp_path / "real" / "s.sock"))
    h = holder(SUPERVISOR_SERVER_URL="unix://{}/link/s.sock".format(tmp_path))
    assert rpc._twin_verdict(linked, h, conf) is None


@pytest.fixture
def port_world(rpc, monkeypatch):
    """
    Who listens on the port, faked at the psutil boundary: ``world.listening``
    (pids), ``world.holders`` (pid -> holder), ``world.trees`` (pid -> tree).
    ``_stop_twins`` records what it would stop and frees the port. A process
    the fake supervisord runs listens on the port once it is RUNNING, unless
    its pid is in ``world.deaf``.
    """
    world = types.SimpleNamespace(listening=set(), holders={}, trees={}, stopped=[], scans=0,
                                  deaf=set())

    def listeners(port):
        world.scans += 1
        return set(world.listening)

    def stop_twins(sv, twins, port, configs):
        world.stopped.append([t["pid"] for t in twins])
        world.listening -= {t["pid"] for t in twins}
        return [{"pid": t["pid"], "user": t["user"], "command": shlex.join(t["cmdline"]),
                 "signal": "TERM", "stopped": True, "process": t["twin_of"]} for t in twins]

    monkeypatch.setattr(rpc, "_listeners", listeners)
    monkeypatch.setattr(rpc, "_holder", lambda pid: dict(world.holders[pid]))
    monkeypatch.setattr(rpc, "_tree", lambda pid: world.trees.get(pid, {pid} if pid else set()))
    monkeypatch.setattr(rpc, "_stop_twins", stop_twins)
    def listening(pid, port):
        procs = rpc._proxy(None).supervisor.procs.values()
        return pid not in world.deaf and any(
            p["pid"] == pid and p["statename"] == "RUNNING" for p in procs)

    monkeypatch.setattr(rpc, "_listening", listening)
    return world


def test_start_stops_a_stale_instance_first(rpc, fake, port_world):
    daemon = fake(info("app", "app", "FATAL"))
    port_world.listening, port_world.holders = {77}, {77: holder()}
    result = rpc.start("app", socket=SOCK, ready_port=8888)
    assert port_world.stopped == [[77]]
    assert daemon.changing_calls() == [("startProcess", "app", False)]
    assert result["app"]["stale"] == [{"pid": 77, "user": "jupyter", "command": SERVER,
                                       "signal": "TERM", "stopped": True}]
    assert result["app"]["new"]["state"] == "RUNNING"


def test_start_leaves_a_foreign_holder_and_names_it(rpc, fake, port_world):
    daemon = fake(info("app", "app", "STOPPED"))
    daemon.start_plans["app"] = ["STARTING", "FATAL"]
    daemon.logs[("app", "stderr")] = "OSError: [Errno 98] Address already in use\n"
    port_world.listening = {88}
    port_world.holders = {88: holder(88, user="www-data", SUPERVISOR_PROCESS_NAME=None)}
    with pytest.raises(CommandExecutionError) as err:
        rpc.start("app", socket=SOCK, ready_port=8888)
    text = str(err.value)
    assert ("app: start failed: port 8888 is held by pid 88 (user www-data): {} (its "
            "SUPERVISOR_PROCESS_NAME is None, not 'app' (app)), not an instance of this "
            "program: left alone (state FATAL").format(SERVER) in text
    assert "Address already in use" in text
    assert port_world.stopped == []
    assert rpc.port_holders("app", 8888, socket=SOCK) == [{
        "pid": 88, "user": "www-data", "command": SERVER, "stale": False, "process": None,
        "reason": "its SUPERVISOR_PROCESS_NAME is None, not 'app' (app)"}]


def test_a_stale_instance_found_after_a_failed_start_is_stopped_once(rpc, fake, port_world):
    """E.g. it was not listening yet when looked at: after the failure it is, once."""
    daemon = fake(info("app", "app", "STOPPED"))
    daemon.start_plans["app"] = ["STARTING", "FATAL"]
    port_world.holders = {77: holder()}
    original = daemon.startProcess

    def start_then_twin(spec, wait):
        port_world.listening = {77}
        daemon.startProcess = original
        answer = original(spec, wait)  # this start fails: the port is taken ...
        daemon.start_plans["app"] = ["STARTING", "RUNNING"]  # ... the next one will not
        return answer

    daemon.startProcess = start_then_twin
    result = rpc.start("app", socket=SOCK, ready_port=8888)
    assert port_world.stopped == [[77]]
    assert [c for c in daemon.changing_calls() if c[0] == "startProcess"] == [
        ("startProcess", "app", False), ("startProcess", "app", False)]
    assert result["app"]["stale"][0]["pid"] == 77


def test_start_without_ready_port_or_of_a_running_program_scans_nothing(rpc, fake, port_world):
    fake(info("app", "app", "STOPPED"), info("up", "up", pid=5))
    port_world.listening, port_world.holders = {77}, {77: holder()}
    rpc.start("app", socket=SOCK)
    rpc.start("up", socket=SOCK, ready_port=8888)
    assert port_world.scans == 0 and port_world.stopped == []


def test_with_ready_port_running_is_not_enough_listening_is(rpc, fake, port_world):
    """supervisord says RUNNING after startsecs; a server still importing has no port yet."""
    daemon = fake(info("app", "app", "STOPPED"))
    daemon.start_plans["app"] = ["STARTING", "RUNNING"] + ["RUNNING"] * 5
    port_world.deaf = {501}
    polls = []
    real_infos = daemon.getAllProcessInfo

    def infos():
        polls.append(daemon.procs["app"]["statename"])
        if polls.count("RUNNING") == 3:
            port_world.deaf = set()  # it opens its port on the third poll after RUNNING
        return real_infos()

    daemon.getAllProcessInfo = infos
    result = rpc.start("app", socket=SOCK, ready_port=8888)
    assert result["app"]["new"] == {"state": "RUNNING", "pid": 501}
    assert polls.count("RUNNING") == 3  # it did not stop at the first RUNNING


def test_a_running_process_that_never_listens_fails_naming_the_port(rpc, fake, port_world):
    fake(info("app", "app", "RUNNING", pid=9))
    port_world.deaf = {9}
    with pytest.raises(CommandExecutionError,
                       match=r"did not reach listening on port 8888 within 0.05 s \(state RUNNING\)"):
        rpc.start("app", timeout=0.05, socket=SOCK, ready_port=8888)
    assert rpc.start("app", timeout=0.05, socket=SOCK)["app"]["new"]["state"] == "RUNNING"


def test_the_current_process_and_its_children_are_not_holders(rpc, fake, port_world):
    fake(info("app", "app", "STARTING", pid=60))
    port_world.listening, port_world.holders = {61}, {61: holder(61)}
    port_world.trees = {60: {60, 61}}  # 61: a worker of the process supervisord runs now
    assert rpc.port_holders("app", 8888, socket=SOCK) == []
    port_world.trees = {60: {60}}
    assert rpc.port_holders("app", 8888, socket=SOCK)[0]["stale"] is True


def test_a_holder_this_user_cannot_see_is_foreign(rpc, fake, port_world):
    fake(info("app", "app", "STOPPED"))
    port_world.listening = {None}
    port_world.holders = {None: {"pid": None, "user": None, "cmdline": None, "environ": None}}
    assert rpc.port_holders("app", "8888", socket=SOCK) == [{
        "pid": None, "user": None, "command": None, "stale": False, "process": None,
        "reason": "unknown pid"}]
    with pytest.raises(CommandExecutionError, match="port must be a TCP port number, not 'x'"):
        rpc.port_holders("app", "x", socket=SOCK)


# _stop_twins against real processes (no supervisord): each in its own session, as
# supervisord makes its programs process-group leaders.

LISTEN = (
    "import os, signal, socket, sys, time\n"
    "if sys.argv[2] == 'deaf': signal.signal(signal.SIGTERM, signal.SIG_IGN)\n"
    "if os.fork() == 0:\n"  # a child in the same group, as Jupyter's own would be
    "    time.sleep(600)\n"
    "s = socket.socket(); s.bind(('127.0.0.1', int(sys.argv[1]))); s.listen()\n"
    "print('ready', flush=True); time.sleep(600)\n"
)


def spawn_listener(deaf=False):
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    proc = subprocess.Popen([sys.executable, "-c", LISTEN, str(port), "deaf" if deaf else "-"],
                            stdout=subprocess.PIPE, start_new_session=True)
    assert proc.stdout.readline() == b"ready\n"
    return proc, port


@pytest.mark.parametrize("deaf,signal_used", [(False, "TERM"), (True, "KILL")])
def test_stop_twins_stops_the_process_group_then_waits_for_the_port(rpc, deaf, signal_used):
    proc, port = spawn_listener(deaf)
    group = [p.pid for p in psutil.Process(proc.pid).children()] + [proc.pid]
    try:
        twin = dict(rpc._holder(proc.pid), twin_of="app")
        assert proc.pid in rpc._listeners(port)
        began = time.monotonic()
        done = rpc._stop_twins(types.SimpleNamespace(path=SOCK), [twin], port,
                               {"app": config("app", "app", stopwaitsecs=1)})
        assert done == [{"pid": proc.pid, "user": twin["user"], "stopped": True,
                         "command": shlex.join(twin["cmdline"]), "signal": signal_used,
                         "process": "app"}]
        assert (time.monotonic() - began >= 1) is deaf  # stopwaitsecs before SIGKILL
        assert proc.wait(5) == -getattr(signal, "SIG" + signal_used)
        assert all(rpc._gone(psutil.Process(p)) if psutil.pid_exists(p) else True for p in group)
        assert proc.pid not in rpc._listeners(port)
    finally:
        for pid in group:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        proc.wait()
