"""
Unit tests of _states/jupyter_venv.py: the loader mocked, the execution module's real
functions for links, history, markers and pruning on a temporary directory; building
and the candidate check faked. No root, seconds.
"""

import json
import os

import pytest
from salt.exceptions import CommandExecutionError

from support.loader import load

SECRET = "Idx-Secret-77"
PACKAGES = ["jupyterlab==4.6.6", f"private-ext @ https://ci:{SECRET}@pkgs.example/private_ext-1.0-py3-none-any.whl"]
REAL = ("mask", "manifest", "instance_settings", "link_target", "switch", "read_history", "record",
        "mark_rolled_back", "rolled_back", "prune", "check_key", "failed_check")


def passed(seconds=1.0):
    return {"result": True, "failed": None, "log_tail": "", "dropped_extensions": [], "overhead": {"stop candidate": 0.5},
            "checks": {n: {"result": True, "seconds": seconds, "comment": "ok"} for n in ("status", "extensions", "login", "kernel")},
            "seconds": 4 * seconds, "remembered": False}


def failed(check="extensions", comment="server extensions did not load: bad_ext: RuntimeError('boom')"):
    return {"result": False, "failed": check, "log_tail": "[W ServerApp] bad_ext | extension failed loading",
            "dropped_extensions": [], "overhead": {}, "checks": {check: {"result": False, "seconds": 0.1, "comment": comment}},
            "seconds": 3, "remembered": False}


class Host:
    """One instance 'jupyter' in tmp_path; the state and module loaded around it."""

    def __init__(self, tmp_path, test=False):
        self.tmp = tmp_path
        self.store = str(tmp_path / "venvs")
        self.link = str(tmp_path / "venv")
        self.config_file = tmp_path / "jupyter.json"
        self.config_file.write_text('{"ServerApp": {"port": 8888}}')
        self.packages = list(PACKAGES)
        self.venv_id = "aaaaaaaaaaaa"
        self.pip = {"index_url": f"https://deploy:{SECRET}@pkgs.example/simple/", "extra_index_urls": [],
                    "trusted_hosts": [], "proxy": None}
        self.opts = {"test": test}
        self.builds, self.checks = [], []
        self.check_outcome = passed()
        self.build_error = None
        self.funcs = {}
        self.mod = load("_modules", "jupyter_venv", salt=self.funcs)
        self.funcs.update({f"jupyter_venv.{n}": getattr(self.mod, n) for n in REAL})
        self.funcs.update({
            "jupyter.settings": self.settings,
            "jupyter_venv.build": self.build,
            "jupyter_venv.check": self.check,
        })
        self.state = load("_states", "jupyter_venv", salt=self.funcs, opts=self.opts)

    @property
    def venv_dir(self):
        return os.path.join(self.store, self.venv_id)

    def settings(self, reveal_secrets=False):
        assert reveal_secrets is True  # the states need the real pip options
        inst = {"name": "jupyter", "user": "nobody", "group": "nogroup", "venv": self.link, "python": "/usr/bin/python3",
                "app": "lab", "packages": list(self.packages), "pip": dict(self.pip), "config_file": str(self.config_file),
                "root_dir": "/srv/jupyter", "environment": {}, "server": {"port": 8888, "base_url": "/"},
                "program": "jupyter", "program_file": str(self.tmp / "conf.d" / "jupyter.conf"),
                "supervisor": {"socket": "/run/supervisor.sock"}, "venv_id": self.venv_id, "venv_dir": self.venv_dir}
        return {"venv_store": self.store, "upgrade": {"keep": 2, "timeout": 120}, "instances": {"jupyter": inst}}

    def build(self, path, python, packages, pip=None):
        self.builds.append((path, python, list(packages), dict(pip or {})))
        if self.build_error:
            raise CommandExecutionError(self.build_error)
        return self.make(path)

    def make(self, path):
        os.makedirs(os.path.join(path, "bin"), exist_ok=True)
        data = {"venv_id": os.path.basename(path), "python": {"path": "/usr/bin/python3", "version": "3.11"},
                "packages": [self.mod.mask(p) for p in self.packages], "built_at": "2026-11-30T00:00:00Z", "build_seconds": 12.3}
        with open(os.path.join(path, ".jupyter-venv.json"), "w") as out:
            json.dump(data, out)
        return data

    def check(self, instance, venv, old=None, timeout=None, remember=True):
        """Like the module's check: remembers a failure in the venv under its key."""
        self.checks.append((instance, venv, old))
        outcome = dict(self.check_outcome)
        if not outcome["result"]:
            key = self.mod.check_key(instance, venv)
            with open(os.path.join(venv, ".jupyter-venv-check-failed.json"), "w") as out:
                json.dump({"key": key, "at": "2026-11-30T10:00:00Z", "check": outcome["failed"],
                           "comment": outcome["checks"][outcome["failed"]]["comment"], "log_tail": outcome["log_tail"]}, out)
        return outcome

    def target(self):
        return os.readlink(self.link) if os.path.islink(self.link) else None


