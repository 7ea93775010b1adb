"""
The formula applied to THIS host, as an admin would: deploy.sh with a pillar file,
then salt-call for later applies. Several deployments can live side by side (own
config dir, pillar, site, program, ports); tests that apply to the host hold
host_lock() so that two test sessions never apply at the same time.
"""

import contextlib
import fcntl
import json
import os
import subprocess
import time
from pathlib import Path

import yaml

from support.jupyter_http import JupyterClient

REPO = Path(__file__).resolve().parents[2]
VENV = Path(os.environ.get("JUPYTER_FORMULA_VENV", REPO / ".venv"))
# Pillar files live on tmpfs under /run: not under the trees the secrets test scans.
PILLAR_DIR = Path("/run/jupyter-formula-tests")
LOCK = Path("/run/jupyter-formula-tests.lock")


@contextlib.contextmanager
def host_lock():
    """Serialise everything that applies the formula to this host or kills its daemons."""
    with open(LOCK, "w", encoding="utf-8") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def merge(base, extra):
    out = dict(base)
    for key, value in extra.items():
        out[key] = merge(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


def changed(results):
    """{state id: changes} of the states that changed something."""
    return {ret["__id__"]: ret["changes"] for ret in results.values() if ret.get("changes")}


def failed(results):
    return {ret["__id__"]: ret["comment"] for ret in results.values() if ret.get("result") is False}


class Deployment:
    def __init__(self, name, pillar):
        self.name = name
        self.etc = Path(f"/etc/jupyter-formula-{name}")
        self.pillar_file = PILLAR_DIR / f"{name}.sls"
        self.pillar = {}
        self.write_pillar(pillar)

    # --- pillar and applies --------------------------------------------

    def write_pillar(self, pillar):
        self.pillar = pillar
        PILLAR_DIR.mkdir(mode=0o700, exist_ok=True)
        fd = os.open(self.pillar_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as out:
            yaml.safe_dump({"jupyter": pillar}, out)

    def update_pillar(self, extra):
        self.write_pillar(merge(self.pillar, extra))

    def env(self):
        return {**os.environ, "JUPYTER_FORMULA_ETC": str(self.etc), "JUPYTER_FORMULA_VENV": str(VENV)}

    def deploy(self, *args, timeout=1200):
        """The quick start: ./deploy.sh PILLAR_FILE [ARGS]."""
        return subprocess.run(
            [str(REPO / "deploy.sh"), str(self.pillar_file), *args],
            env=self.env(), capture_output=True, text=True, timeout=timeout, check=False,
        )

    def salt_call(self, *args, timeout=1200):
        return subprocess.run(
            [str(VENV / "bin" / "salt-call"), f"--config-dir={self.etc}", "--local", *args],
            env=self.env(), capture_output=True, text=True, timeout=timeout, check=False,
        )

    def apply(self, *args, sls="jupyter"):
        """state.apply; returns Salt's result dict (raises when the output is not JSON)."""
        proc = self.salt_call("state.apply", sls, *args, "--out=json", "--retcode-passthrough")
        try:
            return json.loads(proc.stdout)["local"]
        except (ValueError, KeyError) as exc:
            raise AssertionError(f"state.apply gave no JSON:\n{proc.stdout}\n{proc.stderr}") from exc

    def settings(self):
        proc = self.salt_call("jupyter.settings", "--out=json")
        return json.loads(proc.stdout)["local"]

    # --- what runs -------------------------------------------------------

    @property
    def program(self):
        return self.pillar.get("supervisor", {}).get("program", "jupyter")

    def jupyter_pid(self):
        """The Jupyter process while it is up: RUNNING, or STARTING (an apply returns as
        soon as Jupyter listens, supervisor says RUNNING only after its startsecs)."""
        proc = self.salt_call("supervisor_rpc.status", self.program, "--out=json")
        status = json.loads(proc.stdout)["local"]
        (info,) = status.values()
        return info["pid"] if info["state"] in ("RUNNING", "STARTING") else None

    def wait_for_jupyter(self, timeout=60):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                if self.client().session.get(self.url("api/status"), timeout=5).status_code in (200, 403):
                    return
            except OSError:
                pass
            time.sleep(0.5)
        raise AssertionError(f"Jupyter did not answer at {self.url()} within {timeout}s")

    def url(self, path="", scheme="http"):
        nginx = self.pillar.get("nginx", {})
        tls = nginx.get("tls")
        if scheme == "https":
            port = (tls or {}).get("listen", 443)
        else:
            port = nginx.get("listen", 80)
        base = self.pillar.get("server", {}).get("base_url", "/")
        default = {"http": 80, "https": 443}[scheme]
        netloc = "127.0.0.1" if port == default else f"127.0.0.1:{port}"  # as a browser writes it
        return f"{scheme}://{netloc}{base}{path}"

    def client(self, scheme="http"):
        return JupyterClient(self.url(scheme=scheme), verify=False)


def nginx_pids():
    """(master pid, sorted worker pids) of the running nginx."""
    master = int(Path("/run/nginx.pid").read_text().strip())
    children = Path(f"/proc/{master}/task/{master}/children").read_text().split()
    return master, sorted(int(pid) for pid in children)
