"""
supervisor_rpc and supervisor_program against a real, private supervisord,
for each supported supervisor version (Debian 12's 4.2.5, PyPI's 4.3.0).

The modules run in this process with their loader globals set by hand; the
state's ``__salt__`` maps to the execution module's real functions.
"""

import concurrent.futures
import os
import pathlib
import shlex
import socket
import subprocess
import sys
import time
import types

import psutil
import pytest

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))

from salt.exceptions import CommandExecutionError  # noqa: E402
from support.loader import load  # noqa: E402
from supervisor_fixture import (  # noqa: E402,F401  (fixtures are used by name)
    PYTHON,
    supervisord_build,
    supervisord_factory,
)

SLEEP = "/bin/sleep 600"
FATAL_LINE = "fatal-marker: port 8888 already in use"
CRASH = '{} -c "import sys; sys.stderr.write(\'{}\\n\'); sys.exit(1)"'.format(
    PYTHON, FATAL_LINE
)
DEAF = (
    '{} -c "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); '
    'time.sleep(600)"'.format(PYTHON)
)
CHATTY = '{} -c "import time; print(\'hello-stdout\', flush=True); time.sleep(600)"'.format(
    PYTHON
)

RPC_FUNCTIONS = (
    "status", "reread", "update", "start", "stop", "restart", "tail", "state", "port_holders",
)


@pytest.fixture
def salt():
    """Both modules, loaded by path, with their loader globals wired."""
    rpc = load("_modules", "supervisor_rpc",
               salt={"config.get": lambda key, default="": default})
    states = load("_states", "supervisor_program",
                  salt={"supervisor_rpc." + f: getattr(rpc, f) for f in RPC_FUNCTIONS})
    return types.SimpleNamespace(rpc=rpc, states=states)


@pytest.fixture
def daemon(supervisord_factory):
    return supervisord_factory()


def pid(daemon, spec):
    return daemon.rpc().getProcessInfo(spec)["pid"]


def spawns(daemon, name):
    """How often supervisord spawned NAME (from its own log)."""
    text = (daemon.root / "supervisord.log").read_text()
    return text.count("spawned: '{}' with pid".format(name))


def test_version_and_state(salt, daemon, supervisord_build):
    daemon.start()
    info = salt.rpc.state(socket=daemon.socket)
    assert info["version"] == supervisord_build[0]
    assert info["state"] == "RUNNING"
    assert info["pid"] == daemon.process.pid
    assert info["socket"] == daemon.socket


def steady(info):
    """A status without what ticks: uptime and the description that shows it."""
    return {k: v for k, v in info.items() if k not in ("uptime", "description")}


def test_stopped_neighbour_does_not_confuse_status(salt, daemon):
    """Salt's module renames the first program 'ERROR:' when one is stopped."""
    daemon.write_program("web", SLEEP, startsecs=0)
    daemon.write_program("idle", SLEEP, autostart="false")
    daemon.start()
    daemon.wait_for("web", "RUNNING")
    ctl = os.path.join(os.path.dirname(daemon.binary), "supervisorctl")
    text = subprocess.run(
        [ctl, "-s", "unix://" + daemon.socket, "status"], capture_output=True
    )
    assert text.returncode == 3  # what trips Salt's supervisord module

    status = salt.rpc.status(socket=daemon.socket)
    assert sorted(status) == ["idle", "web"]
    assert status["web"]["state"] == "RUNNING"
    assert status["web"]["pid"] == pid(daemon, "web") > 0
    assert status["web"]["group"] == "web"
    assert status["web"]["stderr_logfile"] == str(daemon.logs / "web.err")
    assert status["idle"]["state"] == "STOPPED"
    assert status["idle"]["pid"] is None
    # the same for one name (but uptime and its description, which tick)
    only_web = salt.rpc.status("web", socket=daemon.socket)
    assert list(only_web) == ["web"]
    assert steady(only_web["web"]) == steady(status["web"])
    ret = salt.states.running("web", socket=daemon.socket)
    assert ret["result"] is True and ret["changes"] == {}


