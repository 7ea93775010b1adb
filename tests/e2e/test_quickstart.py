"""
./deploy.sh with no pillar file, as the README's first command: a generated password
printed once and stored only as a hash; a re-run keeps it; jupyter.clean removes it all.
"""

import re
import subprocess
from pathlib import Path

import pytest

from support.deployment import REPO, Deployment, changed, failed, host_lock, nginx_pids
from support.jupyter_http import JupyterClient

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def quickstart():
    with host_lock():
        deployment = Deployment("quickstart", {})
        subprocess.run(["rm", "-rf", str(deployment.etc)], check=True)
        yield deployment


def run_deploy(deployment):
    return subprocess.run([str(REPO / "deploy.sh")], env=deployment.env(), capture_output=True, text=True, timeout=1200)


def test_first_run_generates_a_password_shown_once(quickstart):
    first = run_deploy(quickstart)
    assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-2000:]
    found = re.findall(r"Jupyter password \(shown once, only its hash is stored\): (\S+)", first.stdout)
    assert len(found) == 1 and len(found[0]) >= 20
    password = found[0]
    stored = (quickstart.etc / "pillar" / "jupyter.sls").read_text()
    assert password not in stored and "hashed_password: 'argon2:$argon2id$" in stored
    assert oct((quickstart.etc / "pillar" / "jupyter.sls").stat().st_mode & 0o777) == "0o600"
    quickstart.wait_for_jupyter()
    client = JupyterClient("http://127.0.0.1/")
    assert client.login(password)
    assert not JupyterClient("http://127.0.0.1/").login(password + "x")

    again = run_deploy(quickstart)
    assert again.returncode == 0
    assert "Jupyter password" not in again.stdout
    assert JupyterClient("http://127.0.0.1/").login(password)


def test_clean_removes_what_the_formula_added(quickstart):
    results = quickstart.apply(sls="jupyter.clean")
    assert not failed(results), failed(results)
    assert "jupyter-clean-program" in changed(results)
    for path in ("/etc/supervisor/conf.d/jupyter.conf", "/etc/nginx/sites-available/jupyter.conf",
                 "/etc/nginx/sites-enabled/jupyter.conf", "/etc/jupyter-server/jupyter.json",
                 "/opt/jupyter/venv"):
        assert not Path(path).exists(), path
    assert Path("/srv/jupyter").is_dir()  # notebooks are kept
    master, _ = nginx_pids()  # nginx still runs, reloaded without the site
    status = quickstart.salt_call("supervisor_rpc.status", "--out=json")
    assert '"jupyter"' not in status.stdout
    # applying again brings it all back
    results = quickstart.apply()
    assert not failed(results), failed(results)
    quickstart.wait_for_jupyter()
    assert nginx_pids()[0] == master
