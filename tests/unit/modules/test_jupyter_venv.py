"""
Unit tests of _modules/jupyter_venv.py and _modules/jupyter_history.py: the loader
mocked, subprocesses faked, venvs and links in a temporary directory. No root, seconds.
"""

import json
import os
import stat
import subprocess
import types

import pytest
from salt.exceptions import CommandExecutionError, SaltInvocationError

from support.loader import load

SECRET = "pa55-Word-xyz"
TOKEN_URL = "https://tok3nValue42@token.example/simple/"
INDEX = f"https://deploy:{SECRET}@pkgs.example/simple/"
PIP = {"index_url": INDEX, "extra_index_urls": ["https://a.example/simple/", TOKEN_URL],
       "trusted_hosts": ["a.example", "b.example"], "proxy": f"http://proxyuser:{SECRET}@proxy.example:3128"}
PACKAGES = ["jupyterlab==4.6.6", "jupyterlab-git"]


@pytest.fixture
def mod():
    module = load("_modules", "jupyter_venv", context={"jupyter_venv.python_version:/usr/bin/python3": "3.11"})
    return module


def write_manifest(path, **extra):
    os.makedirs(path, exist_ok=True)
    data = {"venv_id": os.path.basename(path), "python": {"path": "/usr/bin/python3", "version": "3.11"},
            "packages": PACKAGES, "built_at": "2026-01-01T00:00:00Z", **extra}
    with open(os.path.join(path, ".jupyter-venv.json"), "w") as out:
        json.dump(data, out)
    return path


# --- ids and masking ----------------------------------------------------------


def test_venv_id_is_twelve_hex_and_depends_on_what_is_installed(mod):
    ident = mod.venv_id("/usr/bin/python3", PACKAGES, PIP)
    assert len(ident) == 12 and int(ident, 16) >= 0
    assert mod.venv_id("/usr/bin/python3", PACKAGES, PIP) == ident
    assert mod.venv_id("/usr/bin/python3", list(reversed(PACKAGES)), PIP) != ident  # pip installs in order
    assert mod.venv_id("/usr/bin/python3", PACKAGES + ["numpy"], PIP) != ident
    assert mod.venv_id("/usr/bin/python3", PACKAGES, {**PIP, "index_url": "https://other.example/simple/"}) != ident
    assert mod.venv_id("/usr/bin/python3", PACKAGES, {**PIP, "extra_index_urls": []}) != ident
    mod.__context__["jupyter_venv.python_version:/usr/bin/python3"] = "3.12"
    assert mod.venv_id("/usr/bin/python3", PACKAGES, PIP) != ident


def test_venv_id_ignores_credentials_trusted_hosts_and_proxy(mod):
    ident = mod.venv_id("/usr/bin/python3", PACKAGES, PIP)
    rotated = {**PIP, "index_url": INDEX.replace(SECRET, "new-secret"), "trusted_hosts": [], "proxy": None}
    assert mod.venv_id("/usr/bin/python3", PACKAGES, rotated) == ident
    inputs = json.dumps(mod._id_inputs("/usr/bin/python3", "3.11", PACKAGES, PIP))
    assert SECRET not in inputs and "deploy" not in inputs and "tok3nValue42" not in inputs


def test_venv_id_keeps_the_id_built_before_python_existed(mod, tmp_path, monkeypatch):
    """A fresh host: the first render had no python; the second must not rebuild."""
    versions = {"v": None}
    monkeypatch.setattr(mod, "_python_version", lambda python: versions["v"])
    first = mod.venv_id("/usr/bin/python3", PACKAGES, PIP, str(tmp_path))
    write_manifest(str(tmp_path / first))  # built with 3.11 once python was installed
    versions["v"] = "3.11"
    assert mod.venv_id("/usr/bin/python3", PACKAGES, PIP, str(tmp_path)) == first
    versions["v"] = "3.13"  # a python upgrade later: a new venv
    assert mod.venv_id("/usr/bin/python3", PACKAGES, PIP, str(tmp_path)) != first


@pytest.mark.parametrize("bad", [[], "jupyterlab", ["--index-url=https://evil.example/"], ["a\nb"], [""], [3]])
def test_bad_package_lists_are_refused(mod, bad):
    with pytest.raises(SaltInvocationError):
        mod.venv_id("/usr/bin/python3", bad, PIP)


