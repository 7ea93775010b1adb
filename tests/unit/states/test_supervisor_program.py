"""
Unit tests of _states/supervisor_program.py with the loader mocked: its
``__salt__`` holds fakes of the supervisor_rpc functions that record calls.
No supervisord, no root, seconds.
"""

import pytest
from salt.exceptions import CommandExecutionError

from support.loader import load

DOWN = CommandExecutionError(
    "supervisord is not reachable on its socket /run/supervisor.sock: "
    "Connection refused (is supervisord running?)"
)


def proc(group, name, state="RUNNING", pid=100):
    return {"group": group, "name": name, "state": state,
            "pid": pid if state == "RUNNING" else None}


class FakeRpc:
    """supervisor_rpc as the state sees it: processes by spec, a reread diff."""

    def __init__(self, *procs, diff=None):
        self.procs = {self.spec(p): dict(p) for p in procs}
        self.diff = {"added": [], "changed": [], "removed": []}
        self.diff.update(diff or {})
        self.calls = []
        self.errors = {}
        self.next_pid = 500
        self.holders = []  # what port_holders answers (and start stops, if stale)
        self.waited = []  # (name, wait) of each start

    @staticmethod
    def _state(socket=None):
        return {"state": "RUNNING", "socket": socket}

    @staticmethod
    def spec(p):
        return p["name"] if p["group"] == p["name"] else "{}:{}".format(p["group"], p["name"])

    def functions(self):
        names = ("status", "reread", "update", "start", "stop", "restart", "state",
                 "port_holders")
        return {"supervisor_rpc." + n: self._wrap(n) for n in names}

    def _wrap(self, name):
        def call(*args, **kwargs):
            self.calls.append((name,) + args)
            if name in self.errors:
                raise self.errors[name]
            return getattr(self, "_" + name)(*args, **kwargs)
        return call

    def _select(self, name):
        group, _, member = name.partition(":")
        found = {s: p for s, p in self.procs.items()
                 if p["group"] == group and member in ("", "*", p["name"])}
        if not found:
            raise CommandExecutionError(
                "supervisord on /s.sock has no program or group named '{}'".format(name))
        return found

    def _status(self, name=None, socket=None):
        found = self.procs if name is None else self._select(name)
        return {s: dict(p) for s, p in found.items()}  # fresh, as supervisor_rpc's

    def _reread(self, socket=None):
        return {k: list(v) for k, v in self.diff.items()}

    def _update(self, group, socket=None, timeout=60):
        for action in ("added", "changed", "removed"):
            if group in self.diff[action]:
                self.diff[action].remove(group)
                for spec in [s for s, p in self.procs.items() if p["group"] == group]:
                    del self.procs[spec]
                if action != "removed":
                    self._spawn(proc(group, group, "STARTING"))
                return {a: [group] if a == action else [] for a in ("added", "changed", "removed")}
        return {"added": [], "changed": [], "removed": []}

    def _spawn(self, p):
        self.next_pid += 1
        p["pid"] = self.next_pid
        self.procs[self.spec(p)] = p

    def _start(self, name, timeout=60, socket=None, ready_port=None, wait=True):
        self.waited.append((name, wait))
        done = {}
        for spec, p in self._select(name).items():
            old = {"state": p["state"], "pid": p["pid"]}
            twins = [h for h in self.holders if h["stale"]] if ready_port else []
            if p["state"] != "RUNNING":
                if p["state"] != "STARTING" or twins:
                    self.next_pid += 1
                    p["pid"] = self.next_pid
                p["state"] = "RUNNING"
            done[spec] = {"old": old, "new": {"state": p["state"], "pid": p["pid"]}}
            if twins and old["state"] != "RUNNING":
                done[spec]["stale"] = [
                    {"pid": h["pid"], "user": h["user"], "command": h["command"],
                     "signal": "TERM", "stopped": True} for h in twins]
                self.holders = [h for h in self.holders if not h["stale"]]
        return done

    def _port_holders(self, name, port, socket=None):
        self._select(name)
        return [dict(h) for h in self.holders]

    def _stop(self, name, timeout=60, socket=None):
        for p in self._select(name).values():
            p["state"], p["pid"] = "STOPPED", None
        return {}

    def _restart(self, name, timeout=60, socket=None, ready_port=None, wait=True):
        self._stop(name)
        return self._start(name, ready_port=ready_port, wait=wait)

    def acting_calls(self):
        return [c for c in self.calls if c[0] in ("update", "start", "stop", "restart")]


@pytest.fixture
def state():
    return load("_states", "supervisor_program")


def wire(state, rpc):
    state.__salt__ = rpc.functions()
    return rpc