def test_changed_program_restarts_only_that_program(salt, daemon):
    daemon.write_program("app", SLEEP)
    daemon.write_program("neighbour", SLEEP, startsecs=0)
    daemon.start()
    daemon.wait_for("app", "RUNNING")
    daemon.wait_for("neighbour", "RUNNING")
    app_pid, neighbour_pid = pid(daemon, "app"), pid(daemon, "neighbour")

    ret = salt.states.running("app", socket=daemon.socket)
    assert ret["result"] is True and ret["changes"] == {}, ret

    daemon.write_program("app", "/bin/sleep 601")
    daemon.write_program("neighbour", "/bin/sleep 602", startsecs=0)  # changed too
    ret = salt.states.running("app", socket=daemon.socket)
    assert ret["result"] is True, ret
    assert ret["changes"]["updated"] == "changed"
    new_pid = pid(daemon, "app")
    assert ret["changes"]["pid"] == {"old": {"app": app_pid}, "new": {"app": new_pid}}
    assert new_pid != app_pid
    assert daemon.rpc().getProcessInfo("app")["statename"] == "RUNNING"
    # the neighbour's own change is left for its own state: same pid, still pending
    assert pid(daemon, "neighbour") == neighbour_pid
    assert salt.rpc.reread(socket=daemon.socket)["changed"] == ["neighbour"]

    again = salt.states.running("app", socket=daemon.socket)
    assert again["result"] is True and again["changes"] == {}, again
    assert pid(daemon, "app") == new_pid


def test_update_touches_one_group_only(salt, daemon):
    daemon.write_program("one", SLEEP, startsecs=0)
    daemon.write_program("two", SLEEP, startsecs=0)
    daemon.write_program("old", SLEEP, startsecs=0)
    daemon.start()
    for name in ("one", "two", "old"):
        daemon.wait_for(name, "RUNNING")
    pids = {n: pid(daemon, n) for n in ("one", "two", "old")}
    daemon.write_program("one", "/bin/sleep 601", startsecs=0)
    daemon.write_program("two", "/bin/sleep 601", startsecs=0)
    daemon.write_program("new", SLEEP, startsecs=0)
    os.remove(daemon.conf_d / "old.conf")
    assert salt.rpc.reread(socket=daemon.socket) == {
        "added": ["new"], "changed": ["one", "two"], "removed": ["old"]
    }

    assert salt.rpc.update("one", socket=daemon.socket) == {
        "added": [], "changed": ["one"], "removed": []
    }
    assert pid(daemon, "two") == pids["two"] and pid(daemon, "old") == pids["old"]
    assert "new" not in salt.rpc.status(socket=daemon.socket)

    assert salt.rpc.update("old:*", socket=daemon.socket)["removed"] == ["old"]
    assert salt.rpc.update("new:", socket=daemon.socket)["added"] == ["new"]
    status = salt.rpc.status(socket=daemon.socket)
    assert sorted(status) == ["new", "one", "two"]
    assert status["two"]["pid"] == pids["two"]
    assert salt.rpc.reread(socket=daemon.socket)["changed"] == ["two"]
    assert salt.rpc.update("one", socket=daemon.socket) == {
        "added": [], "changed": [], "removed": []
    }
    with pytest.raises(CommandExecutionError, match="no program or group named 'nope'"):
        salt.rpc.update("nope", socket=daemon.socket)


def test_watch_restarts_the_program_once(salt, daemon):
    """mod_watch (Salt calls it once, when `running` changed nothing): one restart."""
    daemon.write_program("app", SLEEP, startsecs=0)
    daemon.write_program("neighbour", SLEEP, startsecs=0)
    daemon.start()
    first = daemon.wait_for("app", "RUNNING")["pid"]
    neighbour = daemon.wait_for("neighbour", "RUNNING")["pid"]
    assert spawns(daemon, "app") == 1
    watch = salt.states.mod_watch("app", sfun="running", socket=daemon.socket)
    assert watch["result"] is True, watch
    restarted = pid(daemon, "app")
    assert watch["changes"] == {"restarted": ["app"],
                                "pid": {"old": {"app": first}, "new": {"app": restarted}}}
    assert restarted != first
    assert spawns(daemon, "app") == 2
    assert pid(daemon, "neighbour") == neighbour