@pytest.fixture
def host(tmp_path):
    return Host(tmp_path)


def live_now(host, venv_id="0000000000aa"):
    """A deployed host: the link points at a venv of its own."""
    old = os.path.join(host.store, venv_id)
    host.make(old)
    host.mod.switch(host.link, old)
    host.mod.record("jupyter", host.link, old, host.store)
    return old


# --- built -------------------------------------------------------------------------


def test_built_builds_once_with_the_instance_settings(host):
    ret = host.state.built(host.venv_dir, "jupyter")
    assert ret["result"] is True
    assert ret["comment"] == f"{host.venv_dir} built in 12.3 s"
    assert ret["changes"]["venv"] == {"old": None, "new": host.venv_dir}
    assert ret["changes"]["python"] == "3.11"
    (path, python, packages, pip), = host.builds
    assert (path, python, packages, pip["index_url"]) == (host.venv_dir, "/usr/bin/python3", PACKAGES, host.pip["index_url"])

    again = host.state.built(host.venv_dir, "jupyter")
    assert (again["result"], again["changes"], len(host.builds)) == (True, {}, 1)
    assert "is built" in again["comment"]


def test_no_credential_reaches_the_state_return(host):
    rets = [host.state.built(host.venv_dir, "jupyter")]
    host.build_error = "never seen"
    rets.append(host.state.live(host.link, "jupyter"))
    for ret in rets:
        assert SECRET not in repr(ret)
    assert "https://<hidden>@pkgs.example/private_ext-1.0-py3-none-any.whl" in rets[0]["changes"]["packages"][1]


def test_built_predicts_in_test_mode(tmp_path):
    host = Host(tmp_path, test=True)
    ret = host.state.built(host.venv_dir, "jupyter")
    assert ret["result"] is None and ret["changes"]["venv"]["new"] == host.venv_dir
    assert host.builds == [] and not os.path.exists(host.venv_dir)


def test_built_fails_with_the_masked_pip_error_and_says_the_live_venv_is_untouched(host):
    old = live_now(host)
    host.build_error = "pip install for X failed (exit 1):\nERROR: No matching distribution for nope"
    ret = host.state.built(host.venv_dir, "jupyter")
    assert ret["result"] is False and ret["changes"] == {}
    assert "the live venv is untouched" in ret["comment"] and "No matching distribution for nope" in ret["comment"]
    assert host.target() == old


def test_built_refuses_a_name_other_than_the_settings(host):
    ret = host.state.built(os.path.join(host.store, "bbbbbbbbbbbb"), "jupyter")
    assert ret["result"] is False and host.venv_dir in ret["comment"] and host.builds == []
    ret = host.state.built(host.venv_dir, "alice")
    assert ret["result"] is False and "no instance named 'alice'" in ret["comment"]


