"""
The "proof" deployment: the formula applied to this host on its own names, ports and
paths (never the defaults), for the browser test and the benchmarks (bench/run.py).

deployed() applies it under the host lock and takes it away again with `jupyter.clean`
(program, site, config, venvs, the account it made; the notebooks in root_dir stay).
pip installs from the local wheelhouse (tests/support/wheelhouse.py): nothing is
downloaded per run, and the benchmarks can upgrade to a package of the wheelhouse.
"""

import contextlib
import os
import secrets
import shutil

from support import wheelhouse
from support.deployment import Deployment, failed, host_lock

NAME = "proof"
PROGRAM = "jupyter-proof"
SITE = "jupyter-proof"
JUPYTER_PORT = 8892
NGINX_PORT = 8083
PACKAGES = ["jupyterlab==4.6.6"]
# the wheelhouse's own packages (jfv-*) are rebuilt here on each call; its base is cached
WHEELHOUSE_DIR = wheelhouse.cache_root() / "proof-wheelhouse"


def local_wheelhouse():
    """{"index_url", "extra_index_url", ...} of the local wheelhouse (built if need be)."""
    return wheelhouse.build(WHEELHOUSE_DIR)


def pip_options(wh):
    """The pillar's pip options that read the wheelhouse wh only."""
    return {"index_url": wh["index_url"], "extra_index_urls": [wh["extra_index_url"]]}


def pillar(password, wh=None):
    """The proof deployment's pillar; wh: the wheelhouse pip reads (None: pip's own config)."""
    out = {
        "user": "jupyterproof",
        "root_dir": "/srv/jupyter-proof",
        "venv": "/opt/jupyter-proof/venv",
        "venv_store": "/opt/jupyter-proof/venvs",
        "state_dir": "/var/lib/jupyter-formula-proof",
        "config_file": "/etc/jupyter-proof/jupyter_server_config.json",
        "packages": list(PACKAGES),
        "password": password,
        "server": {"port": JUPYTER_PORT},
        "supervisor": {"program": PROGRAM, "log_dir": "/var/log/jupyter-proof"},
        "nginx": {"site": SITE, "listen": NGINX_PORT, "default_server": False},
        "clean": {"user": True},
    }
    if wh is not None:
        out["pip"] = pip_options(wh)
    return out


def direct_url(path=""):
    """Jupyter itself, bypassing nginx."""
    return f"http://127.0.0.1:{JUPYTER_PORT}/{path}"


def deploy(password, wh=None):
    """Apply the formula (caller holds host_lock); returns the Deployment, Jupyter answering."""
    dep = Deployment(NAME, pillar(password, wh))
    proc = dep.deploy()
    if proc.returncode != 0:
        raise AssertionError(f"deploy.sh failed (rc={proc.returncode}):\n{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}")
    dep.wait_for_jupyter()
    return dep


def clean(dep):
    """Take a deployment of this host away (caller holds host_lock): its notebook dirs
    when they hold no file, then `jupyter.clean` with clean:user (the accounts the
    formula made), the pillar file, deploy.sh's config dir and Salt's cache
    (Deployment.clean). Raises when a state of the clean failed."""
    try:
        roots = sorted({inst["root_dir"] for inst in dep.settings()["instances"].values()}, key=len, reverse=True)
    except Exception:  # noqa: BLE001  (not deployed far enough to say: no dir of ours to remove)
        roots = []
    top = dep.pillar.get("root_dir")
    for root in [*roots, top]:
        own = top and root and root.count("/") >= 2 and (root == top or root.startswith(top.rstrip("/") + "/"))
        if own and not _holds_files(root):
            # only what Jupyter made by itself (.ipynb_checkpoints): the next deploy would
            # refuse a root_dir it did not create, owned by the account about to go. Gone
            # before the clean, so that the clean forgets them and drops its record.
            shutil.rmtree(root, ignore_errors=True)
    try:
        bad = failed(dep.clean(user=True))
    except BaseException:
        dep.forget()  # the pillar file holds the password
        raise
    if bad:
        raise AssertionError(f"jupyter.clean of {dep.name} failed: {bad}")


def _holds_files(root):
    """True when root has anything but directories in it (notebooks stay)."""
    return any(files or any(os.path.islink(os.path.join(d, n)) for n in dirs) for d, dirs, files in os.walk(root))


teardown = clean  # the name the browser test's helpers knew


@contextlib.contextmanager
def deployed(password=None):
    """(Deployment, password) for the time of the block, the host lock held throughout:
    nobody else applies the formula or restarts daemons while we measure or click."""
    password = password or secrets.token_urlsafe(16)
    wh = local_wheelhouse()
    with host_lock():
        dep = Deployment(NAME, pillar(password, wh))
        try:
            dep = deploy(password, wh)
            yield dep, password
        finally:
            clean(dep)