def test_group_names_with_colon_and_star(salt, daemon):
    daemon.write_file(
        "grp",
        "[group:grp]\nprograms=a,b\n"
        + daemon.program_text("a", SLEEP, autostart="false", startsecs=0)
        + daemon.program_text("b", SLEEP, autostart="false", startsecs=0),
    )
    daemon.write_program("other", SLEEP, startsecs=0)
    daemon.start()
    daemon.wait_for("other", "RUNNING")
    other = pid(daemon, "other")
    for name in ("grp:", "grp:*", "grp"):
        assert sorted(salt.rpc.status(name, socket=daemon.socket)) == ["grp:a", "grp:b"]
    assert list(salt.rpc.status("grp:a", socket=daemon.socket)) == ["grp:a"]

    started = salt.rpc.start("grp:*", socket=daemon.socket)
    assert {s: t["new"]["state"] for s, t in started.items()} == {
        "grp:a": "RUNNING", "grp:b": "RUNNING"
    }
    assert started["grp:a"]["old"] == {"state": "STOPPED", "pid": None}
    stopped = salt.rpc.stop("grp:", socket=daemon.socket)
    assert {s: t["new"]["state"] for s, t in stopped.items()} == {
        "grp:a": "STOPPED", "grp:b": "STOPPED"
    }
    salt.rpc.start("grp:b", socket=daemon.socket)
    status = salt.rpc.status("grp:", socket=daemon.socket)
    assert (status["grp:a"]["state"], status["grp:b"]["state"]) == ("STOPPED", "RUNNING")

    ret = salt.states.running("grp", socket=daemon.socket)
    assert ret["result"] is True and ret["changes"]["started"] == ["grp:a"], ret
    ret = salt.states.dead("grp:*", socket=daemon.socket)
    assert ret["result"] is True and ret["changes"]["stopped"] == ["grp:a", "grp:b"], ret
    assert pid(daemon, "other") == other


def test_stop_that_fails_is_reported_as_failed(salt, daemon):
    daemon.write_program("deaf", DEAF, stopsignal="TERM", stopwaitsecs=30)
    daemon.start()
    daemon.wait_for("deaf", "RUNNING")
    deaf = pid(daemon, "deaf")
    try:
        with pytest.raises(CommandExecutionError, match="did not reach STOPPED within 1 s"):
            salt.rpc.stop("deaf", timeout=1, socket=daemon.socket)
        ret = salt.states.dead("deaf", socket=daemon.socket, timeout=1)
        assert ret["result"] is False, ret
        assert "state STOPPING" in ret["comment"]
        assert ret["changes"]["pid"] == {"old": {"deaf": deaf}, "new": {"deaf": deaf}}
    finally:
        daemon.rpc().signalProcess("deaf", "KILL")
    daemon.wait_for("deaf", "STOPPED")


def test_supervisord_down_gives_clear_error(salt, daemon):
    missing = str(daemon.root / "missing.sock")
    with pytest.raises(CommandExecutionError) as err:
        salt.rpc.status(socket=missing)
    assert "not reachable on its socket {}".format(missing) in str(err.value)

    daemon.write_program("app", SLEEP, startsecs=0)
    daemon.start()
    daemon.wait_for("app", "RUNNING")
    daemon.process.kill()  # no clean-up: the socket file stays, nobody listens
    daemon.process.wait()
    assert os.path.exists(daemon.socket)
    for call in (salt.rpc.status, salt.rpc.reread, salt.rpc.state):
        with pytest.raises(CommandExecutionError, match="not reachable on its socket") as err:
            call(socket=daemon.socket)
        assert daemon.socket in str(err.value)
    ret = salt.states.running("app", socket=daemon.socket)
    assert ret["result"] is False
    assert "supervisord is not reachable on its socket {}".format(daemon.socket) in ret["comment"]


