"""jupyter.settings, the one settings pipeline (merge, validate, derive, cache), with the
loader mocked and the real validator (without host facts)."""

import datetime
import json

import yaml

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from salt.exceptions import SaltInvocationError

from support.loader import settings_module

GOOD = {"password": "correct horse battery"}


def tls_pair():
    """A real self-signed certificate and its key (the validator reads them)."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "nb.example.org")])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (
        x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
        .serial_number(x509.random_serial_number()).not_valid_before(now)
        .not_valid_after(now + datetime.timedelta(days=30)).sign(key, hashes.SHA256())
    )
    key_pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    return cert.public_bytes(serialization.Encoding.PEM).decode(), key_pem.decode()


def settings(pillar, os_family="Debian", context=None, **kwargs):
    return loaded(pillar, os_family, context).settings(**kwargs)


def loaded(pillar, os_family="Debian", context=None, calls=None):
    """The jupyter module with the real validator; calls (a list) records each
    check_layer call, that is each run of the pipeline."""
    module = settings_module(pillar, os_family, context)
    if calls is not None:
        real = module.__salt__["jupyter_pillar.check_layer"]
        module.__salt__["jupyter_pillar.check_layer"] = lambda *a: calls.append(a) or real(*a)
    return module


def test_defaults_are_filled_in_and_secrets_hidden():
    s = settings(GOOD)
    assert s["server"] == {"ip": "127.0.0.1", "port": 8888, "base_url": "/", "expose": False}
    assert s["user"] == "jupyter" and s["group"] == "jupyter" and s["home"] == "/home/jupyter"
    assert s["supervisor"]["conf_dir"] == "/etc/supervisor/conf.d"
    assert s["nginx"]["sites_enabled"] == "/etc/nginx/sites-enabled"
    assert s["password"] == "<hidden>" and s["password_source"] == "password"
    assert s["jupyter_bin"] == "/opt/jupyter/venv/bin/jupyter-lab"
    assert s["config_file"] == "/etc/jupyter-server/jupyter.json"
    assert "correct horse" not in repr(s)


def test_redhat_paths():
    s = settings(GOOD, os_family="RedHat")
    assert s["supervisor"]["conf_dir"] == "/etc/supervisord.d"
    assert s["supervisor"]["conf_ext"] == ".ini"
    assert s["supervisor"]["service"] == "supervisord"
    assert s["nginx"]["sites_available"] == "/etc/nginx/conf.d"
    assert s["nginx"]["sites_enabled"] is None


def test_pillar_overrides_and_scalar_server_name():
    s = settings({**GOOD, "server": {"port": 9999}, "nginx": {"server_name": "nb.example.org"}})
    assert s["server"]["port"] == 9999 and s["server"]["ip"] == "127.0.0.1"
    assert s["nginx"]["server_name"] == ["nb.example.org"]


def test_tls_contents_get_default_paths_and_key_is_hidden():
    cert, key = tls_pair()
    tls = {"certificate_pem": cert, "certificate_key_pem": key}
    s = settings({**GOOD, "nginx": {"tls": tls}})
    assert s["nginx"]["tls"]["certificate"] == "/etc/ssl/jupyter/jupyter.crt"
    assert s["nginx"]["tls"]["certificate_key"] == "/etc/ssl/jupyter/jupyter.key"
    assert s["nginx"]["tls"]["manage_files"] is True
    assert s["nginx"]["tls"]["certificate_key_pem"] == "<hidden>"
    assert s["nginx"]["tls"]["listen"] == 443


@pytest.mark.parametrize(
    "pillar, message",
    [
        ({"server": {"port": 70000}}, "jupyter:server:port: expected an integer from 1 to 65535"),
        ({"server": {"prot": 1}}, "jupyter:server:prot: unknown key; did you mean 'port'?"),
        ({"user": "root"}, "jupyter:user: the server must not run as root"),
        ({"nginx": {"server_name": "a.example; evil"}}, "jupyter:nginx:server_name: item 0"),
        ({"server": {"base_url": "/nb;/"}}, "jupyter:server:base_url: expected a URL path"),
        ({"root_dir": "srv/jupyter"}, "jupyter:root_dir: expected an absolute"),
        ({"packages": ["--index-url=http://x"]}, "jupyter:packages: item 0"),
        ({"packages": []}, "jupyter:packages: expected at least one pip requirement"),
        ({"nginx": {"server_name": []}}, "jupyter:nginx:server_name: expected at least one host name"),
        ({"config": {"ServerApp": {"port": 1}}}, "ServerApp.port is set by the formula; use jupyter:server:port"),
        ({"config_file": "/etc/jupyter/jupyter_server_config.json"}, "jupyter:config_file: /etc/jupyter is read by every"),
    ],
)
def test_bad_pillars_name_the_key(pillar, message):
    with pytest.raises(SaltInvocationError) as err:
        settings({**GOOD, **pillar})
    assert message in str(err.value)


def test_password_errors_never_show_the_password():
    with pytest.raises(SaltInvocationError) as err:
        settings({"password": "short\n"})
    assert "jupyter:password" in str(err.value) and "short" not in str(err.value)


def test_neither_or_both_passwords():
    with pytest.raises(SaltInvocationError, match="set jupyter:password or jupyter:hashed_password"):
        settings({})
    both = {**GOOD, "hashed_password": "argon2:$argon2id$v=19$m=10240,t=10,p=8$c2FsdA$aGFzaA"}
    with pytest.raises(SaltInvocationError, match="not both"):
        settings(both)
    assert settings({}, require_password=False)["user"] == "jupyter"


def test_legacy_hash_refused():
    with pytest.raises(SaltInvocationError, match="legacy salted-hash passwords are refused"):
        settings({"hashed_password": "sha1:0123456789ab:" + "0" * 40})


def test_jupyter_port_equal_to_nginx_port_refused():
    with pytest.raises(SaltInvocationError, match="jupyter:server:port: 80 is also a port nginx listens on"):
        settings({**GOOD, "server": {"port": 80}})


# --- instances (issue 12) ------------------------------------------------------------

HASH = "argon2:$argon2id$v=19$m=10240,t=10,p=8$c2FsdHNhbHQ$aGFzaGhhc2hoYXNo"
INSTANCES = {
    "packages": ["jupyterlab==4.6.6"],
    "nginx": {"server_name": "nb.example.org"},
    "instances": {
        "alice": {"user": "alice", "password": "Alice-rides-42-green-bikes",
                  "server": {"port": 8901, "base_url": "/alice/"}, "limits": {"memory": "1G", "cpu": 1.5, "tasks": 512}},
        "bob": {"user": "bob", "hashed_password": HASH, "server": {"port": 8902, "base_url": "/bob/"}},
        "carol": {"user": "carol", "password": "Carol-keeps-7-quiet-owls", "server": {"port": 8903},
                  "nginx": {"server_name": "carol.example.org"}},
    },
}


def test_without_instances_one_instance_with_todays_names():
    s = settings(GOOD)
    assert s["mode"] == "single" and list(s["instances"]) == ["jupyter"]
    inst = s["instances"]["jupyter"]
    assert (inst["program"], inst["config_file"], inst["root_dir"], inst["venv"]) == (
        "jupyter", "/etc/jupyter-server/jupyter.json", "/srv/jupyter", "/opt/jupyter/venv")
    assert inst["log_files"] == ["/var/log/jupyter/jupyter.log", "/var/log/jupyter/jupyter.err.log"]
    assert inst["sid"] == "" and list(s["sites"]) == ["jupyter"] and s["sites"]["jupyter"]["sid"] == ""
    assert s["sites"]["jupyter"]["locations"][0]["upstream"] == "jupyter_jupyter"


def test_each_instance_gets_its_own_names():
    s = settings(INSTANCES)
    assert s["mode"] == "instances" and sorted(s["instances"]) == ["alice", "bob", "carol"]
    alice = s["instances"]["alice"]
    assert alice["program"] == "jupyter-alice" and alice["program_file"] == "/etc/supervisor/conf.d/jupyter-alice.conf"
    assert alice["config_file"] == "/etc/jupyter-server/alice.json"
    assert alice["root_dir"] == "/srv/jupyter/alice"
    assert alice["log_files"] == ["/var/log/jupyter/jupyter-alice.log", "/var/log/jupyter/jupyter-alice.err.log"]
    assert alice["limits"] == {"memory": 1024 ** 3, "cpu": 1.5, "tasks": 512}
    assert alice["packages"] == ["jupyterlab==4.6.6"]  # inherited from the top level
    assert alice["environment"]["HOME"] == "/home/alice" and alice["environment"]["USER"] == "alice"


def test_instances_with_one_name_share_a_site_and_others_get_their_own():
    s = settings(INSTANCES)
    assert {name: i["site"] for name, i in s["instances"].items()} == {
        "alice": "jupyter", "bob": "jupyter", "carol": "jupyter-carol"}
    shared = s["sites"]["jupyter"]
    assert [loc["base_url"] for loc in shared["locations"]] == ["/alice/", "/bob/"]
    assert [loc["port"] for loc in shared["locations"]] == [8901, 8902]
    assert s["sites"]["jupyter-carol"]["locations"][0]["base_url"] == "/"
    # one default server per port: the top level's site keeps it
    assert shared["default_server"] is True and s["sites"]["jupyter-carol"]["default_server"] is False


def test_identical_packages_share_one_venv():
    pillar = {**INSTANCES, "instances": {**INSTANCES["instances"]}}
    pillar["instances"]["carol"] = {**pillar["instances"]["carol"], "packages": ["jupyterlab==4.6.6", "numpy"]}
    s = settings(pillar)
    shared = s["instances"]["alice"]["venv_id"]
    assert s["instances"]["bob"]["venv_id"] == shared != s["instances"]["carol"]["venv_id"]
    assert s["venvs"][shared]["instances"] == ["alice", "bob"]
    assert s["instances"]["alice"]["venv_dir"] == f"/opt/jupyter/venvs/{shared}"


def test_an_instance_password_replaces_the_inherited_pair():
    pillar = {**INSTANCES, "hashed_password": HASH}
    s = settings(pillar, reveal_secrets=True)
    alice, bob = s["instances"]["alice"], s["instances"]["bob"]
    assert alice["password"] == "Alice-rides-42-green-bikes" and alice["hashed_password"] is None
    assert bob["hashed_password"] == HASH and bob["password"] is None


def test_secrets_are_hidden_unless_revealed():
    pillar = {**INSTANCES, "pip": {"index_url": "https://user:tok3n@pypi.example.org/simple",
                                   "extra_index_urls": ["https://u:p4ss@other.example.org/simple"]}}
    shown = repr(settings(pillar))
    for secret in ("Alice-rides-42-green-bikes", "Carol-keeps", "tok3n", "p4ss", "user:"):
        assert secret not in shown
    assert "https://<hidden>@pypi.example.org/simple" in shown
    revealed = settings(pillar, reveal_secrets=True)
    assert revealed["instances"]["alice"]["pip"]["index_url"] == "https://user:tok3n@pypi.example.org/simple"
    # credentials do not make a venv: the same packages from the same index share it
    other = {**pillar, "pip": {**pillar["pip"], "index_url": "https://user:rotated@pypi.example.org/simple"}}
    assert settings(other)["instances"]["alice"]["venv_id"] == revealed["instances"]["alice"]["venv_id"]


def test_the_pipeline_runs_once_per_state_run():
    calls, context = [], {}
    module = loaded(INSTANCES, context=context, calls=calls)
    for _ in range(4):  # four sls files render in one run
        module.settings()
    module.settings(reveal_secrets=True)
    assert len(calls) == 1


def test_instances_removed_from_pillar_are_listed_for_removal(tmp_path):
    state_dir = tmp_path / "state"
    state_dir.mkdir()
    first = settings({**INSTANCES, "state_dir": str(state_dir)})
    (state_dir / "record.json").write_text(json.dumps(first["record"]["data"]))
    pillar = {**INSTANCES, "state_dir": str(state_dir),
              "instances": {k: v for k, v in INSTANCES["instances"].items() if k != "carol"}}
    second = settings(pillar)
    assert list(second["removed"]) == ["jupyter-carol"]
    assert second["removed"]["jupyter-carol"]["config_file"] == "/etc/jupyter-server/carol.json"
    assert list(second["removed_sites"]) == ["jupyter-carol"]
    assert sorted(second["deployed"]) == ["jupyter-alice", "jupyter-bob", "jupyter-carol"]
    assert "jupyter-carol" not in second["record"]["data"]["instances"]


def test_instance_errors_name_the_instance():
    pillar = {**INSTANCES, "instances": {**INSTANCES["instances"], "bob": {**INSTANCES["instances"]["bob"],
                                                                          "server": {"port": 8901, "base_url": "/bob/"}}}}
    with pytest.raises(SaltInvocationError) as err:
        settings(pillar)
    assert "jupyter:instances:" in str(err.value) and "8901" in str(err.value)


def _keys(tree, prefix=""):
    out = set()
    for key, value in tree.items():
        out.add(prefix + key)
        if isinstance(value, dict):
            out |= _keys(value, f"{prefix}{key}:")
    return out


def test_pillar_example_documents_every_default_and_applies_once_it_has_a_password():
    from support.loader import REPO  # noqa: PLC0415

    example = yaml.safe_load((REPO / "pillar.example").read_text())["jupyter"]
    defaults = yaml.safe_load((REPO / "jupyter/defaults.yaml").read_text())["jupyter"]
    assert _keys(defaults) <= _keys(example), sorted(_keys(defaults) - _keys(example))
    with pytest.raises(SaltInvocationError, match="jupyter:password"):
        settings(example)  # as it is: no password
    assert settings({**example, "password": "Example-Quartz-71-lantern-x"})["mode"] == "single"


def test_each_instance_gets_its_jupyter_server_config():
    s = settings({**INSTANCES, "config": {"MappingKernelManager": {"cull_idle_timeout": 60},
                                          "IdentityProvider": {"cookie_options": {"max_age": 3600}}}})
    alice = s["instances"]["alice"]["server_config"]
    assert alice["ServerApp"]["port"] == 8901 and alice["ServerApp"]["base_url"] == "/alice/"
    assert alice["ServerApp"]["root_dir"] == "/srv/jupyter/alice"
    assert alice["IdentityProvider"]["cookie_name"] == "jupyter-alice"  # one host name, a cookie each
    assert alice["IdentityProvider"]["token"] == "" and alice["MappingKernelManager"] == {"cull_idle_timeout": 60}
    assert alice["IdentityProvider"]["cookie_options"] == {"max_age": 3600}
    single = settings(GOOD)["server_config"]
    assert "cookie_name" not in single["IdentityProvider"]  # one server: today's config, byte for byte


def test_pillar_cookie_options_merge_under_the_formulas_own_behind_tls():
    cert, key = tls_pair()
    s = settings({**GOOD, "nginx": {"tls": {"certificate_pem": cert, "certificate_key_pem": key}},
                  "config": {"IdentityProvider": {"cookie_options": {"max_age": 3600}}}})
    assert s["server_config"]["IdentityProvider"]["cookie_options"] == {"max_age": 3600, "secure": True, "samesite": "Lax"}


def test_slices_no_instance_runs_in_any_more_are_stale(tmp_path, monkeypatch):
    state_dir = tmp_path / "state"
    state_dir.mkdir()
    module = loaded({**INSTANCES, "state_dir": str(state_dir)})
    monkeypatch.setattr(module, "_systemd_booted", lambda: True)
    first = module.settings()
    assert first["instances"]["alice"]["limits_enforcement"]["slice"] == "jupyter-alice.slice"
    (state_dir / "record.json").write_text(json.dumps(first["record"]["data"]))
    dropped = {**INSTANCES, "state_dir": str(state_dir), "instances": {
        **INSTANCES["instances"], "alice": {k: v for k, v in INSTANCES["instances"]["alice"].items() if k != "limits"}}}
    module = loaded(dropped)
    monkeypatch.setattr(module, "_systemd_booted", lambda: True)
    assert module.settings()["stale_slices"] == {"jupyter-alice.slice": "jupyter-alice"}
