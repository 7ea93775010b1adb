"""
The quick start for real on this host (root): deploy.sh applies the formula
masterless, then everything is checked from outside, through nginx, in the order an
admin lives it: first deploy, use, re-apply, change the password, change nginx,
move under a prefix.
"""

import os
import re
import stat
import subprocess
import time
from pathlib import Path

import pytest
import requests

from support.deployment import Deployment, changed, failed, host_lock, nginx_pids

pytestmark = pytest.mark.e2e

FIRST = "e2e-first-Password-1"
SECOND = "e2e-second-Password-2"
PILLAR = {
    "password": FIRST,
    "packages": ["jupyterlab==4.6.6"],
    "nginx": {"login_rate_limit": {"rate": "300r/m", "burst": 100}},
}
MB = 1024 * 1024


@pytest.fixture(scope="module")
def site():
    with host_lock():
        deployment = Deployment("e2e", PILLAR)
        proc = deployment.deploy()
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
        deployment.wait_for_jupyter()
        yield deployment


def logged_in(deployment, password=FIRST):
    client = deployment.client()
    assert client.login(password), f"login refused ({client.last_login_status})"
    return client


def check_login_kernel_upload(deployment):
    """Steps 1 to 3 of the issue, under whatever base_url the deployment has."""
    anonymous = requests.get(deployment.url(), timeout=10)
    assert anonymous.history and anonymous.url.startswith(deployment.url("login"))
    assert requests.get(deployment.url("api/status"), timeout=10).status_code == 403
    assert not deployment.client().login("not-the-password")
    client = logged_in(deployment)
    assert client.api("GET", "status").status_code == 200
    kernel = client.start_kernel()
    try:
        assert client.execute(kernel, "6*7") == "42"
    finally:
        client.delete_kernel(kernel)
    saved = client.save_notebook("e2e-20mb.ipynb", 20 * MB)
    assert saved.status_code in (200, 201), saved.text[:300]
    assert client.api("GET", "contents/e2e-20mb.ipynb?content=0").json()["size"] > 20 * MB


def test_deploy_serves_login_kernel_and_large_notebooks(site):
    check_login_kernel_upload(site)


def test_second_apply_changes_and_restarts_nothing(site):
    jupyter, nginx = site.jupyter_pid(), nginx_pids()
    results = site.apply()
    assert not failed(results)
    assert changed(results) == {}
    assert site.jupyter_pid() == jupyter
    assert nginx_pids() == nginx


def test_new_password_restarts_jupyter_only(site):
    jupyter, nginx = site.jupyter_pid(), nginx_pids()
    site.update_pillar({"password": SECOND})
    results = site.apply()
    assert not failed(results)
    assert set(changed(results)) == {"jupyter-config-file", "jupyter-supervisor-program"}
    assert changed(results)["jupyter-config-file"] == {"password": "new hash"}
    assert site.jupyter_pid() not in (None, jupyter)
    assert nginx_pids() == nginx
    site.wait_for_jupyter()
    assert not site.client().login(FIRST)
    assert logged_in(site, SECOND)
    site.update_pillar({"password": FIRST})
    assert not failed(site.apply())
    site.wait_for_jupyter()


def wait_for_new_workers(old_workers, timeout=30):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        master, workers = nginx_pids()
        if workers and not set(workers) & set(old_workers):
            return master, workers
        time.sleep(0.2)
    raise AssertionError("nginx workers were not replaced: no reload happened")


def test_nginx_setting_reloads_nginx_only(site):
    jupyter = site.jupyter_pid()
    master, workers = nginx_pids()
    site.update_pillar({"nginx": {"client_max_body_size": "100m"}})
    results = site.apply()
    assert not failed(results)
    assert set(changed(results)) == {"jupyter-nginx-site", "jupyter-nginx-config-test", "jupyter-nginx-service"}
    assert "client_max_body_size 100m;" in Path("/etc/nginx/sites-available/jupyter.conf").read_text()
    new_master, _ = wait_for_new_workers(workers)
    assert new_master == master  # reloaded, not restarted
    assert site.jupyter_pid() == jupyter


def test_program_file_change_updates_the_program_only(site):
    jupyter, (master, workers) = site.jupyter_pid(), nginx_pids()
    site.update_pillar({"supervisor": {"environment": {"TZ": "UTC"}}})
    results = site.apply()
    assert not failed(results)
    assert set(changed(results)) == {"jupyter-supervisor-program-file", "jupyter-supervisor-program"}
    assert site.jupyter_pid() not in (None, jupyter)
    environ = Path(f"/proc/{site.jupyter_pid()}/environ").read_bytes().split(b"\0")
    assert b"TZ=UTC" in environ and b"USER=jupyter" in environ and b"HOME=/home/jupyter" in environ
    assert nginx_pids() == (master, workers)


def test_base_url_prefix(site):
    site.update_pillar({"server": {"base_url": "/nb/"}})
    assert not failed(site.apply())
    site.wait_for_jupyter()
    check_login_kernel_upload(site)
    bare = requests.get("http://127.0.0.1/nb", allow_redirects=False, timeout=10)
    assert bare.status_code == 301 and bare.headers["Location"].endswith("/nb/")


def test_listens_on_loopback_as_the_user_with_a_private_config(site):
    pid = site.jupyter_pid()
    listening = subprocess.run(["ss", "-Hltnp"], capture_output=True, text=True, check=True).stdout
    sockets = [line.split()[3] for line in listening.splitlines() if f"pid={pid}," in line]
    assert sockets == ["127.0.0.1:8888"]
    owner = subprocess.run(["ps", "-o", "user=", "-p", str(pid)], capture_output=True, text=True).stdout
    assert owner.strip() == "jupyter"
    config = os.stat("/etc/jupyter-server/jupyter.json")
    assert stat.S_IMODE(config.st_mode) & 0o007 == 0
    assert config.st_uid == 0
    # the server's user can read it, the web server's user cannot
    reads = subprocess.run(["runuser", "-u", "www-data", "--", "cat", "/etc/jupyter-server/jupyter.json"],
                           capture_output=True, text=True)
    assert reads.returncode != 0 and "Permission denied" in reads.stderr
    text = Path("/etc/jupyter-server/jupyter.json").read_text()
    assert FIRST not in text and re.search(r'"hashed_password": "argon2:\$argon2id\$', text)