def test_fatal_program_fails_with_stderr_tail(salt, daemon):
    daemon.write_program("crash", CRASH, autostart="false", startretries=0)
    daemon.write_program("fine", SLEEP, startsecs=0)
    daemon.start()
    daemon.wait_for("fine", "RUNNING")
    ret = salt.states.running("crash", socket=daemon.socket)
    assert ret["result"] is False, ret
    assert FATAL_LINE in ret["comment"]
    assert "crash" in ret["comment"]
    assert "BACKOFF" in ret["comment"] or "FATAL" in ret["comment"]
    daemon.wait_for("crash", "FATAL")
    with pytest.raises(CommandExecutionError, match=FATAL_LINE):
        salt.rpc.start("crash", socket=daemon.socket)
    assert FATAL_LINE in salt.rpc.tail("crash", socket=daemon.socket)
    assert salt.rpc.status("fine", socket=daemon.socket)["fine"]["state"] == "RUNNING"


def test_test_mode_predicts_and_changes_nothing(salt, daemon):
    app_conf = daemon.write_program("app", SLEEP, startsecs=0)
    daemon.write_program("idle", SLEEP, autostart="false")
    daemon.start()
    daemon.wait_for("app", "RUNNING")
    app = pid(daemon, "app")
    daemon.write_program("app", "/bin/sleep 601", startsecs=0)
    daemon.write_program("fresh", SLEEP)
    salt.states.__opts__["test"] = True

    ret = salt.states.running("app", socket=daemon.socket)
    assert ret["result"] is None and "would be updated" in ret["comment"], ret
    ret = salt.states.running("idle", socket=daemon.socket)
    assert ret["result"] is None and "idle would be started" in ret["comment"], ret
    ret = salt.states.running("fresh", socket=daemon.socket)
    assert ret["result"] is None and "would be added" in ret["comment"], ret
    ret = salt.states.dead("app", socket=daemon.socket)
    assert ret["result"] is None and "would be stopped" in ret["comment"], ret
    ret = salt.states.mod_watch("app", sfun="running", socket=daemon.socket)
    assert ret["result"] is None and "would be restarted" in ret["comment"], ret
    ret = salt.states.absent("app", conf_file=app_conf, socket=daemon.socket)
    assert ret["result"] is None and "would be stopped and removed" in ret["comment"], ret

    assert os.path.exists(app_conf)
    status = salt.rpc.status(socket=daemon.socket)
    assert sorted(status) == ["app", "idle"]
    assert status["app"]["pid"] == app
    assert status["idle"]["state"] == "STOPPED"
    assert spawns(daemon, "app") == 1 and spawns(daemon, "idle") == 0
    assert salt.rpc.reread(socket=daemon.socket) == {
        "added": ["fresh"], "changed": ["app"], "removed": []
    }


def test_absent_forgets_only_that_program(salt, daemon):
    conf = daemon.write_program("app", SLEEP, startsecs=0)
    daemon.write_program("neighbour", SLEEP, startsecs=0)
    daemon.start()
    daemon.wait_for("app", "RUNNING")
    daemon.wait_for("neighbour", "RUNNING")
    app, neighbour = pid(daemon, "app"), pid(daemon, "neighbour")

    ret = salt.states.absent("app", socket=daemon.socket)  # file still there
    assert ret["result"] is False and "still defined" in ret["comment"], ret
    assert pid(daemon, "app") == app

    ret = salt.states.absent("app", conf_file=conf, socket=daemon.socket)
    assert ret["result"] is True, ret
    assert ret["changes"] == {
        "conf_file": {"removed": conf},
        "removed": "app",
        "pid": {"old": {"app": app}, "new": {}},
    }
    assert not os.path.exists(conf)
    assert sorted(salt.rpc.status(socket=daemon.socket)) == ["neighbour"]
    assert pid(daemon, "neighbour") == neighbour
    with pytest.raises(CommandExecutionError, match="no program or group named 'app'"):
        salt.rpc.status("app", socket=daemon.socket)

    ret = salt.states.absent("app", conf_file=conf, socket=daemon.socket)
    assert ret["result"] is True and ret["changes"] == {}, ret