def test_mask_hides_every_credential(mod):
    text = (f"GET {INDEX}jupyterlab/ failed; retry {TOKEN_URL}; proxy {PIP['proxy']}; "
            f"decoded {SECRET}; pip printed https://deploy:****@pkgs.example/")
    masked = mod.mask(text, PIP)
    for secret in (SECRET, "deploy:", "tok3nValue42", "proxyuser"):
        assert secret not in masked
    assert "https://<hidden>@pkgs.example/simple/jupyterlab/" in masked
    assert mod.mask("pip install jupyterlab==4.6.6") == "pip install jupyterlab==4.6.6"
    assert mod.mask("Bearer abc", extra=["abc"]) == "Bearer <hidden>"


def test_requirements_file_has_one_option_per_url_and_host(mod):
    lines = mod._requirements_text(PACKAGES, PIP).splitlines()
    assert lines == [
        f"--index-url {INDEX}",
        "--extra-index-url https://a.example/simple/",
        f"--extra-index-url {TOKEN_URL}",
        "--trusted-host a.example",
        "--trusted-host b.example",
        *PACKAGES,
    ]
    assert mod._requirements_text(["x"], {}).splitlines() == ["x"]


# --- build ------------------------------------------------------------------------


class FakeRun:
    """_run: python -m venv makes bin/, pip reads the requirements file; records all."""

    def __init__(self, pip_rc=0, pip_stderr=""):
        self.calls = []
        self.pip_rc = pip_rc
        self.pip_stderr = pip_stderr

    def __call__(self, cmd, timeout, env=None, input=None, cwd=None, user=None, umask=0o022):
        call = {"cmd": list(cmd), "env": dict(env or {}), "umask": umask}
        if cmd[1:3] == ["-m", "venv"]:
            os.makedirs(os.path.join(cmd[3], "bin"))
        elif cmd[-2:][0] == "-r":
            req = cmd[-1]
            call["requirements"] = open(req).read()
            call["requirements_mode"] = stat.S_IMODE(os.stat(req).st_mode)
            call["manifest_before_pip"] = os.path.exists(os.path.join(os.path.dirname(os.path.dirname(cmd[0])), ".jupyter-venv.json"))
            self.calls.append(call)
            return subprocess.CompletedProcess(cmd, self.pip_rc, "", self.pip_stderr)
        elif "freeze" in cmd:
            self.calls.append(call)
            return subprocess.CompletedProcess(cmd, 0, "jupyterlab==4.6.6\nthing @ https://u:SeCrEt99@vcs.example/x\n", "")
        self.calls.append(call)
        return subprocess.CompletedProcess(cmd, 0, "", "")


def test_build_passes_index_options_in_a_private_file_never_on_the_command_line(mod, tmp_path, monkeypatch):
    fake = FakeRun()
    monkeypatch.setattr(mod, "_run", fake)
    path = str(tmp_path / "store" / "0123456789ab")
    data = mod.build(path, "/usr/bin/python3", PACKAGES, pip=PIP)

    venv_call, pip_call, freeze_call = fake.calls
    assert venv_call["cmd"] == ["/usr/bin/python3", "-m", "venv", path]
    assert pip_call["cmd"][:5] == [f"{path}/bin/python", "-m", "pip", "install", "-r"]
    for call in fake.calls:
        assert not any(SECRET in arg or "pkgs.example" in arg for arg in call["cmd"])
        assert call["umask"] == 0o022
    assert pip_call["requirements"] == mod._requirements_text(PACKAGES, PIP)
    assert pip_call["requirements_mode"] == 0o600
    assert not os.path.exists(pip_call["cmd"][-1])  # removed afterwards
    assert pip_call["env"]["PIP_PROXY"] == PIP["proxy"] and pip_call["env"]["PIP_NO_INPUT"] == "1"
    assert pip_call["manifest_before_pip"] is False  # the manifest comes last

    assert mod.manifest(path) == data
    assert data["packages"] == PACKAGES and data["python"] == {"path": "/usr/bin/python3", "version": "3.11"}
    assert data["pip"]["index_url"] == "https://pkgs.example/simple/"
    stored = open(os.path.join(path, ".jupyter-venv.json")).read()
    assert SECRET not in stored and "tok3nValue42" not in stored and "SeCrEt99" not in stored
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o755


