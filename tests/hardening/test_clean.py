"""
jupyter.clean of the hardening deployment (with clean:user): everything the formula
made is gone (program, files, venvs, site, TLS files it wrote, logs, record, account),
the notebooks stay, nginx and supervisord run on, and nothing listens on the
deployment's ports. Runs after the other hardening tests of its target (conftest.py).
"""

import json

import pytest

from hardening.common import (
    CONFIG_FILE,
    HTTP_PORT,
    HTTPS_PORT,
    JUPYTER_PORT,
    PROGRAM,
    PROGRAM_FILE,
    SITE_FILES,
    TLS_FILES,
    USER,
)
from support.deployment import changed, failed

# after the other tests of its target, which would have to deploy it all again
pytestmark = pytest.mark.last_on_target


def test_clean_removes_what_the_formula_made(deployed):
    target, base = deployed.target, deployed.base
    notebook = f"{base['root_dir']}/kept.ipynb"
    target.write(notebook, "{}", mode="0644")
    master = target.nginx_pids()[0]
    daemon = target.supervisord_pid()
    deployed.update_pillar({"clean": {"user": True}})
    results = deployed.apply(sls="jupyter.clean")
    deployed.applied_base, deployed.removed = False, True  # whatever runs after this deploys it again
    assert not failed(results), failed(results)
    assert f"jupyter-clean-supervisor-program-{PROGRAM}" in changed(results)
    gone = [PROGRAM_FILE, CONFIG_FILE, *SITE_FILES, *TLS_FILES, base["venv"], base["venv_store"],
            base["supervisor"]["log_dir"], f"/home/{USER}", "/etc/jft-hard"]
    assert [path for path in gone if target.exists(path)] == []
    # the record keeps only the notebook directories it made (a later deploy knows them)
    record = json.loads(target.read(f"{base['state_dir']}/record.json"))
    assert record == {"version": 1, "directories": [base["root_dir"]]}, record
    assert not target.run(["getent", "passwd", USER]).ok
    assert target.read(notebook) == "{}"  # notebooks are kept
    assert target.supervisor_status(PROGRAM)[0] not in ("RUNNING", "STARTING")
    for port in (HTTP_PORT, HTTPS_PORT, JUPYTER_PORT):
        assert target.listeners(port) == [], port
    assert target.nginx_pids()[0] == master and target.supervisord_pid() == daemon  # both run on
    assert target.run(["nginx", "-t"]).ok
    # the notebooks gone too: the next clean forgets them, and the record goes
    target.remove(base["root_dir"])
    again = deployed.apply(sls="jupyter.clean")
    assert not failed(again), failed(again)
    assert not target.exists(base["state_dir"])
    again = deployed.apply(sls="jupyter.clean")  # nothing left to do
    assert not failed(again) and not changed(again), changed(again)
