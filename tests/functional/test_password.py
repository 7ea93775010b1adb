"""
Password hashing against the real jupyter_server (a virtualenv the test builds once
and caches), and the config/password state on a real file.
"""

import functools
import grp
import json
import os
import pwd
import stat
import subprocess
import venv
from pathlib import Path

import pytest

from support.loader import load

JUPYTER_SERVER = "jupyter_server==2.21.1"
CACHE = Path("/var/cache/jupyter-formula-tests/venv-jupyter-server")
PASSWORD = "Tr0ub4dor&3-functional"


@pytest.fixture(scope="module")
def jupyter_python():
    """A virtualenv with jupyter_server, built on first use and reused."""
    python = CACHE / "bin" / "python"
    stamp = CACHE / "stamp"
    if not stamp.exists() or stamp.read_text() != JUPYTER_SERVER:
        venv.create(CACHE, clear=True, with_pip=True)
        subprocess.run([str(python), "-m", "pip", "install", "-q", JUPYTER_SERVER], check=True)
        stamp.write_text(JUPYTER_SERVER)
    return str(python)


def jupyter_server_says(python, script, payload):
    """Run code in the jupyter_server venv, the payload (with secrets) on stdin."""
    proc = subprocess.run(
        [python, "-c", "import json,sys\nfrom jupyter_server.auth import passwd, passwd_check\n"
         "req=json.load(sys.stdin)\n" + script],
        input=json.dumps(payload), capture_output=True, text=True, check=True,
    )
    return json.loads(proc.stdout)


@pytest.fixture(params=["salt python", "venv python"])
def module(request, jupyter_python, monkeypatch):
    """The module with argon2 in Salt's Python, and with the venv fallback forced (the
    formula passes the venv's Python)."""
    mod = load("_modules", "jupyter_password")
    if request.param == "venv python":
        monkeypatch.setattr(mod, "_have_argon2", lambda: False)
        monkeypatch.setattr(mod, "hash_password", functools.partial(mod.hash_password, python=jupyter_python))
        monkeypatch.setattr(mod, "check_password", functools.partial(mod.check_password, python=jupyter_python))
    else:
        pytest.importorskip("argon2")
    return mod


def test_our_hash_verifies_with_jupyter_server(module, jupyter_python):
    hashed = module.hash_password(PASSWORD)
    assert hashed.startswith("argon2:$argon2id$v=19$m=10240,t=10,p=8$")
    check = "json.dump([passwd_check(req['h'], req['p']), passwd_check(req['h'], 'wrong')], sys.stdout)"
    assert jupyter_server_says(jupyter_python, check, {"h": hashed, "p": PASSWORD}) == [True, False]


def test_our_check_agrees_with_jupyter_server_hashes(module, jupyter_python):
    made = jupyter_server_says(
        jupyter_python,
        "json.dump([passwd(req['p']), passwd(req['p'], 'sha1'), passwd(req['p'], 'sha256')], sys.stdout)",
        {"p": PASSWORD},
    )
    for hashed in made:
        assert module.check_password(hashed, PASSWORD) is True
        assert module.check_password(hashed, PASSWORD + "x") is False


@pytest.mark.parametrize(
    "hashed",
    ["", "argon2:", "argon2:$argon2id$v=19$garbage", "sha1", "sha1:salt", "nosuchalgo:ab:cd", "sha1:ab:"],
)
def test_malformed_hashes_give_false(module, hashed, jupyter_python):
    assert module.check_password(hashed, PASSWORD) is False
    # jupyter_server itself answers False, or raises (argon2's InvalidHashError for "argon2:")
    check = (
        "try:\n    r = passwd_check(req['h'], req['p'])\n"
        "except Exception as e:\n    r = type(e).__name__\njson.dump(r, sys.stdout)"
    )
    assert jupyter_server_says(jupyter_python, check, {"h": hashed, "p": PASSWORD}) in (False, "InvalidHashError")