def test_a_failed_pip_removes_the_half_built_venv_and_masks_its_error(mod, tmp_path, monkeypatch):
    stderr = "\n".join(f"line {n}" for n in range(40)) + f"\nERROR: 401 from {INDEX}jupyterlab/ for deploy"
    monkeypatch.setattr(mod, "_run", FakeRun(pip_rc=1, pip_stderr=stderr))
    path = str(tmp_path / "0123456789ab")
    with pytest.raises(CommandExecutionError) as err:
        mod.build(path, "/usr/bin/python3", PACKAGES, pip=PIP)
    message = str(err.value)
    assert "pip install for" in message and "(exit 1)" in message
    assert "ERROR: 401 from https://<hidden>@pkgs.example/simple/jupyterlab/" in message
    assert SECRET not in message and "line 5\n" not in message  # the tail only
    assert not os.path.exists(path)


def test_build_replaces_a_leftover_and_refuses_a_complete_venv(mod, tmp_path, monkeypatch):
    monkeypatch.setattr(mod, "_run", FakeRun())
    path = tmp_path / "0123456789ab"
    (path / "lib").mkdir(parents=True)
    (path / "lib" / "half-written").write_text("x")
    mod.build(str(path), "/usr/bin/python3", PACKAGES)
    assert not (path / "lib" / "half-written").exists()
    with pytest.raises(CommandExecutionError, match="complete venv already"):
        mod.build(str(path), "/usr/bin/python3", PACKAGES)


def test_build_without_python_says_so(mod, tmp_path, monkeypatch):
    monkeypatch.setattr(mod, "_python_version", lambda python: None)
    with pytest.raises(CommandExecutionError, match="python /nonexistent/python3 does not exist"):
        mod.build(str(tmp_path / "v"), "/nonexistent/python3", PACKAGES)


# --- links ------------------------------------------------------------------------


def test_switch_makes_and_replaces_the_link_atomically(mod, tmp_path, monkeypatch):
    store, link = tmp_path / "venvs", str(tmp_path / "venv")
    a, b = write_manifest(str(store / "aaaaaaaaaaaa")), write_manifest(str(store / "bbbbbbbbbbbb"))
    assert mod.link_target(link) == {"kind": "absent", "target": None, "exists": False}
    assert mod.switch(link, a) == {"old": None, "new": a, "legacy": None}
    assert mod.link_target(link) == {"kind": "link", "target": a, "exists": True}

    renames = []
    real_replace = os.replace
    monkeypatch.setattr(mod.os, "replace", lambda src, dst: renames.append((src, dst)) or real_replace(src, dst))
    assert mod.switch(link, b) == {"old": a, "new": b, "legacy": None}
    assert os.readlink(link) == b
    (src, dst), = renames  # one rename of a new symlink over the old one
    assert dst == link and os.path.dirname(src) == os.path.dirname(link)
    assert sorted(os.listdir(tmp_path)) == ["venv", "venvs"]  # no temporary link left


def test_switch_moves_a_legacy_venv_directory_aside(mod, tmp_path):
    store, link = tmp_path / "venvs", tmp_path / "venv"
    (link / "bin").mkdir(parents=True)
    (link / "pyvenv.cfg").write_text("home = /usr/bin\n")
    new = write_manifest(str(store / "aaaaaaaaaaaa"))
    result = mod.switch(str(link), new)
    legacy = result["legacy"]
    assert os.path.dirname(legacy) == str(store) and os.path.basename(legacy).startswith("legacy-")
    assert result["old"] == legacy and os.readlink(link) == new
    assert os.path.exists(os.path.join(legacy, "pyvenv.cfg"))
    assert mod.manifest(legacy)["legacy"] is True and mod.manifest(legacy)["moved_from"] == str(link)
    with pytest.raises(CommandExecutionError, match="cannot be switched to"):
        mod.switch(str(link), legacy)


def test_switch_refuses_what_it_must_not_replace(mod, tmp_path):
    link = tmp_path / "venv"
    link.write_text("a file")
    new = write_manifest(str(tmp_path / "venvs" / "aaaaaaaaaaaa"))
    with pytest.raises(CommandExecutionError, match="neither a symlink nor a venv directory"):
        mod.switch(str(link), new)
    (tmp_path / "venvs" / "bbbbbbbbbbbb").mkdir()
    with pytest.raises(CommandExecutionError, match="not a complete venv"):
        mod.switch(str(tmp_path / "other"), str(tmp_path / "venvs" / "bbbbbbbbbbbb"))


# --- history, markers, pruning -------------------------------------------------------