def test_running_adds_program_and_waits_for_startsecs(salt, daemon):
    daemon.write_program("neighbour", SLEEP, startsecs=0)
    daemon.start()
    daemon.wait_for("neighbour", "RUNNING")
    neighbour = pid(daemon, "neighbour")
    daemon.write_program("fresh", CHATTY, startsecs=2)
    began = time.monotonic()
    ret = salt.states.running("fresh", socket=daemon.socket)
    took = time.monotonic() - began
    assert ret["result"] is True, ret
    assert ret["changes"]["updated"] == "added"
    assert ret["changes"]["pid"]["old"] == {}
    assert ret["changes"]["pid"]["new"] == {"fresh": pid(daemon, "fresh")}
    assert took >= 1.9  # RUNNING only after startsecs
    status = salt.rpc.status(socket=daemon.socket)
    assert status["fresh"]["state"] == "RUNNING"
    assert status["neighbour"]["pid"] == neighbour
    assert "hello-stdout" in salt.rpc.tail("fresh", stream="stdout", socket=daemon.socket)


def test_unknown_program_is_named(salt, daemon):
    daemon.write_program("app", SLEEP, startsecs=0)
    daemon.start()
    for call in (salt.rpc.status, salt.rpc.start, salt.rpc.stop, salt.rpc.tail):
        with pytest.raises(CommandExecutionError, match="no program or group named 'nope'"):
            call("nope", socket=daemon.socket)
    ret = salt.states.running("nope", socket=daemon.socket)
    assert ret["result"] is False and "'nope'" in ret["comment"], ret


def free_port():
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def listener(port, delay=0.3):
    """A program that opens `port` after `delay` seconds, then stays up."""
    return (
        '{} -c "import socket, time; time.sleep({}); s = socket.socket(); '
        "s.bind(('127.0.0.1', {})); s.listen(); time.sleep(600)\"".format(PYTHON, delay, port)
    )


def test_ready_port_counts_as_started_before_startsecs(salt, daemon):
    port = free_port()
    daemon.write_program("server", listener(port), startsecs=60, autostart="false")
    daemon.start()
    ret = salt.states.running("server", socket=daemon.socket, ready_port=port, timeout=50)
    assert ret["result"] is True, ret
    assert "listening on port {}".format(port) in ret["comment"], ret
    # supervisord still waits out its 60 startsecs: the state did not
    assert salt.rpc.status("server", socket=daemon.socket)["server"]["state"] == "STARTING"
    with socket.create_connection(("127.0.0.1", port), timeout=5):
        pass
    # an apply moments later (still STARTING) changes nothing
    again = salt.states.running("server", socket=daemon.socket, ready_port=port, timeout=50)
    assert again["result"] is True and again["changes"] == {}, again
    # a watch restarts it and is done as soon as the new process listens
    old = pid(daemon, "server")
    ret = salt.states.mod_watch("server", sfun="running", socket=daemon.socket,
                                ready_port=port, timeout=50)
    assert ret["result"] is True and ret["changes"]["restarted"] == ["server"], ret
    info = salt.rpc.status("server", socket=daemon.socket)["server"]
    assert info["state"] == "STARTING" and info["pid"] != old


GATED_LISTENER = """
import os, socket, sys, time
port, gate = int(sys.argv[1]), sys.argv[2]
while not os.path.exists(gate):
    time.sleep(0.05)
server = socket.socket()
server.bind(("127.0.0.1", port))
server.listen()
time.sleep(600)
"""


def gated_listener(directory, port, gate):
    """A program that opens `port` only once the file `gate` exists."""
    script = directory / "gated_listener.py"
    script.write_text(GATED_LISTENER)
    return f"{PYTHON} {script} {port} {gate}"