def test_virtual(state):
    state.__salt__ = {}
    assert state.__virtual__()[0] is False
    wire(state, FakeRpc())
    assert state.__virtual__() == "supervisor_program"


# --- running ---------------------------------------------------------------------


def test_running_and_unchanged_is_left_alone(state):
    rpc = wire(state, FakeRpc(proc("jupyter", "jupyter", pid=7), diff={"changed": ["other"]}))
    ret = state.running("jupyter")
    assert ret == {"name": "jupyter", "result": True, "changes": {},
                   "comment": "jupyter is already running and up to date"}
    assert rpc.acting_calls() == []


def test_running_updates_a_changed_group_only(state):
    rpc = wire(state, FakeRpc(proc("jupyter", "jupyter", pid=7), proc("other", "other", pid=8),
                              diff={"changed": ["jupyter", "other"]}))
    ret = state.running("jupyter", socket="/s.sock", timeout=30)
    assert ret["result"] is True, ret
    assert rpc.acting_calls() == [("update", "jupyter"), ("start", "jupyter")]
    assert ret["changes"] == {"updated": "changed", "started": ["jupyter"],
                              "pid": {"old": {"jupyter": 7}, "new": {"jupyter": 501}}}
    assert "updated group jupyter" in ret["comment"]
    assert rpc.procs["other"]["pid"] == 8


def test_running_adds_a_new_group(state):
    rpc = wire(state, FakeRpc(diff={"added": ["jupyter"]}))
    ret = state.running("jupyter")
    assert ret["result"] is True, ret
    assert ret["changes"]["updated"] == "added"
    assert ret["changes"]["pid"] == {"old": {}, "new": {"jupyter": 501}}
    assert rpc.procs["jupyter"]["state"] == "RUNNING"


def test_running_starts_a_stopped_program(state):
    rpc = wire(state, FakeRpc(proc("jupyter", "jupyter", "STOPPED")))
    ret = state.running("jupyter")
    assert ret["result"] is True
    assert rpc.acting_calls() == [("start", "jupyter")]
    assert ret["changes"] == {"started": ["jupyter"],
                              "pid": {"old": {"jupyter": None}, "new": {"jupyter": 501}}}


def test_running_fails_with_the_start_error(state):
    rpc = FakeRpc(proc("jupyter", "jupyter", "FATAL"))
    rpc.errors["start"] = CommandExecutionError(
        "jupyter: start failed (state FATAL: Exited too quickly)\n"
        "last lines of /var/log/jupyter.err:\nOSError: [Errno 98] Address already in use")
    wire(state, rpc)
    ret = state.running("jupyter")
    assert ret["result"] is False
    assert "state FATAL" in ret["comment"] and "Address already in use" in ret["comment"]


def test_running_reports_an_update_that_then_failed(state):
    rpc = FakeRpc(proc("jupyter", "jupyter", pid=7), diff={"changed": ["jupyter"]})
    rpc.errors["start"] = CommandExecutionError("jupyter: start failed (state BACKOFF)")
    wire(state, rpc)
    ret = state.running("jupyter")
    assert ret["result"] is False
    assert ret["comment"] == "changed group jupyter, then: jupyter: start failed (state BACKOFF)"
    assert ret["changes"]["updated"] == "changed"
    assert ret["changes"]["pid"]["old"] == {"jupyter": 7}


def test_running_a_removed_program_fails_without_touching_it(state):
    rpc = wire(state, FakeRpc(proc("jupyter", "jupyter"), diff={"removed": ["jupyter"]}))
    ret = state.running("jupyter")
    assert ret["result"] is False and "no longer in supervisord's configuration" in ret["comment"]
    assert rpc.acting_calls() == []


def test_running_an_unknown_program(state):
    rpc = wire(state, FakeRpc(proc("other", "other")))
    ret = state.running("jupyter")
    assert ret["result"] is False and "no program or group named 'jupyter'" in ret["comment"]
    state.__opts__["test"] = True
    ret = state.running("jupyter")
    assert ret["result"] is None and "would be added and started" in ret["comment"]
    assert rpc.acting_calls() == []


def test_running_when_supervisord_is_down(state):
    rpc = FakeRpc()
    rpc.errors["reread"] = DOWN
    wire(state, rpc)
    ret = state.running("jupyter")
    assert ret["result"] is False and ret["comment"] == str(DOWN) and ret["changes"] == {}
    state.__opts__["test"] = True
    assert state.running("jupyter")["result"] is None


