"""jupyter_account: accounts the formula creates are recorded at once; accounts it did not
create are used as they are (never given a home, shell or group), and never removed."""

import json
import os
import pwd

import pytest

from support.loader import load

ROOT = pwd.getpwuid(0).pw_name


class UserStates:
    """user.present / user.absent stand-ins that remember their calls."""

    def __init__(self, result=True):
        self.calls = []
        self.result = result

    def present(self, **kwargs):
        self.calls.append(("present", kwargs))
        return {"name": kwargs["name"], "result": self.result, "changes": {"name": kwargs["name"]}, "comment": "made"}

    def absent(self, **kwargs):
        self.calls.append(("absent", kwargs))
        return {"name": kwargs["name"], "result": True, "changes": {kwargs["name"]: "removed"}, "comment": "gone"}


def state(users, test=False):
    return load("_states", "jupyter_account", states={"user.present": users.present, "user.absent": users.absent},
                opts={"test": test})


def test_a_new_account_is_created_and_recorded(tmp_path):
    users, record = UserStates(), tmp_path / "state" / "accounts.json"
    home = tmp_path / "home"
    home.mkdir(mode=0o755)
    ret = state(users).present("jupyter-unit-nobody-here", str(home), "/bin/bash", str(record))
    assert ret["result"] is True
    ((fun, kwargs),) = users.calls
    assert fun == "present" and kwargs["system"] is True and kwargs["usergroup"] is True
    assert json.loads(record.read_text()) == ["jupyter-unit-nobody-here"]
    assert oct(os.stat(record).st_mode & 0o777) == "0o600"
    assert oct(os.stat(record.parent).st_mode & 0o777) == "0o700"
    assert os.stat(home).st_mode & 0o777 == 0o750 and ret["changes"]["home_mode"] == "0750"


def test_an_existing_account_the_formula_did_not_create_is_left_as_it_is(tmp_path):
    users = UserStates()
    ret = state(users).present(ROOT, "/elsewhere", "/bin/sh", str(tmp_path / "accounts.json"))
    assert ret["result"] is True and ret["changes"] == {}
    assert users.calls == []  # no user.present: home and shell untouched
    assert "used as it is" in ret["comment"]


def test_an_account_made_by_an_earlier_version_is_adopted(tmp_path):
    users, record = UserStates(), tmp_path / "accounts.json"
    config = tmp_path / "jupyter.json"
    config.write_text("{}")
    os.chown(config, 0, pwd.getpwnam(ROOT).pw_gid)  # the group of the config file it wrote
    ret = state(users).present(ROOT, "/root", "/bin/bash", str(record), config_file=str(config))
    assert json.loads(record.read_text()) == [ROOT]
    assert ret["result"] is True and users.calls and users.calls[0][0] == "present"


def test_a_failed_creation_is_not_recorded(tmp_path):
    users, record = UserStates(result=False), tmp_path / "accounts.json"
    ret = state(users).present("jupyter-unit-nobody-here", "/home/x", "/bin/bash", str(record))
    assert ret["result"] is False and not record.exists()


@pytest.mark.parametrize("recorded,removed", [(["x-made"], True), ([], False)])  # noqa: PT006
def test_absent_removes_only_recorded_accounts(tmp_path, recorded, removed):
    users, record = UserStates(), tmp_path / "accounts.json"
    record.write_text(json.dumps(recorded))
    ret = state(users).absent("x-made", str(record))
    assert bool(users.calls) is removed
    # the one recorded account gone: nothing left to remember, no file
    assert not record.exists() if removed else json.loads(record.read_text()) == []
    assert ret["result"] is True