def start_gated(salt, daemon, tmp_path, gate, names, startsecs):
    """Programs ``names``, each listening on its own port once ``gate`` exists, started
    by their states with ``wait=False`` (as the formula starts its instances); returns
    {name: port}."""
    ports = {name: free_port() for name in names}
    for name, port in ports.items():
        daemon.write_program(name, gated_listener(tmp_path, port, gate), startsecs=startsecs, autostart="false")
    daemon.start()
    for name, port in ports.items():
        ret = salt.states.running(name, socket=daemon.socket, ready_port=port, timeout=50, wait=False)
        assert ret["result"] is True and ret["changes"]["started"] == [name], ret
    return ports


def test_programs_start_side_by_side_and_ready_waits_for_them_all(salt, daemon, tmp_path):
    """wait=False: each state only starts its program (none of them can listen yet:
    they wait for a gate), so the three run side by side; ready waits for all."""
    gate = tmp_path / "gate"
    ports = start_gated(salt, daemon, tmp_path, gate, ["server0", "server1", "server2"], startsecs=60)
    status = salt.rpc.status(socket=daemon.socket)
    assert all(status[name]["state"] == "STARTING" and status[name]["pid"] for name in ports), status
    gate.touch()
    ret = salt.states.ready("servers", ports, socket=daemon.socket, timeout=50)
    assert ret["result"] is True and ret["changes"] == {}, ret
    for port in ports.values():
        with socket.create_connection(("127.0.0.1", port), timeout=5):
            pass
    # one that cannot come up is named, with its stderr
    daemon.write_program("broken", CRASH, startsecs=1)
    salt.rpc.update("broken", socket=daemon.socket)
    ret = salt.states.ready("servers", {**ports, "broken": None}, socket=daemon.socket, timeout=30)
    assert ret["result"] is False and "broken:" in ret["comment"] and FATAL_LINE in ret["comment"], ret


def test_ready_port_means_listening_even_after_supervisord_says_running(salt, daemon, tmp_path):
    """Eight Jupyter servers importing at once on two cores outlive their startsecs
    before they open their ports: RUNNING is not up. Neither running nor ready
    returns before the port is open."""
    gate = tmp_path / "gate"
    ports = start_gated(salt, daemon, tmp_path, gate, ["slow0", "slow1"], startsecs=1)
    for name in ports:
        daemon.wait_for(name, "RUNNING")
    with concurrent.futures.ThreadPoolExecutor(max_workers=1) as pool:
        waiting = pool.submit(salt.states.ready, "servers", ports, socket=daemon.socket, timeout=50)
        time.sleep(1.5)
        assert not waiting.done(), waiting.result()
        gate.touch()
        ret = waiting.result(timeout=50)
    assert ret["result"] is True, ret
    for port in ports.values():
        with socket.create_connection(("127.0.0.1", port), timeout=5):
            pass
    # one program, waited for by running itself: done when it listens, 2 s after RUNNING
    port = free_port()
    daemon.write_program("late", listener(port, delay=3), startsecs=1, autostart="false")
    salt.rpc.update("late", socket=daemon.socket)
    ret = salt.states.running("late", socket=daemon.socket, ready_port=port, timeout=50)
    assert ret["result"] is True and ret["changes"]["started"] == ["late"], ret
    with socket.create_connection(("127.0.0.1", port), timeout=5):
        pass


def test_ready_port_held_by_another_process_is_not_ready(salt, daemon):
    """Only the program's own socket counts: a port taken by someone else makes
    the program fail to bind, and the state fails, naming the error and the holder
    (here: this test's own process, which must not be killed)."""
    port = free_port()
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", port))
        squatter.listen()
        daemon.write_program("server", listener(port, delay=0.5), startsecs=2,
                             autostart="false", startretries=0)
        daemon.start()
        ret = salt.states.running("server", socket=daemon.socket, ready_port=port, timeout=30)
        assert ret["result"] is False, ret
        assert "Address already in use" in ret["comment"], ret
        assert "port {} is held by pid {}".format(port, os.getpid()) in ret["comment"], ret
        assert "left alone" in ret["comment"]
        assert "stale" not in ret["changes"]


# --- stale instances: supervisord killed hard, its program left holding the port ----