@pytest.mark.parametrize(
    "procs,diff,comment,changes",
    [
        ([proc("jupyter", "jupyter", pid=7)], {"changed": ["jupyter"]},
         "group jupyter would be updated", {"updated": "changed", "started": ["jupyter"]}),
        ([], {"added": ["jupyter"]}, "group jupyter would be added",
         {"updated": "added", "started": ["jupyter"]}),
        ([proc("jupyter", "jupyter", "BACKOFF")], {}, "jupyter would be started (now BACKOFF)",
         {"started": ["jupyter"]}),
    ],
)
def test_running_in_test_mode_predicts_and_acts_not(state, procs, diff, comment, changes):
    rpc = wire(state, FakeRpc(*procs, diff=diff))
    state.__opts__["test"] = True
    ret = state.running("jupyter")
    assert ret["result"] is None
    assert comment in ret["comment"]
    assert ret["changes"] == changes
    assert rpc.acting_calls() == []


# --- dead --------------------------------------------------------------------------


def test_dead_stops_and_reports_pids(state):
    rpc = wire(state, FakeRpc(proc("grp", "a", pid=3), proc("grp", "b", "STOPPED")))
    ret = state.dead("grp:*")
    assert ret["result"] is True
    assert rpc.acting_calls() == [("stop", "grp:*")]
    assert ret["changes"] == {"stopped": ["grp:a"],
                              "pid": {"old": {"grp:a": 3, "grp:b": None},
                                      "new": {"grp:a": None, "grp:b": None}}}
    again = state.dead("grp:*")
    assert again["result"] is True and again["changes"] == {}


def test_dead_stop_failure_is_a_failure(state):
    rpc = FakeRpc(proc("deaf", "deaf", pid=3))
    rpc.errors["stop"] = CommandExecutionError(
        "deaf: did not reach STOPPED within 1 s (state STOPPING)")
    wire(state, rpc)
    ret = state.dead("deaf", timeout=1)
    assert ret["result"] is False
    assert "state STOPPING" in ret["comment"]
    assert ret["changes"]["pid"] == {"old": {"deaf": 3}, "new": {"deaf": 3}}


def test_dead_unknown_and_test_mode(state):
    rpc = wire(state, FakeRpc(proc("app", "app", pid=3)))
    assert state.dead("nope") == {"name": "nope", "result": True, "changes": {},
                                  "comment": "nope is not known to supervisord: not running"}
    state.__opts__["test"] = True
    ret = state.dead("app")
    assert ret["result"] is None and ret["changes"] == {"stopped": ["app"]}
    assert rpc.acting_calls() == [] and rpc.procs["app"]["pid"] == 3


# --- absent ------------------------------------------------------------------------


def test_absent_removes_file_then_group(state, tmp_path):
    conf = tmp_path / "jupyter.conf"
    conf.write_text("[program:jupyter]\n")
    rpc = FakeRpc(proc("jupyter", "jupyter", pid=7), proc("other", "other", pid=8))

    def reread(socket=None):
        # supervisord sees the group removed once the file is gone
        gone = not conf.exists() and "jupyter" in rpc.procs
        return {"added": [], "changed": [], "removed": ["jupyter"] if gone else []}

    rpc._reread = reread
    rpc.diff["removed"] = ["jupyter"]  # what _update applies
    wire(state, rpc)
    ret = state.absent("jupyter", conf_file=str(conf))
    assert ret["result"] is True, ret
    assert not conf.exists()
    assert ret["changes"] == {"conf_file": {"removed": str(conf)}, "removed": "jupyter",
                              "pid": {"old": {"jupyter": 7}, "new": {}}}
    assert rpc.acting_calls() == [("update", "jupyter")]
    assert sorted(rpc.procs) == ["other"]
    again = state.absent("jupyter", conf_file=str(conf))
    assert again["result"] is True and again["changes"] == {}


def test_absent_in_test_mode_keeps_the_file(state, tmp_path):
    conf = tmp_path / "jupyter.conf"
    conf.write_text("[program:jupyter]\n")
    rpc = wire(state, FakeRpc(proc("jupyter", "jupyter", pid=7)))
    state.__opts__["test"] = True
    ret = state.absent("jupyter", conf_file=str(conf))
    assert ret["result"] is None
    assert ret["changes"] == {"conf_file": {"removed": str(conf)}, "removed": "jupyter"}
    assert "would remove {}".format(conf) in ret["comment"]
    assert conf.exists() and rpc.acting_calls() == []


def test_absent_fails_while_the_program_is_still_configured(state):
    rpc = wire(state, FakeRpc(proc("jupyter", "jupyter")))
    ret = state.absent("jupyter")
    assert ret["result"] is False and "still defined" in ret["comment"]
    assert rpc.acting_calls() == []


