"""jupyter_service: Salt's service state on systemd hosts, init scripts elsewhere."""

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


def test_invalid_pillar_state_fails_even_in_test_mode():
    module = load("_states", "jupyter_config", salt={"jupyter.hash_password": None}, opts={"test": True})
    ret = module.invalid_pillar("x", comment="jupyter:server:port: bad")
    assert ret["result"] is False and ret["comment"] == "jupyter:server:port: bad"