def orphan_of_killed_supervisord(daemon, spec, port):
    """
    Kill supervisord with SIGKILL and start a new one on the same files: the
    program's old process lives on, orphaned, holding ``port``. Returns its pid.
    """
    old = daemon.wait_for(spec, "RUNNING")["pid"]
    assert listens(old, port)
    daemon.kill_hard()
    assert psutil.pid_exists(old) and listens(old, port)  # survived, holds the port
    daemon.start()
    return old


def listens(pid, port):
    try:
        conns = psutil.Process(pid).net_connections(kind="tcp")
    except psutil.NoSuchProcess:
        return False
    return any(c.status == psutil.CONN_LISTEN and c.laddr[1] == port for c in conns)


def gone(pid):
    """Ended (PID 1 of a container may never reap it: a zombie counts as gone)."""
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def listener_script(directory, port, deaf=False):
    """A #! script that listens on ``port``; ``deaf``: it ignores SIGTERM."""
    script = pathlib.Path(directory) / "listen.py"
    script.write_text(
        "#!{}\n"
        "import signal, socket, sys, time\n"
        "{}"
        "s = socket.socket()\n"
        "s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)\n"
        "s.bind(('127.0.0.1', int(sys.argv[1])))\n"
        "s.listen()\n"
        "time.sleep(600)\n".format(
            PYTHON, "signal.signal(signal.SIGTERM, signal.SIG_IGN)\n" if deaf else ""
        )
    )
    script.chmod(0o755)
    return script


@pytest.mark.parametrize("retries", [0, 5], ids=["fatal", "retrying"])
def test_stale_instance_is_stopped_and_the_program_started(salt, daemon, retries):
    """
    The fault of issue 11: supervisord SIGKILLed, its program orphaned on the
    port, the new supervisord cannot start it (FATAL, or BACKOFF while it still
    retries). One run of the state stops the stale instance and starts the
    program under the new supervisord.
    """
    port = free_port()
    daemon.write_program("server", listener(port, delay=0), startsecs=1, startretries=retries)
    daemon.start()
    old = orphan_of_killed_supervisord(daemon, "server", port)
    if not retries:
        info = daemon.wait_for("server", "FATAL")  # "port not available", for good
        assert "Address already in use" in salt.rpc.tail("server", socket=daemon.socket)
        assert info["pid"] == 0

    salt.states.__opts__["test"] = True
    predicted = salt.states.running("server", socket=daemon.socket, ready_port=port, timeout=30)
    assert predicted["result"] is None, predicted
    assert predicted["changes"]["stale"]["pid"] == old
    assert "stale instance of server holding port {} would be stopped: pid {}".format(
        port, old) in predicted["comment"]
    assert listens(old, port)  # test=True acted not
    salt.states.__opts__["test"] = False

    ret = salt.states.running("server", socket=daemon.socket, ready_port=port, timeout=30)
    assert ret["result"] is True, ret
    assert ret["changes"]["stale"] == {
        "pid": old, "stopped": True, "user": "root", "signal": "TERM",
        "command": shlex.join(shlex.split(listener(port, delay=0))),
    }
    assert ret["changes"]["started"] == ["server"]
    assert "stopped a stale instance (pid {}".format(old) in ret["comment"]
    new = pid(daemon, "server")
    assert new and new != old
    assert ret["changes"]["pid"]["new"] == {"server": new}
    assert gone(old)
    assert listens(new, port)
    assert psutil.Process(new).ppid() == daemon.process.pid  # the new supervisord's child

    again = salt.states.running("server", socket=daemon.socket, ready_port=port, timeout=30)
    assert again["result"] is True and again["changes"] == {}, again
    assert pid(daemon, "server") == new