# --- mod_watch -------------------------------------------------------------------------
# Salt calls mod_watch only when `running` itself changed nothing (call_chunk in
# salt/state.py): each call is one restart. tests/functional/test_supervisor_watch.py
# proves the whole with salt-call.


def test_mod_watch_restarts(state):
    rpc = wire(state, FakeRpc(proc("jupyter", "jupyter", pid=7)))
    ret = state.mod_watch("jupyter", sfun="running")
    assert ret == {"name": "jupyter", "result": True, "comment": "restarted jupyter",
                   "changes": {"restarted": ["jupyter"],
                               "pid": {"old": {"jupyter": 7}, "new": {"jupyter": 501}}}}
    assert rpc.acting_calls() == [("restart", "jupyter")]


def test_mod_watch_of_dead_or_absent_does_nothing(state):
    rpc = wire(state, FakeRpc(proc("jupyter", "jupyter", pid=7)))
    for sfun in ("dead", "absent"):
        ret = state.mod_watch("jupyter", sfun=sfun)
        assert ret["result"] is True and ret["changes"] == {}
    assert rpc.acting_calls() == []


def test_mod_watch_in_test_mode(state):
    rpc = wire(state, FakeRpc(proc("jupyter", "jupyter", pid=7)))
    state.__opts__["test"] = True
    ret = state.mod_watch("jupyter", sfun="running")
    assert ret["result"] is None and "would be restarted (pids {'jupyter': 7})" in ret["comment"]
    assert ret["changes"] == {"restarted": ["jupyter"]}
    assert rpc.acting_calls() == []


def test_mod_watch_failure(state):
    rpc = FakeRpc(proc("jupyter", "jupyter", pid=7))
    rpc.errors["restart"] = CommandExecutionError("jupyter: start failed (state FATAL)")
    wire(state, rpc)
    ret = state.mod_watch("jupyter", sfun="running")
    assert ret["result"] is False and "state FATAL" in ret["comment"]


# --- stale instances (supervisord died hard, its program holds the port) -----------------

TWIN = {"pid": 77, "user": "jupyter", "stale": True, "process": "jupyter", "reason": None,
        "command": "/opt/jupyter/venv/bin/python3 /opt/jupyter/venv/bin/jupyter-lab --no-browser"}
FOREIGN = {"pid": 88, "user": "www-data", "stale": False, "process": None,
           "command": "python3 -m http.server 8888",
           "reason": "its SUPERVISOR_PROCESS_NAME is None, not 'jupyter' (jupyter)"}


def test_running_reports_the_stale_instance_it_stopped(state):
    rpc = FakeRpc(proc("jupyter", "jupyter", "FATAL"))
    rpc.holders = [dict(TWIN)]
    wire(state, rpc)
    ret = state.running("jupyter", ready_port=8888)
    assert ret["result"] is True, ret
    assert ret["changes"] == {
        "stale": {"pid": 77, "stopped": True, "user": "jupyter", "signal": "TERM",
                  "command": TWIN["command"]},
        "started": ["jupyter"],
        "pid": {"old": {"jupyter": None}, "new": {"jupyter": 501}},
    }
    assert ret["comment"] == (
        "jupyter: stopped a stale instance (pid 77, user jupyter, SIGTERM) left by an earlier "
        "supervisord on port 8888, started jupyter; now listening on port 8888")
    assert ("start", "jupyter") in rpc.acting_calls()


def test_a_program_supervisord_was_retrying_counts_as_started_once_healed(state):
    """STARTING is no change of ours, unless a stale instance had to go first."""
    rpc = FakeRpc(dict(proc("jupyter", "jupyter", "STARTING"), pid=60))
    rpc.holders = [dict(TWIN)]
    wire(state, rpc)
    ret = state.running("jupyter", ready_port=8888)
    assert ret["changes"]["started"] == ["jupyter"] and ret["changes"]["stale"]["pid"] == 77


def test_several_stale_pids_are_listed(state):
    rpc = FakeRpc(proc("jupyter", "jupyter", "FATAL"))
    rpc.holders = [dict(TWIN), dict(TWIN, pid=76)]
    wire(state, rpc)
    assert state.running("jupyter", ready_port=8888)["changes"]["stale"]["pid"] == [76, 77]


def test_mod_watch_reports_the_stale_instance_it_stopped(state):
    rpc = FakeRpc(proc("jupyter", "jupyter", "FATAL"))
    rpc.holders = [dict(TWIN)]
    wire(state, rpc)
    ret = state.mod_watch("jupyter", sfun="running", ready_port=8888)
    assert ret["result"] is True
    assert ret["changes"]["stale"]["pid"] == 77 and ret["changes"]["restarted"] == ["jupyter"]
    assert "restarted jupyter; stopped a stale instance (pid 77" in ret["comment"]


