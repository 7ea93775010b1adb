"""
./deploy.sh with no pillar file, as the README's first command, with the formula's
default names (program jupyter, port 80, /etc/jupyter-formula): a generated password
printed once and stored only as a hash; a re-run keeps it; jupyter.clean removes it
all. On lab nodes only: on this host the defaults may belong to a real deployment.
"""

import json
import re

import pytest

from support.deployment import Deployment, changed, failed
from support.jupyter_http import JupyterClient

pytestmark = pytest.mark.targets("nodes")

FOUND = re.compile(r"Jupyter password \(shown once, only its hash is stored\): (\S+)")
FILES = ("/etc/supervisor/conf.d/jupyter.conf", "/etc/nginx/sites-available/jupyter.conf",
         "/etc/nginx/sites-enabled/jupyter.conf", "/etc/jupyter-server/jupyter.json", "/opt/jupyter/venv",
         "/opt/jupyter/venvs", "/var/log/jupyter")


@pytest.fixture(scope="module")
def quickstart(target):
    dep = Deployment(target, "quickstart", {}, etc="/etc/jupyter-formula")
    target.remove(str(dep.pillar_file))
    yield dep


def test_first_run_generates_a_password_shown_once(quickstart):
    target = quickstart.target
    first = quickstart.deploy(pillar_file=None)
    assert first.ok, first
    found = FOUND.findall(first.stdout)
    assert len(found) == 1 and len(found[0]) >= 20
    password = found[0]
    quickstart.pillar = {"password": password}  # what login() uses; the host keeps only its hash
    stored = target.read("/etc/jupyter-formula/pillar/jupyter.sls")
    assert password not in stored and "hashed_password: 'argon2:$argon2id$" in stored
    assert target.run(["stat", "-c", "%a", "/etc/jupyter-formula/pillar/jupyter.sls"]).stdout.strip() == "600"
    quickstart.wait_for_jupyter()
    assert quickstart.serves(password)
    assert not JupyterClient(quickstart.url()).login(password + "x")

    again = quickstart.deploy(pillar_file=None)
    assert again.ok, again
    assert "Jupyter password" not in again.stdout
    assert "changed=" not in again.stdout  # Salt's summary shows changed=N only when something changed
    assert JupyterClient(quickstart.url()).login(password)


def test_clean_removes_what_the_formula_added(quickstart):
    target = quickstart.target
    master, _ = target.nginx_pids()
    results = quickstart.apply(sls="jupyter.clean")
    assert not failed(results), failed(results)
    assert "jupyter-clean-supervisor-program-jupyter" in changed(results)
    assert [path for path in FILES if target.exists(path)] == []
    assert target.exists("/srv/jupyter")  # notebooks are kept, and the record of them only
    record = json.loads(target.read("/var/lib/jupyter-formula/record.json"))
    assert record == {"version": 1, "directories": ["/srv/jupyter"]}, record
    assert target.nginx_pids()[0] == master  # nginx still runs, reloaded without the site
    assert target.supervisor_status("jupyter")[0] != "RUNNING"
    assert target.listeners(8888) == [] and target.listeners(80) == []
    # applying again brings it all back, with the password that was shown once
    results = quickstart.apply()
    assert not failed(results), failed(results)
    quickstart.wait_for_jupyter()
    assert quickstart.serves()
