"""
The hardening deployment of the formula on this host (issue #5) and the helpers of its
tests: its own user, paths, supervisor program, nginx site and ports, served over HTTPS
with a self-signed certificate given as pillar PEM text. The fixtures are in conftest.py.
"""

import contextlib
import hashlib
import os
import secrets
import stat
import subprocess
import time

import requests

from support.deployment import PILLAR_DIR, Deployment

NAME = "hardening"
HTTP_PORT = 8082
HTTPS_PORT = 8443
PROGRAM = "jupyter-hardening"
SITE = "jupyter-hardening"
SUPERVISOR_SOCKET = "/var/run/supervisor.sock"
SUPERVISOR_CONF = f"/etc/supervisor/conf.d/{PROGRAM}.conf"
SITE_FILES = (f"/etc/nginx/sites-available/{SITE}.conf", f"/etc/nginx/sites-enabled/{SITE}.conf")
TLS_FILES = (f"/etc/ssl/jupyter/{SITE}.crt", f"/etc/ssl/jupyter/{SITE}.key")
VENV = "/opt/jupyter-hardening/venv"
CONFIG_FILE = "/etc/jupyter-hardening/jupyter_server_config.json"
# What an apply may change: the trees compared before and after one that must change nothing.
TREES = ("/etc/nginx", "/etc/supervisor", "/etc/jupyter-hardening", "/etc/ssl/jupyter", VENV)


def new_password():
    """A unique plaintext: if it shows up anywhere, it came from this session."""
    return "hard-" + secrets.token_hex(16)


def base_pillar(password, cert_pem, key_pem):
    return {
        "user": "jupyterhard",
        "root_dir": "/srv/jupyter-hardening",
        "venv": VENV,
        "config_file": CONFIG_FILE,
        "packages": ["jupyterlab==4.6.6"],
        "password": password,
        "server": {"port": 8891},
        "supervisor": {
            "program": PROGRAM,
            "log_dir": "/var/log/jupyter-hardening",
        },
        "nginx": {
            "site": SITE,
            "listen": HTTP_PORT,
            # other deployments own the catch-all; this one answers on its own ports anyway
            "default_server": False,
            "login_rate_limit": {"rate": "100r/s", "burst": 1000},
            "tls": {"listen": HTTPS_PORT, "certificate_pem": cert_pem, "certificate_key_pem": key_pem},
        },
    }


class Hardening(Deployment):
    """The hardening deployment, with its known-good pillar to come back to."""

    def __init__(self, base):
        self.base = base
        self.applied_base = False
        super().__init__(NAME, base)

    @property
    def password(self):
        return self.pillar["password"]

    def ensure_base(self):
        """Apply the base pillar unless it is what the host has now."""
        if self.applied_base and self.pillar == self.base:
            return
        self.write_pillar(self.base)
        proc = self.deploy()
        assert proc.returncode == 0, f"deploy.sh failed:\n{proc.stdout[-6000:]}\n{proc.stderr[-3000:]}"
        self.applied_base = True
        self.wait_for_jupyter()

    def apply_pillar(self, pillar, *args):
        """Apply pillar (the host no longer has the base one); Salt's result dict."""
        self.write_pillar(pillar)
        self.applied_base = False
        return self.apply(*args)

    def login(self):
        client = self.client("https")
        assert client.login(self.password), f"login refused: HTTP {client.last_login_status}"
        return client


def make_certificate():
    """A self-signed certificate for 127.0.0.1 (PEM texts), made outside the scanned trees."""
    work = PILLAR_DIR / "hardening-tls"
    work.mkdir(parents=True, mode=0o700, exist_ok=True)
    cert, key = work / "cert.pem", work / "key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
         "-nodes", "-days", "2", "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1",
         "-keyout", str(key), "-out", str(cert)],
        check=True, capture_output=True,
    )
    pems = cert.read_text(), key.read_text()
    cert.unlink()
    key.unlink()
    work.rmdir()
    return pems


def remove_from_host(dep):
    """The deployment's program, site and certificate off the host; nginx reloaded."""
    program = dep.salt_call(
        "state.single", "supervisor_program.absent", f"name={PROGRAM}",
        f"conf_file={SUPERVISOR_CONF}", f"socket={SUPERVISOR_SOCKET}", "--retcode-passthrough",
    )
    for path in SITE_FILES + TLS_FILES:
        if os.path.lexists(path):
            os.unlink(path)
    with contextlib.suppress(OSError):  # the formula's TLS directory, when no other site uses it
        os.rmdir(os.path.dirname(TLS_FILES[0]))
    subprocess.run(["nginx", "-t", "-q"], check=True)
    subprocess.run(["service", "nginx", "reload"], check=True, capture_output=True)
    dep.pillar_file.unlink(missing_ok=True)
    assert program.returncode == 0, f"supervisor program not removed:\n{program.stdout}\n{program.stderr}"


# --- helpers ---------------------------------------------------------------

_DIGESTS = {}


def _file_digest(path, st):
    """sha256 of a file, cached while its inode, size, mtime and ctime stay the same."""
    key = (path, st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)
    if key not in _DIGESTS:
        digest = hashlib.sha256()
        with open(path, "rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
        _DIGESTS[key] = digest.hexdigest()
    return _DIGESTS[key]


def tree_checksums(roots=TREES):
    """{path: (type, mode, uid, gid, content digest or link target)} of every entry under roots."""
    out = {}
    for root in roots:
        for top, dirs, files in os.walk(root):
            for name in dirs + files:
                path = os.path.join(top, name)
                st = os.lstat(path)
                if stat.S_ISLNK(st.st_mode):
                    what = "link:" + os.readlink(path)
                elif stat.S_ISREG(st.st_mode):
                    what = _file_digest(path, st)
                else:
                    what = ""
                out[path] = (stat.S_IFMT(st.st_mode), stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid, what)
            if top == root:
                st = os.lstat(root)
                out[root] = (stat.S_IFMT(st.st_mode), stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid, "")
    return out


def assert_same_trees(before, after):
    differing = sorted(p for p in set(before) | set(after) if before.get(p) != after.get(p))
    assert not differing, f"{len(differing)} paths changed, e.g.: {differing[:10]}"


def supervisor_status(program=PROGRAM):
    """(state, pid) of a supervisor program, as supervisorctl prints it."""
    proc = subprocess.run(
        ["supervisorctl", "-s", f"unix://{SUPERVISOR_SOCKET}", "status", program],
        capture_output=True, text=True, check=False,
    )
    fields = proc.stdout.split()
    state = fields[1] if len(fields) > 1 else proc.stdout.strip()
    pid = int(fields[3].rstrip(",")) if state == "RUNNING" and len(fields) > 3 else None
    return state, pid


def wait_for(predicate, timeout, step=0.1):
    """Seconds until predicate() was true; AssertionError after timeout."""
    start = time.monotonic()
    while time.monotonic() - start < timeout:
        if predicate():
            return time.monotonic() - start
        time.sleep(step)
    raise AssertionError(f"not within {timeout}s: {predicate.__doc__ or predicate}")


def site_answers(dep):
    """The site logs in and answers an API call over HTTPS."""
    try:
        client = dep.client("https")
        return client.login(dep.password) and client.api("GET", "status").status_code == 200
    except (OSError, requests.RequestException):
        return False
