"""
The "proof" deployment: the formula applied to this host on its own ports, for the
browser test and the benchmarks (bench/run.py). deployed() applies it under the host
lock and removes its supervisor program and nginx site afterwards; the virtualenv and
root_dir are kept, so the next run is a quick re-apply.
"""

import contextlib
import secrets
import subprocess
from pathlib import Path

from support.deployment import Deployment, host_lock

PROGRAM = "jupyter-proof"
SITE = "jupyter-proof"
JUPYTER_PORT = 8892
NGINX_PORT = 8083


def pillar(password):
    return {
        "user": "jupyterproof",
        "root_dir": "/srv/jupyter-proof",
        "venv": "/opt/jupyter-proof/venv",
        "config_file": "/etc/jupyter-proof/jupyter_server_config.json",
        "packages": ["jupyterlab==4.6.6"],
        "password": password,
        "server": {"port": JUPYTER_PORT},
        "supervisor": {"program": PROGRAM, "log_dir": "/var/log/jupyter-proof"},
        "nginx": {"site": SITE, "listen": NGINX_PORT},
    }


def direct_url(path=""):
    """Jupyter itself, bypassing nginx."""
    return f"http://127.0.0.1:{JUPYTER_PORT}/{path}"


def deploy(password):
    """Apply the formula (caller holds host_lock); returns the Deployment, Jupyter answering."""
    dep = Deployment("proof", pillar(password))
    proc = dep.deploy()
    if proc.returncode != 0:
        raise AssertionError(f"deploy.sh failed (rc={proc.returncode}):\n{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}")
    dep.wait_for_jupyter()
    return dep


def teardown(dep):
    """Remove the supervisor program, the nginx site and the pillar file (caller holds host_lock)."""
    s = dep.settings()
    sup, n = s["supervisor"], s["nginx"]
    proc = dep.salt_call(
        "state.single", "supervisor_program.absent", f"name={sup['program']}",
        f"conf_file={sup['conf_dir']}/{sup['program']}{sup['conf_ext']}", "--out=json",
    )
    problems = [] if proc.returncode == 0 else [f"supervisor_program.absent: {proc.stdout}{proc.stderr}"]
    site_files = [Path(n["sites_available"]) / f"{n['site']}.conf"]
    if n["sites_enabled"]:
        site_files.append(Path(n["sites_enabled"]) / f"{n['site']}.conf")
    for path in site_files:
        path.unlink(missing_ok=True)
    check = subprocess.run(["nginx", "-t"], capture_output=True, text=True, check=False)
    if check.returncode == 0:
        subprocess.run(["nginx", "-s", "reload"], capture_output=True, check=False)
    else:
        problems.append(f"nginx -t after removing the site: {check.stderr}")
    dep.pillar_file.unlink(missing_ok=True)  # it holds the password
    if problems:
        raise AssertionError("; ".join(problems))


@contextlib.contextmanager
def deployed(password=None):
    """(Deployment, password) for the time of the block, the host lock held throughout:
    nobody else applies the formula or restarts daemons while we measure or click."""
    password = password or secrets.token_urlsafe(16)
    with host_lock():
        dep = deploy(password)
        try:
            yield dep, password
        finally:
            teardown(dep)