def test_history_records_in_order_and_keeps_it_root_only(mod, tmp_path):
    store = str(tmp_path / "venvs")
    a, b = f"{store}/aaaaaaaaaaaa", f"{store}/bbbbbbbbbbbb"
    mod.record("jupyter", "/opt/jupyter/venv", a, store, legacy=f"{store}/legacy-1",
               program={"name": "jupyter", "socket": "/run/s.sock", "port": 8888, "timeout": 180})
    mod.record("jupyter", "/opt/jupyter/venv", b, store)
    mod.record("jupyter", "/opt/jupyter/venv", a, store, by="jupyter.rollback")
    data = mod.read_history(store)["jupyter"]
    assert [(e["venv"], e["by"]) for e in data["entries"]] == [
        (f"{store}/legacy-1", "formula before venv history"), (b, "apply"), (a, "jupyter.rollback")]
    assert data["entries"][0]["legacy"] is True and "can not be rolled back to" in data["entries"][0]["note"]
    assert data["program"]["port"] == 8888 and data["link"] == "/opt/jupyter/venv"
    assert stat.S_IMODE(os.stat(f"{store}/.history").st_mode) == 0o700
    assert stat.S_IMODE(os.stat(f"{store}/.history/jupyter.json").st_mode) == 0o600
    assert mod.read_history(store, "other") == {}


def test_rolled_back_marker_says_how_to_allow_the_venv_again(mod, tmp_path):
    venv = write_manifest(str(tmp_path / "aaaaaaaaaaaa"))
    assert mod.rolled_back(venv) is None
    mod.mark_rolled_back(venv, "alice", "/x/bbbbbbbbbbbb")
    message = mod.rolled_back(venv)
    assert message.startswith(f"{venv} was rolled back by jupyter.rollback at 20")
    assert message.endswith(f"change packages in pillar, or remove {venv}/.jupyter-venv-rolled-back.json to allow it again")


def test_prune_keeps_what_anything_still_references(mod, tmp_path):
    store = tmp_path / "venvs"
    conf_d = tmp_path / "conf.d"
    conf_d.mkdir()
    names = ["a00000000001", "a00000000002", "a00000000003", "b00000000001", "c00000000001",
             "d00000000001", "e00000000001"]
    paths = {n: write_manifest(str(store / n)) for n in names}
    legacy = store / "legacy-20260101T000000"
    legacy.mkdir()
    (store / "notes").mkdir()  # not a venv of ours: never touched
    link_a, link_b = tmp_path / "venv-a", tmp_path / "venv-b"
    mod.record("alice", str(link_a), str(legacy), str(store))
    for n in ("a00000000001", "a00000000002", "a00000000003"):
        mod.record("alice", str(link_a), paths[n], str(store))
    os.symlink(paths["a00000000003"], link_a)
    mod.record("bob", str(link_b), paths["a00000000001"], str(store))  # bob still lists a...1
    mod.record("bob", str(link_b), paths["b00000000001"], str(store))
    os.symlink(paths["b00000000001"], link_b)
    (conf_d / "old.conf").write_text(f"[program:old]\ncommand={paths['c00000000001']}/bin/jupyter-lab\n")

    removed = mod.prune(str(store), keep=2, protect=[paths["d00000000001"]], conf_dirs=[str(conf_d)])

    assert sorted(removed) == sorted([str(legacy), paths["e00000000001"]])
    assert [e["venv"] for e in mod.read_history(str(store))["alice"]["entries"]] == [
        paths["a00000000002"], paths["a00000000003"]]
    for n in ("a00000000001", "a00000000002", "a00000000003", "b00000000001", "c00000000001", "d00000000001"):
        assert os.path.isdir(paths[n]), n
    assert (store / "notes").is_dir()
    with pytest.raises(SaltInvocationError, match="keep must be an integer of at least 1"):
        mod.prune(str(store), keep=0)


def test_prune_never_removes_the_live_venv_even_beyond_keep(mod, tmp_path):
    store = tmp_path / "venvs"
    a, b, c = (write_manifest(str(store / n)) for n in ("a00000000001", "a00000000002", "a00000000003"))
    link = tmp_path / "venv"
    for path in (a, b, c):
        mod.record("alice", str(link), path, str(store))
    os.symlink(a, link)  # switched back by hand to the oldest
    mod.prune(str(store), keep=1)
    assert os.path.isdir(a) and os.path.isdir(c) and not os.path.exists(b)
    assert [e["venv"] for e in mod.read_history(str(store))["alice"]["entries"]] == [a, c]


