"""
The formula rendered with state.show_sls (nothing is applied) for pillar variants and
os families: the requisite graph of DESIGN.md edge by edge, including the edges that
must not exist, the paths of each family, instances, and bad pillars that render the
one guard state.
"""

import json
import subprocess

import pytest
import yaml

from support.deployment import REPO, VENV

PASSWORD = "Render-test-Quartz-71-lantern"
INSTANCES = {
    "packages": ["jupyterlab==4.6.6"],
    "nginx": {"server_name": "nb.example.org"},
    "root_dir": "/srv/jupyter-render",
    "instances": {
        "a": {"user": "render_a", "password": PASSWORD + "-a", "server": {"port": 8901, "base_url": "/a/"},
              "limits": {"memory": "1G", "cpu": 1.5, "tasks": 512}},
        "b": {"user": "render_b", "password": PASSWORD + "-b", "server": {"port": 8902, "base_url": "/b/"}},
        "c": {"user": "render_c", "password": PASSWORD + "-c", "server": {"port": 8903},
              "nginx": {"server_name": "c.example.org"}},
    },
}


def show_sls(tmp_path, pillar, grains=None, sls="jupyter"):
    (tmp_path / "pillar").mkdir(exist_ok=True)
    (tmp_path / "pillar" / "top.sls").write_text("base:\n  '*':\n    - jupyter\n")
    (tmp_path / "pillar" / "jupyter.sls").write_text(yaml.safe_dump({"jupyter": pillar}))
    config = {
        "file_client": "local",
        "file_roots": {"base": [str(REPO)]},
        "pillar_roots": {"base": [str(tmp_path / "pillar")]},
        "cachedir": str(tmp_path / "cache"),
        "extension_modules": str(tmp_path / "cache" / "extmods"),
        "log_file": str(tmp_path / "minion.log"),
        "grains": grains or {},
    }
    (tmp_path / "minion").write_text(yaml.safe_dump(config))
    base = [str(VENV / "bin" / "salt-call"), f"--config-dir={tmp_path}", "--local", "--out=json"]
    subprocess.run(base + ["saltutil.sync_all"], capture_output=True, check=True)
    proc = subprocess.run(base + ["state.show_sls", sls], capture_output=True, text=True, check=False)
    try:
        return json.loads(proc.stdout)["local"]
    except (ValueError, KeyError):
        raise AssertionError(f"state.show_sls {sls} gave no JSON:\n{proc.stdout}\n{proc.stderr}") from None


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


def arg(high, state_id, name):
    """The value of one argument of a state."""
    for key, args in high[state_id].items():
        if key.startswith("__"):
            continue
        for item in args:
            if isinstance(item, dict) and name in item:
                return item[name]
    raise KeyError(f"{state_id} has no argument {name}")


@pytest.fixture(scope="module")
def debian(tmp_path_factory):
    return show_sls(tmp_path_factory.mktemp("debian"), {"password": PASSWORD}, {"os_family": "Debian"})


@pytest.fixture(scope="module")
def instances(tmp_path_factory):
    return show_sls(tmp_path_factory.mktemp("instances"), INSTANCES, {"os_family": "Debian"})


def test_what_restarts_jupyter(debian):
    # a venv switch or a new config: mod_watch restarts the program; its file: an update
    assert edges(debian, "jupyter-supervisor-program", "watch") == {
        "jupyter-supervisor-program-file",
        "jupyter-package-venv",
        "jupyter-config-file",
    }


def test_what_reloads_nginx(debian):
    assert edges(debian, "jupyter-nginx-service", "watch") == {"jupyter-nginx-site"}
    assert edges(debian, "jupyter-nginx-service", "require") == {"jupyter-nginx-site"}
    assert arg(debian, "jupyter-nginx-service", "reload") is True


