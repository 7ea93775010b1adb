"""jupyter_service: Salt's service state on systemd hosts, init scripts elsewhere."""

import subprocess
import time

import psutil
import pytest

from support.loader import load


def service_state(offline, running=False, test=False):
    calls = []

    def record(name):
        def call(*args, **kwargs):
            calls.append((name, args, kwargs))
            return {"status": lambda *_: running, "start": lambda *_: True, "reload": lambda *_: True}.get(
                name, lambda *_: {"result": True, "changes": {}, "comment": name, "name": args}
            )(*args)

        return call

    salt = {
        "service.offline": lambda: offline,
        "service.status": record("status"),
        "service.start": record("start"),
        "service.reload": record("reload"),
        "service.restart": record("restart"),
    }
    states = {"service.running": record("state.running"), "service.mod_watch": record("state.mod_watch")}
    module = load("_states", "jupyter_service", salt=salt, states=states, opts={"test": test})
    return module, calls


def test_systemd_host_uses_salts_service_state():
    module, calls = service_state(offline=False)
    module.running("nginx", enable=True, reload=True)
    module.mod_watch("nginx", sfun="running", enable=True, reload=True)
    assert [c[0] for c in calls] == ["state.running", "state.mod_watch"]
    assert calls[0][2] == {"name": "nginx", "enable": True, "reload": True}
    assert calls[1][2]["sfun"] == "running" and calls[1][2]["reload"] is True


def test_offline_running_service_is_left_alone():
    module, calls = service_state(offline=True, running=True)
    ret = module.running("nginx")
    assert ret["result"] is True and ret["changes"] == {}
    assert [c[0] for c in calls] == ["status"]


def test_offline_stopped_service_is_started_and_checked():
    module, calls = service_state(offline=True, running=False)
    ret = module.running("nginx")
    # status stays False in this mock, so the state must report the failure honestly
    assert ret["result"] is False and "did not start" in ret["comment"]
    assert [c[0] for c in calls] == ["status", "start", "status"]


@pytest.mark.parametrize("reload, verb", [(True, "reload"), (False, "restart")])
def test_offline_watch_reloads_or_restarts(reload, verb):
    module, calls = service_state(offline=True)
    ret = module.mod_watch("nginx", reload=reload)
    assert [c[0] for c in calls] == [verb]
    assert ret["changes"] == {"nginx": f"{verb}ed"}


def test_offline_test_mode_does_nothing():
    module, calls = service_state(offline=True, running=False, test=True)
    assert module.running("nginx")["result"] is None
    assert module.mod_watch("nginx", reload=True)["result"] is None
    assert [c[0] for c in calls] == ["status"]


def titled(title, *, parent_title=None):
    """A real process whose command line reads TITLE (as nginx's processes title
    themselves), optionally the child of one titled PARENT_TITLE."""
    if parent_title is None:
        return subprocess.Popen(["bash", "-c", f'exec -a "{title}" sleep 60'])
    # the parent execs into sleep after forking the titled child
    return subprocess.Popen(["bash", "-c", f'(exec -a "{title}" sleep 60) & exec -a "{parent_title}" sleep 60'])


def wait_titles(*titles):
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        seen = {" ".join(p.info["cmdline"] or []) for p in psutil.process_iter(["cmdline"])}
        if all(any(line.startswith(t) for line in seen) for t in titles):
            return
        time.sleep(0.05)
    raise AssertionError(f"not all of {titles} started")


def test_offline_start_stops_the_orphaned_workers_of_a_dead_master_only():
    """A master killed hard leaves its workers holding the ports: before the init script
    starts the service again, its orphaned workers go; a live master's workers and
    another program's processes stay."""
    name = "jfsvctest"
    orphan = titled(f"{name}: worker process")
    family = titled(f"{name}: worker process", parent_title=f"{name}: master process")
    foreign = titled("othersvc: worker process")
    try:
        wait_titles(f"{name}: worker process", f"{name}: master process", "othersvc: worker process")
        module, calls = service_state(offline=True, running=False)
        found = module._orphaned_workers(name)
        assert [p.pid for p in found] == [orphan.pid]
        ret = module.running(name)
        assert orphan.wait(timeout=10) is not None
        assert family.poll() is None and foreign.poll() is None
        assert "first stopped 1 orphaned process(es) of its dead master" in ret["comment"]
        assert [c[0] for c in calls] == ["status", "start", "status"]
    finally:
        for proc in (orphan, family, foreign):
            for child in psutil.Process(proc.pid).children(recursive=True) if proc.poll() is None else []:
                child.kill()
            proc.kill()
            proc.wait()


def test_invalid_pillar_state_fails_even_in_test_mode():
    module = load("_states", "jupyter_config", salt={"jupyter.hash_password": None}, opts={"test": True})
    ret = module.invalid_pillar("x", comment="jupyter:server:port: bad")
    assert ret["result"] is False and ret["comment"] == "jupyter:server:port: bad"