def test_built_never_rebuilds_a_live_venv_that_lost_its_manifest(host):
    host.make(host.venv_dir)
    host.mod.switch(host.link, host.venv_dir)
    os.unlink(os.path.join(host.venv_dir, ".jupyter-venv.json"))
    ret = host.state.built(host.venv_dir, "jupyter")
    assert ret["result"] is False and "not rebuilding it under the running server" in ret["comment"]
    assert host.builds == [] and os.path.isdir(os.path.join(host.venv_dir, "bin"))


# --- live --------------------------------------------------------------------------


def test_first_install_makes_the_link_without_a_check(host):
    host.make(host.venv_dir)
    ret = host.state.live(host.link, "jupyter")
    assert ret["result"] is True
    assert ret["changes"] == {"venv": {"old": None, "new": host.venv_dir}}
    assert host.target() == host.venv_dir and host.checks == []
    entries = host.mod.read_history(host.store)["jupyter"]["entries"]
    assert [e["venv"] for e in entries] == [host.venv_dir]
    assert host.mod.read_history(host.store)["jupyter"]["program"] == {
        "name": "jupyter", "socket": "/run/supervisor.sock", "port": 8888, "timeout": 120}

    again = host.state.live(host.link, "jupyter")
    assert (again["result"], again["changes"]) == (True, {})


def test_an_upgrade_is_checked_then_switched(host):
    old = live_now(host)
    host.make(host.venv_dir)
    ret = host.state.live(host.link, "jupyter")
    assert ret["result"] is True, ret["comment"]
    assert host.checks == [("jupyter", host.venv_dir, host.link)]
    assert ret["changes"] == {"venv": {"old": old, "new": host.venv_dir}}
    assert host.target() == host.venv_dir
    assert "the candidate passed its checks (status 1.0 s, extensions 1.0 s, login 1.0 s, kernel 1.0 s, stop candidate 0.5 s)" in ret["comment"]
    assert [e["venv"] for e in host.mod.read_history(host.store)["jupyter"]["entries"]] == [old, host.venv_dir]


def test_a_failed_check_changes_nothing_and_fails_fast_the_next_time(host):
    old = live_now(host)
    host.make(host.venv_dir)
    host.check_outcome = failed()
    ret = host.state.live(host.link, "jupyter")
    assert ret["result"] is False and ret["changes"] == {}
    assert ret["comment"].startswith(f"Candidate {host.venv_dir} failed the 'extensions' check: server extensions did not load")
    assert f"{host.link} still points at {old}; the running server was not touched." in ret["comment"]
    assert "Last lines of the candidate's log:\n[W ServerApp] bad_ext | extension failed loading" in ret["comment"]
    assert host.target() == old

    again = host.state.live(host.link, "jupyter")
    assert len(host.checks) == 1  # remembered: not checked again
    assert again["result"] is False
    assert "failed the 'extensions' check at 2026-11-30T10:00:00Z" in again["comment"]
    assert "is not checked again until they change" in again["comment"]
    assert host.target() == old

    host.config_file.write_text('{"ServerApp": {"port": 8899}}')  # the config changed
    host.check_outcome = passed()
    assert host.state.live(host.link, "jupyter")["result"] is True and len(host.checks) == 2


def test_a_remembered_failure_fails_in_test_mode_too(tmp_path):
    host = Host(tmp_path)
    live_now(host)
    host.make(host.venv_dir)
    host.check_outcome = failed("kernel", "6*7 gave '41'")
    host.state.live(host.link, "jupyter")
    host.opts["test"] = True
    ret = host.state.live(host.link, "jupyter")
    assert ret["result"] is False and "'kernel' check" in ret["comment"] and len(host.checks) == 1