# --- the candidate check ------------------------------------------------------------


def test_candidate_config_takes_the_token_out_and_moves_to_loopback(mod):
    config = {
        "ServerApp": {"ip": "0.0.0.0", "port": 8888, "base_url": "/nb/", "token": "x", "sock": "/run/j.sock",
                      "certfile": "/c.pem", "keyfile": "/k.pem", "log_level": "WARN", "root_dir": "/srv/j"},
        "IdentityProvider": {"token": ""},
        "PasswordIdentityProvider": {"hashed_password": "argon2:$argon2id$...", "token": "y"},
        "MappingKernelManager": {"cull_idle_timeout": 3600},
    }
    out = mod._candidate_config(config, 45678)
    server = out["ServerApp"]
    assert (server["ip"], server["port"], server["port_retries"], server["log_level"]) == ("127.0.0.1", 45678, 0, "INFO")
    for cls in ("ServerApp", "IdentityProvider", "PasswordIdentityProvider"):
        assert "token" not in out[cls]
    assert not {"sock", "certfile", "keyfile"} & set(server)
    assert server["base_url"] == "/nb/" and server["root_dir"] == "/srv/j"
    assert out["PasswordIdentityProvider"]["hashed_password"] == "argon2:$argon2id$..."
    assert out["MappingKernelManager"] == {"cull_idle_timeout": 3600}
    assert config["ServerApp"]["port"] == 8888  # the original is untouched


def test_candidate_env_runs_the_candidate_not_the_link(mod):
    inst = {"venv": "/opt/jupyter/venv", "environment": {"PATH": "/opt/jupyter/venv/bin:/usr/bin:/bin", "HOME": "/home/j"}}
    env = mod._candidate_env(inst, "/opt/jupyter/venvs/abc", {"JUPYTER_TOKEN": "t"})
    assert env == {"PATH": "/opt/jupyter/venvs/abc/bin:/usr/bin:/bin", "HOME": "/home/j", "JUPYTER_TOKEN": "t"}


LOG = """\
[I 2026-11-30 19:31:17.789 ServerApp] jfv_bad_ext | extension was successfully linked.
[I 2026-11-30 19:31:17.826 ServerApp] notebook_shim | extension was successfully loaded.
[W 2026-11-30 19:31:17.826 ServerApp] jfv_bad_ext | extension failed loading with message: RuntimeError('boom')
    Traceback (most recent call last):
[W 2026-11-30 19:31:17.826 ServerApp] missing_ext | error adding extension (enabled: True): No module named 'missing_ext'
[I 2026-11-30 19:31:17.857 ServerApp] jupyterlab | extension was successfully loaded.
"""


def test_extension_problems_come_from_the_servers_log(mod):
    assert mod._extension_problems(LOG, ["jupyterlab", "notebook_shim"]) == []
    problems = mod._extension_problems(LOG, ["jupyterlab", "jfv_bad_ext", "missing_ext", "silent_ext", "lab"])
    assert problems == [
        "jfv_bad_ext: jfv_bad_ext | extension failed loading with message: RuntimeError('boom')",
        "missing_ext: missing_ext | error adding extension (enabled: True): No module named 'missing_ext'",
        "silent_ext: not loaded (no 'extension was successfully loaded' line)",
        "lab: not loaded (no 'extension was successfully loaded' line)",  # not fooled by 'jupyterlab'
    ]


def test_expected_extensions_are_the_candidates_and_the_old_ones_it_still_has(mod, tmp_path, monkeypatch):
    old = tmp_path / "old"
    old.mkdir()
    listed = {
        str(old): ({"jupyterlab": True, "kept_ext": True, "gone_ext": True, "off_now": True, "was_off": False}, {}),
        "/new": ({"jupyterlab": True, "new_ext": True, "off_now": False},
                 {"kept_ext": True, "gone_ext": False, "jupyterlab": True, "off_now": True}),
    }
    seen = []

    def fake_list(inst, venv, user, overrides, names, timeout):
        seen.append((venv, sorted(names)))
        return listed[venv]

    monkeypatch.setattr(mod, "_list_extensions", fake_list)
    expected, dropped = mod._expected_extensions({}, "/new", str(old), None, {}, 10)
    assert expected == ["jupyterlab", "kept_ext", "new_ext"]
    assert dropped == ["gone_ext"]
    assert seen[1] == ("/new", ["gone_ext", "jupyterlab", "kept_ext", "off_now"])


