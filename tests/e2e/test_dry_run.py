"""test=True on a host where this deployment does not exist yet: a prediction, no failure, no change."""

import pwd
from pathlib import Path

import pytest

from support.deployment import Deployment, failed, host_lock

pytestmark = pytest.mark.e2e

PILLAR = {
    "user": "jupyterdry",
    "root_dir": "/srv/jupyter-dry",
    "venv": "/opt/jupyter-dry/venv",
    "password": "dry-run-password-1",
    "server": {"port": 8895},
    "supervisor": {"program": "jupyter-dry", "log_dir": "/var/log/jupyter-dry"},
    "nginx": {"site": "jupyter-dry", "listen": 8085, "default_server": False},
}
CREATED = ["/opt/jupyter-dry", "/srv/jupyter-dry", "/var/log/jupyter-dry", "/etc/jupyter-server/jupyter-dry.json",
           "/etc/supervisor/conf.d/jupyter-dry.conf", "/etc/nginx/sites-available/jupyter-dry.conf"]


def test_dry_run_on_a_fresh_deployment_predicts_and_changes_nothing():
    with host_lock():
        dry = Deployment("dry", PILLAR)
        proc = dry.deploy("test=True")  # the quick start's own path: ./deploy.sh FILE test=True
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-2000:]
        results = dry.apply("test=True")
    assert not failed(results), failed(results)
    predicted = {ret["__id__"] for ret in results.values() if ret["result"] is None}
    assert {"jupyter-package-user", "jupyter-package-venv", "jupyter-config-file",
            "jupyter-supervisor-program-file", "jupyter-nginx-site"} <= predicted
    for path in CREATED:
        assert not Path(path).exists(), path
    with pytest.raises(KeyError):
        pwd.getpwnam("jupyterdry")