def test_test_mode_predicts_a_switch_without_checking(tmp_path):
    host = Host(tmp_path, test=True)
    old = live_now(host)
    host.make(host.venv_dir)
    ret = host.state.live(host.link, "jupyter")
    assert ret["result"] is None and ret["changes"] == {"venv": {"old": old, "new": host.venv_dir}}
    assert "would be checked" in ret["comment"] and host.checks == [] and host.target() == old


def test_live_needs_the_venv_built_first(host):
    live_now(host)
    ret = host.state.live(host.link, "jupyter")
    assert ret["result"] is False and "jupyter_venv.built must run before" in ret["comment"]
    host.opts["test"] = True
    assert host.state.live(host.link, "jupyter")["result"] is None


def test_a_rolled_back_venv_is_refused_with_the_way_out(host):
    live_now(host)
    host.make(host.venv_dir)
    host.mod.mark_rolled_back(host.venv_dir, "jupyter", "/x")
    ret = host.state.live(host.link, "jupyter")
    assert ret["result"] is False and host.checks == []
    assert "was rolled back by jupyter.rollback at" in ret["comment"]
    assert f"remove {host.venv_dir}/.jupyter-venv-rolled-back.json to allow it again" in ret["comment"]


def test_a_legacy_venv_directory_is_checked_then_moved_aside(host):
    os.makedirs(os.path.join(host.link, "bin"))
    host.make(host.venv_dir)
    ret = host.state.live(host.link, "jupyter")
    assert ret["result"] is True, ret["comment"]
    assert host.checks == [("jupyter", host.venv_dir, host.link)]
    assert ret["changes"]["venv"] == {"old": f"{host.link} (a venv directory)", "new": host.venv_dir}
    assert "moved to" in ret["changes"]["legacy"] and "not a rollback target" in ret["changes"]["legacy"]
    entries = host.mod.read_history(host.store)["jupyter"]["entries"]
    assert entries[0]["legacy"] is True and entries[-1]["venv"] == host.venv_dir
    assert host.target() == host.venv_dir


def test_a_switch_prunes_beyond_keep_but_not_the_pillars_venvs(host):
    first = live_now(host, "0000000000a1")
    second = os.path.join(host.store, "0000000000a2")
    host.make(second)
    host.mod.switch(host.link, second)
    host.mod.record("jupyter", host.link, second, host.store)
    stray = os.path.join(host.store, "0000000000ff")  # a failed candidate of an older pillar
    host.make(stray)
    host.make(host.venv_dir)
    ret = host.state.live(host.link, "jupyter")
    assert ret["result"] is True
    assert sorted(ret["changes"]["pruned"]) == sorted([first, stray])
    assert os.path.isdir(second) and os.path.isdir(host.venv_dir)


def test_live_refuses_what_is_not_a_link_or_venv(host):
    with open(host.link, "w") as out:
        out.write("a file")
    host.make(host.venv_dir)
    ret = host.state.live(host.link, "jupyter")
    assert ret["result"] is False and "neither a symlink nor a venv directory" in ret["comment"]
    ret = host.state.live(str(host.tmp / "elsewhere"), "jupyter")
    assert ret["result"] is False and "is not the venv link of instance jupyter" in ret["comment"]


def test_a_check_that_cannot_run_fails_cleanly(host):
    old = live_now(host)
    host.make(host.venv_dir)

    def broken(*args, **kwargs):
        raise CommandExecutionError("user 'nobody' does not exist")

    host.funcs["jupyter_venv.check"] = broken
    ret = host.state.live(host.link, "jupyter")
    assert ret["result"] is False and "could not run: user 'nobody' does not exist" in ret["comment"]
    assert host.target() == old


def test_virtual_needs_the_execution_module():
    state = load("_states", "jupyter_venv", salt={})
    assert state.__virtual__() == (False, "the jupyter_venv states need the jupyter_venv execution module (sync _modules)")
    assert load("_states", "jupyter_venv", salt={"jupyter_venv.build": None}).__virtual__() == "jupyter_venv"