def test_stale_wrapped_script_that_ignores_term_is_killed(salt, daemon):
    """
    The program runs through a wrapper that execs the real command after `--`
    (as systemd-run --scope ... -- setpriv ... -- jupyter-lab does), the real
    command is a #! script (its /proc cmdline starts with the interpreter), and
    it ignores SIGTERM: it gets SIGKILL after the program's stopwaitsecs.
    """
    port = free_port()
    script = listener_script(daemon.root, port, deaf=True)
    daemon.write_program("wrapped", "/usr/bin/setpriv --nnp -- {} {}".format(script, port),
                         startsecs=1, startretries=0, stopwaitsecs=1)
    daemon.start()
    old = orphan_of_killed_supervisord(daemon, "wrapped", port)
    assert psutil.Process(old).cmdline() == [PYTHON, str(script), str(port)]
    holders = salt.rpc.port_holders("wrapped", port, socket=daemon.socket)
    assert [(h["pid"], h["stale"], h["process"]) for h in holders] == [(old, True, "wrapped")]

    began = time.monotonic()
    ret = salt.states.running("wrapped", socket=daemon.socket, ready_port=port, timeout=30)
    assert ret["result"] is True, ret
    assert ret["changes"]["stale"]["pid"] == old
    assert ret["changes"]["stale"]["signal"] == "KILL"
    assert time.monotonic() - began >= 1  # it waited out stopwaitsecs first
    assert gone(old)
    assert listens(pid(daemon, "wrapped"), port)


FOREIGN_ENVIRONMENTS = {
    # the program's command, but another program's name under the same supervisord
    "other-process-name": {"SUPERVISOR_PROCESS_NAME": "other", "SUPERVISOR_GROUP_NAME": "other"},
    # the right names, but another supervisord
    "other-supervisord": {"SUPERVISOR_PROCESS_NAME": "server", "SUPERVISOR_GROUP_NAME": "server",
                          "SUPERVISOR_SERVER_URL": "unix:///run/elsewhere.sock"},
    # not started by any supervisord
    "no-supervisor": {},
}


@pytest.mark.parametrize("variant", sorted(FOREIGN_ENVIRONMENTS))
def test_foreign_holder_of_the_port_is_named_and_left_alone(salt, daemon, variant):
    """
    A process with the program's very command that is not an instance of this
    program (another name, another supervisord, no supervisord) is foreign:
    the state fails naming its pid, user and command, and it keeps running.
    """
    port = free_port()
    command = listener(port, delay=0)
    daemon.write_program("server", command, startsecs=1, startretries=0, autostart="false")
    daemon.start()
    env = {k: v for k, v in os.environ.items() if not k.startswith("SUPERVISOR_")}
    env.update({"SUPERVISOR_ENABLED": "1", "SUPERVISOR_SERVER_URL": "unix://" + daemon.socket})
    env.update(FOREIGN_ENVIRONMENTS[variant])
    if variant == "no-supervisor":
        env = {k: v for k, v in env.items() if not k.startswith("SUPERVISOR_")}
    foreign = subprocess.Popen(shlex.split(command), env=env, start_new_session=True)
    try:
        deadline = time.monotonic() + 10
        while not listens(foreign.pid, port):
            assert time.monotonic() < deadline, "the foreign listener did not listen"
            time.sleep(0.05)
        holders = salt.rpc.port_holders("server", port, socket=daemon.socket)
        assert [(h["pid"], h["stale"]) for h in holders] == [(foreign.pid, False)]
        assert psutil.Process(foreign.pid).cmdline() == shlex.split(command)

        salt.states.__opts__["test"] = True
        predicted = salt.states.running("server", socket=daemon.socket, ready_port=port,
                                        timeout=30)
        assert predicted["result"] is None and "stale" not in predicted["changes"], predicted
        assert "held by pid {}".format(foreign.pid) in predicted["comment"]
        salt.states.__opts__["test"] = False

        ret = salt.states.running("server", socket=daemon.socket, ready_port=port, timeout=30)
        assert ret["result"] is False, ret
        assert "stale" not in ret["changes"]
        text = "port {} is held by pid {} (user root): {}".format(
            port, foreign.pid, shlex.join(shlex.split(command)))
        assert text in ret["comment"], ret
        assert "not an instance of this program: left alone" in ret["comment"]
        assert foreign.poll() is None and listens(foreign.pid, port)
    finally:
        foreign.kill()
        foreign.wait()