def test_edges_that_must_not_exist(debian):
    # config or packages never touch nginx; the site never touches Jupyter
    for kind in ("watch", "require", "onchanges"):
        assert not edges(debian, "jupyter-nginx-service", kind) & {"jupyter-config-file", "jupyter-package-venv"}
        assert not edges(debian, "jupyter-supervisor-program", kind) & {"jupyter-nginx-site", "jupyter-nginx-service"}
    # supervisord itself never watches anything: a change never restarts other programs
    assert edges(debian, "jupyter-supervisor-service", "watch") == set()


def test_a_venv_goes_live_only_after_its_config(debian):
    (venv_built,) = [sid for sid in debian if sid.startswith("jupyter-package-venv-")]
    assert edges(debian, "jupyter-package-venv", "require") >= {venv_built, "jupyter-config-file"}
    assert venv_built in edges(debian, "jupyter-config-file", "require")


def test_the_record_is_written_last_and_root_only(debian):
    assert edges(debian, "jupyter-record", "require") >= {
        "jupyter.package", "jupyter.config", "jupyter.supervisor", "jupyter.nginx", "jupyter-removed"}
    assert arg(debian, "jupyter-record", "mode") == "0600"


def test_secrets_are_not_in_the_state_data(debian, instances):
    assert PASSWORD not in json.dumps(debian) and PASSWORD not in json.dumps(instances)


def test_debian_paths(debian):
    assert arg(debian, "jupyter-supervisor-program-file", "name") == "/etc/supervisor/conf.d/jupyter.conf"
    assert arg(debian, "jupyter-supervisor-program-file", "mode") == "0640"
    assert arg(debian, "jupyter-supervisor-service", "name") == "supervisor"
    assert arg(debian, "jupyter-config-file", "name") == "/etc/jupyter-server/jupyter.json"


def test_redhat_renders_its_paths_and_templates(tmp_path):
    high = show_sls(tmp_path, {"password": PASSWORD}, {"os_family": "RedHat"})
    assert arg(high, "jupyter-supervisor-program-file", "name") == "/etc/supervisord.d/jupyter.ini"
    assert arg(high, "jupyter-supervisor-service", "name") == "supervisord"
    assert arg(high, "jupyter-supervisor-program", "socket") == "/run/supervisor/supervisor.sock"


def test_each_instance_has_its_own_states(instances):
    for name in ("a", "b", "c"):
        assert arg(instances, f"jupyter-supervisor-program-{name}", "name") == f"jupyter-{name}"
        assert edges(instances, f"jupyter-supervisor-program-{name}", "watch") == {
            f"jupyter-supervisor-program-file-{name}", f"jupyter-package-venv-{name}", f"jupyter-config-file-{name}"}
        assert arg(instances, f"jupyter-config-file-{name}", "name") == f"/etc/jupyter-server/{name}.json"
        assert arg(instances, f"jupyter-package-root-dir-{name}", "name") == f"/srv/jupyter-render/{name}"
    # one venv for the three: built once
    assert len([sid for sid in instances if sid.startswith("jupyter-package-venv-") and len(sid) == 33]) == 1


def test_bad_pillar_renders_only_the_guard_naming_the_key(tmp_path):
    high = show_sls(tmp_path, {"password": PASSWORD, "server": {"port": "eighty"}})
    assert set(high) == {"jupyter-pillar-invalid"}
    comment = arg(high, "jupyter-pillar-invalid", "comment")
    assert "jupyter:server:port: expected an integer" in comment and "nothing was changed" in comment


def test_clean_renders_without_a_password(tmp_path):
    high = show_sls(tmp_path, {}, sls="jupyter.clean")
    assert "jupyter-clean-supervisor-program-jupyter" in high
    assert arg(high, "jupyter-clean-package-venvs", "links") == ["/opt/jupyter/venv"]
    assert arg(high, "jupyter-clean-config-/etc/jupyter-server/jupyter.json", "name") == "/etc/jupyter-server/jupyter.json"
    assert "jupyter-clean-supervisor-package" not in high and "jupyter-clean-nginx-package" not in high
    assert not [sid for sid in high if sid.startswith("jupyter-clean-package-user")]