class FakeProc:
    pid = 4242
    returncode = None

    def poll(self):
        return None


def test_the_one_time_token_travels_in_the_environment_only(mod, tmp_path, monkeypatch):
    venv = tmp_path / "venvs" / "aaaaaaaaaaaa"
    (venv / "bin").mkdir(parents=True)
    binary = venv / "bin" / "jupyter-lab"
    binary.write_text("#!/bin/sh\n")
    binary.chmod(0o755)
    config_file = tmp_path / "jupyter.json"
    config_file.write_text(json.dumps({"ServerApp": {"port": 8888, "base_url": "/nb"}, "IdentityProvider": {"token": ""}}))
    inst = {"user": "nobody", "venv": str(tmp_path / "venv"), "app": "lab", "config_file": str(config_file),
            "root_dir": str(tmp_path), "environment": {"PATH": f"{tmp_path}/venv/bin:/usr/bin", "HOME": "/h"},
            "server": {"base_url": "/nb/"}}
    seen = {}

    def fake_popen(args, **kwargs):
        config_path = args[-1].split("=", 1)[1]
        seen.update(args=args, kwargs=kwargs, config=json.loads(open(config_path).read()),
                    config_mode=stat.S_IMODE(os.stat(config_path).st_mode),
                    tmp_mode=stat.S_IMODE(os.stat(os.path.dirname(config_path)).st_mode))
        with open(os.path.join(os.path.dirname(config_path), "server.log"), "a") as log:
            log.write(f"[I ServerApp] http://127.0.0.1/nb/lab?token={kwargs['env']['JUPYTER_TOKEN']}\n")
        return FakeProc()

    def fake_checks(factory):
        coro = factory()
        seen["base"] = coro.cr_frame.f_locals["base"]
        coro.close()

    monkeypatch.setattr(mod.subprocess, "Popen", fake_popen)
    monkeypatch.setattr(mod, "_in_thread", fake_checks)
    monkeypatch.setattr(mod, "_user_of", lambda inst: (os.getuid(), os.getgid(), []))
    monkeypatch.setattr(mod.os, "chown", lambda *a: None)
    monkeypatch.setattr(mod.os, "fchown", lambda *a: None)
    monkeypatch.setattr(mod, "_expected_extensions", lambda *a: (["jupyterlab"], []))
    monkeypatch.setattr(mod, "_stop_candidate", lambda proc: seen.setdefault("stopped", proc.pid))

    outcome = mod._check(inst, str(venv), inst["venv"], 30)

    token = seen["kwargs"]["env"]["JUPYTER_TOKEN"]
    assert len(token) >= 32
    assert not any(token in arg for arg in seen["args"])
    assert seen["args"][:2] == [str(binary), "--no-browser"]
    assert seen["kwargs"]["env"]["PATH"] == f"{venv}/bin:/usr/bin"
    assert seen["kwargs"]["start_new_session"] is True and seen["kwargs"]["cwd"] == str(tmp_path)
    assert seen["config"]["ServerApp"]["ip"] == "127.0.0.1" and "token" not in seen["config"]["IdentityProvider"]
    assert (seen["config_mode"], seen["tmp_mode"]) == (0o600, 0o700)
    port = seen["config"]["ServerApp"]["port"]
    assert seen["base"] == f"http://127.0.0.1:{port}/nb/"
    assert seen["stopped"] == 4242
    assert outcome["result"] is True
    assert token not in outcome["log_tail"] and "token=<hidden>" in outcome["log_tail"]
    assert not os.path.exists(os.path.dirname(seen["args"][-1].split("=", 1)[1]))  # temp dir removed