def test_test_mode_predicts_stopping_a_stale_instance(state):
    rpc = FakeRpc(proc("jupyter", "jupyter", "FATAL"))
    rpc.holders = [dict(TWIN)]
    wire(state, rpc)
    state.__opts__["test"] = True
    ret = state.running("jupyter", ready_port=8888)
    assert ret["result"] is None
    assert ret["changes"] == {
        "started": ["jupyter"],
        "stale": {"pid": 77, "stopped": True, "user": "jupyter", "command": TWIN["command"]},
    }
    assert ("first a stale instance of jupyter holding port 8888 would be stopped: pid 77 "
            "(user jupyter): " + TWIN["command"]) in ret["comment"]
    assert rpc.acting_calls() == [] and rpc.holders == [TWIN]


def test_test_mode_sees_a_stale_instance_behind_a_starting_program(state):
    rpc = FakeRpc(dict(proc("jupyter", "jupyter", "STARTING"), pid=60))
    rpc.holders = [dict(TWIN)]
    wire(state, rpc)
    state.__opts__["test"] = True
    ret = state.running("jupyter", ready_port=8888)
    assert ret["result"] is None and ret["changes"]["stale"]["pid"] == 77
    assert ret["comment"].startswith("jupyter would be started (now STARTING, its port taken)")


def test_test_mode_names_a_foreign_holder_and_leaves_it(state):
    rpc = FakeRpc(proc("jupyter", "jupyter", "FATAL"))
    rpc.holders = [dict(FOREIGN)]
    wire(state, rpc)
    state.__opts__["test"] = True
    ret = state.running("jupyter", ready_port=8888)
    assert ret["result"] is None and "stale" not in ret["changes"]
    assert ("port 8888 is held by pid 88 (user www-data): python3 -m http.server 8888, not an "
            "instance of jupyter: it would be left alone") in ret["comment"]


def test_running_program_is_not_checked_for_port_holders(state):
    """A RUNNING program holds its own port: no scan, no prediction."""
    rpc = wire(state, FakeRpc(proc("jupyter", "jupyter", pid=7)))
    rpc.holders = [dict(FOREIGN)]
    assert state.running("jupyter", ready_port=8888)["changes"] == {}
    state.__opts__["test"] = True
    assert state.running("jupyter", ready_port=8888)["result"] is True
    assert [c for c in rpc.calls if c[0] == "port_holders"] == []


def test_running_waits_for_a_supervisord_that_is_still_starting(state, monkeypatch):
    """systemd starts supervisord (Type=simple) and returns before its socket exists."""
    rpc = wire(state, FakeRpc(proc("jupyter", "jupyter", pid=42)))
    answers = iter([DOWN, DOWN, None])

    def starting(socket=None):
        error = next(answers)
        if error:
            raise error
        return {"state": "RUNNING"}

    rpc._state = starting
    monkeypatch.setattr(state.time, "sleep", lambda _: None)
    ret = state.running("jupyter")
    assert ret["result"] is True and ret["changes"] == {}
    assert [c[0] for c in rpc.calls].count("state") == 3


def test_without_wait_the_program_is_only_started_and_ready_waits_for_all_together(state):
    rpc = wire(state, FakeRpc(proc("jupyter-a", "jupyter-a", "STOPPED"), proc("jupyter-b", "jupyter-b", "STOPPED")))
    for name in ("jupyter-a", "jupyter-b"):
        ret = state.running(name, ready_port=8901, wait=False)
        assert ret["result"] is True and ret["changes"]["started"] == [name]
    assert rpc.waited == [("jupyter-a", False), ("jupyter-b", False)]
    ret = state.ready("jupyter", {"jupyter-a": 8901, "jupyter-b": 8902})
    assert ret["result"] is True and ret["changes"] == {}
    assert sorted(rpc.waited[2:]) == [("jupyter-a", True), ("jupyter-b", True)]


def test_ready_fails_naming_each_program_that_did_not_come_up(state):
    rpc = wire(state, FakeRpc(proc("jupyter-a", "jupyter-a"), proc("jupyter-b", "jupyter-b", "FATAL")))
    rpc.errors["start"] = CommandExecutionError("start failed (state FATAL): Address already in use")
    ret = state.ready("jupyter", {"jupyter-a": 8901, "jupyter-b": 8902})
    assert ret["result"] is False
    assert "jupyter-a: start failed" in ret["comment"] and "jupyter-b: start failed" in ret["comment"]
