"""jupyter.settings and jupyter_pillar.validate with the loader mocked."""

import pytest
from salt.exceptions import SaltInvocationError

from support.loader import file_str, load

GOOD = {"password": "correct horse battery"}


def settings(pillar, os_family="Debian", **kwargs):
    validator = load("_modules", "jupyter_pillar")
    module = load(
        "_modules",
        "jupyter",
        salt={"cp.get_file_str": file_str, "jupyter_pillar.validate": validator.validate},
        grains={"os_family": os_family},
        pillar={"jupyter": pillar},
    )
    return module.settings(**kwargs)


def test_defaults_are_filled_in_and_secrets_hidden():
    s = settings(GOOD)
    assert s["server"] == {"ip": "127.0.0.1", "port": 8888, "base_url": "/"}
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
    tls = {"certificate_pem": "-----BEGIN CERTIFICATE-----\nx\n", "certificate_key_pem": "-----BEGIN PRIVATE KEY-----\ny\n"}
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
        ({"server": {"base_url": "/nb"}}, "jupyter:server:base_url: expected a URL path"),
        ({"root_dir": "srv/jupyter"}, "jupyter:root_dir: expected an absolute"),
        ({"packages": ["--index-url=http://x"]}, "jupyter:packages: item 0"),
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