def test_a_failed_check_is_remembered_until_the_config_changes(mod, tmp_path, monkeypatch):
    config_file = tmp_path / "jupyter.json"
    config_file.write_text('{"ServerApp": {"port": 8888}}')
    venv = write_manifest(str(tmp_path / "venvs" / "aaaaaaaaaaaa"))
    inst = {"user": "nobody", "group": "nogroup", "venv": str(tmp_path / "venv"), "venv_dir": venv,
            "config_file": str(config_file), "app": "lab", "root_dir": "/srv", "environment": {}, "server": {}}
    mod.__salt__["jupyter.settings"] = lambda reveal_secrets=False: {"instances": {"jupyter": inst}}
    outcomes = [
        {"result": False, "failed": "kernel", "checks": {"kernel": {"result": False, "seconds": 1, "comment": "6*7 gave '41'"}},
         "log_tail": "tail", "dropped_extensions": [], "overhead": {}, "seconds": 3},
        {"result": True, "failed": None, "checks": {}, "log_tail": "", "dropped_extensions": [], "overhead": {}, "seconds": 3},
    ]
    calls = []
    monkeypatch.setattr(mod, "_check", lambda inst, venv, old, timeout: calls.append(timeout) or outcomes[len(calls) - 1])

    first = mod.check("jupyter", venv)
    assert (first["result"], first["failed"], first["remembered"]) == (False, "kernel", False)
    assert calls == [180]  # upgrade:timeout's default
    again = mod.check("jupyter", venv)
    assert (again["result"], again["failed"], again["remembered"], len(calls)) == (False, "kernel", True, 1)
    assert again["checks"]["kernel"]["comment"] == "6*7 gave '41'" and again["log_tail"] == "tail"
    assert mod.failed_check("jupyter", venv)["check"] == "kernel"

    config_file.write_text('{"ServerApp": {"port": 8889}}')  # the config changed: check again
    assert mod.failed_check("jupyter", venv) is None
    assert mod.check("jupyter", venv)["result"] is True and len(calls) == 2
    assert not os.path.exists(os.path.join(venv, ".jupyter-venv-check-failed.json"))


# --- jupyter.history and jupyter.rollback ---------------------------------------------


VENV_FUNCTIONS = ("manifest", "link_target", "switch", "read_history", "record", "mark_rolled_back", "rolled_back")


@pytest.fixture
def admin(tmp_path):
    """jupyter_history over the real jupyter_venv functions, supervisor faked."""
    venv_mod = load("_modules", "jupyter_venv")
    restarts = []
    store = tmp_path / "venvs"
    link = tmp_path / "venv"
    inst = {"venv": str(link), "program": "jupyter", "supervisor": {"socket": "/run/s.sock"},
            "server": {"port": 8888}, "upgrade": {"timeout": 90}}
    settings = {"venv_store": str(store), "upgrade": {"keep": 2, "timeout": 90}, "instances": {"jupyter": inst}}
    funcs = {f"jupyter_venv.{n}": getattr(venv_mod, n) for n in VENV_FUNCTIONS}
    funcs["jupyter.settings"] = lambda reveal_secrets=False, require_password=True: settings
    funcs["supervisor_rpc.restart"] = lambda name, **kw: restarts.append((name, kw)) or {name: {"new": {"state": "RUNNING"}}}
    history = load("_modules", "jupyter_history", salt=funcs)
    return types.SimpleNamespace(mod=history, venv=venv_mod, store=store, link=link, restarts=restarts,
                                 settings=settings, funcs=funcs)


def live_on(admin, *names):
    paths = [write_manifest(str(admin.store / n)) for n in names]
    for path in paths:
        admin.venv.switch(str(admin.link), path)
        admin.venv.record("jupyter", str(admin.link), path, str(admin.store))
    return paths


def test_history_lists_the_venvs_their_packages_and_the_live_one(admin):
    a, b = live_on(admin, "aaaaaaaaaaaa", "bbbbbbbbbbbb")
    listed = admin.mod.history()
    assert list(listed) == ["jupyter"]
    entry = listed["jupyter"]
    assert (entry["link"], entry["live"], entry["program"]) == (str(admin.link), b, "jupyter")
    assert [(v["venv"], v["live"], v["packages"], v["python"]) for v in entry["venvs"]] == [
        (a, False, PACKAGES, "3.11"), (b, True, PACKAGES, "3.11")]
    assert "installed" not in entry["venvs"][0]
    assert "installed" in admin.mod.history(full=True)["jupyter"]["venvs"][0]
    with pytest.raises(SaltInvocationError, match="no instance named 'nobody'"):
        admin.mod.history(instance="nobody")


def test_rollback_switches_back_marks_and_restarts_once(admin):
    a, b = live_on(admin, "aaaaaaaaaaaa", "bbbbbbbbbbbb")
    result = admin.mod.rollback()
    assert result["jupyter"]["old"] == b and result["jupyter"]["new"] == a
    assert os.readlink(admin.link) == a
    assert admin.restarts == [("jupyter", {"timeout": 90, "socket": "/run/s.sock", "ready_port": 8888})]
    assert "rolled back by jupyter.rollback" in admin.venv.rolled_back(b)
    entries = admin.venv.read_history(str(admin.store))["jupyter"]["entries"]
    assert [(e["venv"], e["by"]) for e in entries] == [(b, "apply"), (a, "jupyter.rollback")]
    # b is marked: nothing to go back to now
    with pytest.raises(CommandExecutionError, match="no earlier venv to roll back to"):
        admin.mod.rollback(instance="jupyter")
    assert len(admin.restarts) == 1


