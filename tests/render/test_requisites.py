"""
The formula rendered with state.show_sls (nothing is applied) for pillar variants and
os families: the requisite graph of DESIGN.md edge by edge, including the edges that
must not exist, the paths of each family, and bad pillars that render a failure.
"""

import json
import subprocess

import pytest
import yaml

from support.deployment import REPO, VENV

PASSWORD = "render-test-password"


def show_sls(tmp_path, pillar, grains=None, sls="jupyter"):
    (tmp_path / "pillar").mkdir(exist_ok=True)
    (tmp_path / "pillar" / "top.sls").write_text("base:\n  '*':\n    - jupyter\n")
    (tmp_path / "pillar" / "jupyter.sls").write_text(yaml.safe_dump({"jupyter": pillar}))
    config = {
        "file_client": "local",
        "file_roots": {"base": [str(REPO)]},
        "pillar_roots": {"base": [str(tmp_path / "pillar")]},
        "cachedir": str(tmp_path / "cache"),
        "log_file": str(tmp_path / "minion.log"),
        "grains": grains or {},
    }
    (tmp_path / "minion").write_text(yaml.safe_dump(config))
    base = [str(VENV / "bin" / "salt-call"), f"--config-dir={tmp_path}", "--local", "--out=json"]
    subprocess.run(base + ["saltutil.sync_all"], capture_output=True, check=True)
    proc = subprocess.run(base + ["state.show_sls", sls], capture_output=True, text=True, check=False)
    return json.loads(proc.stdout)["local"]


def edges(high, state_id, kind):
    """The ids a state names under a requisite kind (watch, require, onchanges)."""
    out = set()
    for key, args in high[state_id].items():
        if key.startswith("__"):
            continue
        for arg in args:
            if isinstance(arg, dict) and kind in arg:
                out |= {next(iter(req.values())) for req in arg[kind]}
    return out


@pytest.fixture(scope="module")
def debian(tmp_path_factory):
    return show_sls(tmp_path_factory.mktemp("debian"), {"password": PASSWORD}, {"os_family": "Debian"})


def test_what_restarts_jupyter(debian):
    assert edges(debian, "jupyter-supervisor-program", "watch") == {
        "jupyter-supervisor-program-file",
        "jupyter-package-pip",
        "jupyter-package-venv",
        "jupyter-config-file",
    }


def test_what_reloads_nginx(debian):
    watched = edges(debian, "jupyter-nginx-service", "watch")
    assert watched == {"jupyter-nginx-site", "jupyter-nginx-site-enabled", "jupyter-nginx-distro-default-site"}
    assert edges(debian, "jupyter-nginx-service", "require") >= {"jupyter-nginx-config-test"}
    assert edges(debian, "jupyter-nginx-config-test", "onchanges") == watched
    assert {"reload": True} in debian["jupyter-nginx-service"]["jupyter_service"]


def test_edges_that_must_not_exist(debian):
    # config or packages never touch nginx; the site never touches Jupyter
    for nginx_state in ("jupyter-nginx-service", "jupyter-nginx-config-test", "jupyter-nginx-site"):
        for kind in ("watch", "require", "onchanges"):
            assert not edges(debian, nginx_state, kind) & {"jupyter-config-file", "jupyter-package-pip"}
    for kind in ("watch", "require", "onchanges"):
        assert not edges(debian, "jupyter-supervisor-program", kind) & {
            "jupyter-nginx-site", "jupyter-nginx-service", "jupyter-nginx-site-enabled"
        }
    # supervisord itself never watches anything: a change never restarts other programs
    assert edges(debian, "jupyter-supervisor-service", "watch") == set()


def test_site_is_checked_before_it_is_written(debian):
    site = debian["jupyter-nginx-site"]["file"]
    assert {"check_cmd": "/usr/local/sbin/jupyter-nginx-check-site"} in site
    assert {"name": "/etc/nginx/sites-available/jupyter.conf"} in site


def test_password_is_not_in_the_state_data(debian):
    assert PASSWORD not in json.dumps(debian)


def test_debian_paths(debian):
    assert {"name": "/etc/supervisor/conf.d/jupyter.conf"} in debian["jupyter-supervisor-program-file"]["file"]
    assert {"name": "/etc/nginx/sites-enabled/jupyter.conf"} in debian["jupyter-nginx-site-enabled"]["file"]
    assert {"name": "supervisor"} in debian["jupyter-supervisor-service"]["jupyter_service"]


def test_redhat_paths(tmp_path):
    high = show_sls(tmp_path, {"password": PASSWORD}, {"os_family": "RedHat"})
    assert {"name": "/etc/supervisord.d/jupyter.ini"} in high["jupyter-supervisor-program-file"]["file"]
    assert {"name": "/etc/nginx/conf.d/jupyter.conf"} in high["jupyter-nginx-site"]["file"]
    assert {"name": "supervisord"} in high["jupyter-supervisor-service"]["jupyter_service"]
    assert {"socket": "/run/supervisor/supervisor.sock"} in high["jupyter-supervisor-program"]["supervisor_program"]
    assert "jupyter-nginx-site-enabled" not in high and "jupyter-nginx-distro-default-site" not in high


def test_tls_files_from_pillar_are_watched_and_kept_out_of_state_data(tmp_path):
    key = "-----BEGIN PRIVATE KEY-----\nsecret-key-material\n-----END PRIVATE KEY-----\n"
    cert = "-----BEGIN CERTIFICATE-----\ncert\n-----END CERTIFICATE-----\n"
    high = show_sls(tmp_path, {"password": PASSWORD, "nginx": {"tls": {"certificate_pem": cert, "certificate_key_pem": key}}})
    assert "secret-key-material" not in json.dumps(high)
    key_state = high["jupyter-nginx-tls-certificate-key"]["file"]
    assert {"mode": "0600"} in key_state and {"show_changes": False} in key_state
    assert {"jupyter-nginx-tls-certificate", "jupyter-nginx-tls-certificate-key"} <= edges(high, "jupyter-nginx-service", "watch")


def test_bad_pillar_renders_only_failures_naming_the_key(tmp_path):
    high = show_sls(tmp_path, {"password": PASSWORD, "server": {"port": "eighty"}})
    assert set(high) == {f"jupyter-{sls}-pillar" for sls in ("package", "config", "supervisor", "nginx")}
    comment = high["jupyter-nginx-pillar"]["jupyter_config"]
    assert any("jupyter:server:port: expected an integer" in str(arg) for arg in comment)


def test_clean_renders_without_a_password(tmp_path):
    high = show_sls(tmp_path, {}, sls="jupyter.clean")
    assert "jupyter-clean-program" in high
    assert "jupyter-clean-/opt/jupyter/venv" in high
    assert "jupyter-clean-packages" not in high and "jupyter-clean-user" not in high