def test_no_plaintext_on_the_helper_command_line(module, monkeypatch, jupyter_python):
    """The venv helper gets the password on stdin, never in argv; it runs isolated (-I)
    from / so that nothing of the caller's directory can shadow a module."""
    monkeypatch.setattr(module, "_have_argon2", lambda: False)
    seen = []
    real_run = subprocess.run

    def spy(args, **kwargs):
        seen.append((list(args), kwargs.get("input", ""), kwargs.get("cwd")))
        return real_run(args, **kwargs)

    monkeypatch.setattr(module.subprocess, "run", spy)
    module.hash_password(PASSWORD, python=jupyter_python)
    (argv, stdin, cwd), = seen
    assert PASSWORD not in " ".join(argv) and PASSWORD in stdin
    assert argv[1] == "-I" and cwd == "/"


# --- the state ------------------------------------------------------------------


def config_state(tmp_path, pillar, test=False):
    module = load("_modules", "jupyter_password")
    state = load(
        "_states",
        "jupyter_config",
        salt={
            "jupyter.hash_password": module.hash_password,
            "jupyter.check_password": module.check_password,
            # the instance's secrets, as jupyter.settings(reveal_secrets=True) gives them
            "jupyter.settings": lambda reveal_secrets=False: {"instances": {"jupyter": pillar}},
        },
        opts={"test": test},
    )
    path = str(tmp_path / "jupyter_server_config.json")
    user, group = pwd.getpwuid(os.getuid()).pw_name, grp.getgrgid(os.getgid()).gr_name
    return lambda **kw: state.managed(
        path, config={"ServerApp": {"port": 8888}, **kw.pop("config", {})},
        python=str(CACHE / "bin" / "python"), user=user, group=group, **kw
    ), path


def test_state_keeps_the_hash_and_file_byte_for_byte(tmp_path, jupyter_python):
    apply, path = config_state(tmp_path, {"password": PASSWORD})
    first = apply()
    assert first["result"] is True and first["changes"]["password"] == "set"
    before = Path(path).read_bytes()
    again = apply()
    assert again["result"] is True and again["changes"] == {}
    assert Path(path).read_bytes() == before
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o640
    hashed = json.loads(before)["PasswordIdentityProvider"]["hashed_password"]
    check = "json.dump(passwd_check(req['h'], req['p']), sys.stdout)"
    assert jupyter_server_says(jupyter_python, check, {"h": hashed, "p": PASSWORD}) is True
    for ret in (first, again):
        text = repr(ret)
        assert PASSWORD not in text and hashed not in text and "argon2" not in text


def test_state_new_password_new_hash_and_test_mode(tmp_path):
    apply, path = config_state(tmp_path, {"password": PASSWORD})
    apply()
    before = Path(path).read_bytes()
    predict, _ = config_state(tmp_path, {"password": PASSWORD + "-new"}, test=True)
    predicted = predict()
    assert predicted["result"] is None and predicted["changes"]["password"] == "new hash"
    assert Path(path).read_bytes() == before
    change, _ = config_state(tmp_path, {"password": PASSWORD + "-new"})
    changed = change()
    assert changed["changes"] == {"password": "new hash"}
    assert Path(path).read_bytes() != before
    assert PASSWORD not in repr(changed)


def test_state_takes_a_given_hash_as_is_and_reports_setting_changes(tmp_path):
    given = "argon2:$argon2id$v=19$m=10240,t=10,p=8$c2FsdHNhbHQ$aGFzaGhhc2hoYXNo"
    apply, path = config_state(tmp_path, {"hashed_password": given})
    apply()
    assert json.loads(Path(path).read_text())["PasswordIdentityProvider"]["hashed_password"] == given
    ret = apply(config={"ServerApp": {"port": 8888, "root_dir": "/srv/x"}})
    assert ret["changes"] == {"settings": ["ServerApp.root_dir"]}