def test_rollback_skips_legacy_and_missing_venvs(admin):
    legacy = admin.store / "legacy-20260101T000000"
    write_manifest(str(legacy), legacy=True)
    admin.venv.record("jupyter", str(admin.link), str(legacy), str(admin.store))
    gone = str(admin.store / "cccccccccccc")
    admin.venv.record("jupyter", str(admin.link), gone, str(admin.store))
    live_on(admin, "aaaaaaaaaaaa")
    with pytest.raises(CommandExecutionError, match="no earlier venv"):
        admin.mod.rollback(instance="jupyter")
    assert os.readlink(admin.link).endswith("aaaaaaaaaaaa") and admin.restarts == []


def test_rollback_works_from_the_history_when_the_pillar_is_broken(admin):
    a, b = live_on(admin, "aaaaaaaaaaaa", "bbbbbbbbbbbb")
    admin.venv.record("jupyter", str(admin.link), b, str(admin.store),
                      program={"name": "jupyter", "socket": "/run/s.sock", "port": 8888, "timeout": 60})

    def broken(reveal_secrets=False, require_password=True):
        raise SaltInvocationError("Invalid pillar: jupyter:server:port")

    admin.funcs["jupyter.settings"] = broken
    admin.mod.rollback(venv_store=str(admin.store))
    assert os.readlink(admin.link) == a
    assert admin.restarts == [("jupyter", {"timeout": 60, "socket": "/run/s.sock", "ready_port": 8888})]


def test_rollback_reports_a_failed_restart(admin):
    live_on(admin, "aaaaaaaaaaaa", "bbbbbbbbbbbb")

    def down(name, **kw):
        raise CommandExecutionError("supervisord is not reachable on its socket /run/s.sock")

    admin.funcs["supervisor_rpc.restart"] = down
    with pytest.raises(CommandExecutionError, match="points at .*aaaaaaaaaaaa again, but restarting jupyter failed"):
        admin.mod.rollback()


def test_history_virtual_never_hides_the_jupyter_module(admin):
    # (False, reason) would make the loader mark the virtualname 'jupyter' missing
    assert admin.mod.__virtual__() == "jupyter"


def test_a_candidate_without_its_app_fails_the_status_check(mod, tmp_path, monkeypatch):
    venv = tmp_path / "venvs" / "aaaaaaaaaaaa"
    (venv / "bin").mkdir(parents=True)  # no jupyter-lab: jupyterlab left out of packages
    config_file = tmp_path / "jupyter.json"
    config_file.write_text("{}")
    inst = {"user": "nobody", "venv": str(tmp_path / "venv"), "app": "lab", "config_file": str(config_file),
            "root_dir": str(tmp_path), "environment": {}}
    monkeypatch.setattr(mod, "_user_of", lambda inst: (os.getuid(), os.getgid(), []))
    monkeypatch.setattr(mod.os, "chown", lambda *a: None)
    monkeypatch.setattr(mod.os, "fchown", lambda *a: None)
    monkeypatch.setattr(mod, "_expected_extensions", lambda *a: ([], []))
    monkeypatch.setattr(mod.subprocess, "Popen", lambda *a, **k: pytest.fail("nothing may start"))
    outcome = mod._check(inst, str(venv), inst["venv"], 30)
    assert (outcome["result"], outcome["failed"]) == (False, "status")
    assert outcome["checks"]["status"]["comment"] == f"{venv}/bin/jupyter-lab does not exist (is the app's package in packages?)"


def test_a_candidate_that_dies_fails_the_status_check_at_once(mod, tmp_path):
    import asyncio
    import time as _time

    class Dead:
        returncode = 1

        def poll(self):
            return 1

    results = {}
    started = _time.monotonic()
    with pytest.raises(mod._CheckFailed) as err:
        asyncio.run(mod._http_checks("http://127.0.0.1:9/", "t", _time.monotonic() + 30, Dead(),
                                     str(tmp_path / "log"), [], results))
    assert err.value.check == "status" and "exited with code 1 before it answered" in err.value.comment
    assert results["status"]["result"] is False and _time.monotonic() - started < 5
