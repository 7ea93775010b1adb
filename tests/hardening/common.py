"""
The hardening deployment (issues 5, 10, 11), on each target (this host, a systemd lab
node): names, paths and ports of its own, served over HTTPS with a self-signed
certificate given as pillar PEM text. The fixtures are in conftest.py.
"""

import os
import secrets
import subprocess
import time

import pytest

from support.deployment import PILLAR_DIR, Deployment, own_pillar
from support.target import HOST

TAG = "hard"
HTTP_PORT = 8183
HTTPS_PORT = 8483
JUPYTER_PORT = 8923
FOREIGN_PORT = 8184  # a foreign site's port (test_nginx_full_config.py)
BASE = own_pillar(TAG, HTTP_PORT, JUPYTER_PORT, "")
PROGRAM = BASE["supervisor"]["program"]
SITE = BASE["nginx"]["site"]
USER = BASE["user"]
CONFIG_FILE = BASE["config_file"]
VENV_LINK = BASE["venv"]
PROGRAM_FILE = f"/etc/supervisor/conf.d/{PROGRAM}.conf"
SITE_FILES = (f"/etc/nginx/sites-available/{SITE}.conf", f"/etc/nginx/sites-enabled/{SITE}.conf")
TLS_FILES = (f"/etc/ssl/jupyter/{SITE}.crt", f"/etc/ssl/jupyter/{SITE}.key")
# What an apply may change: compared before and after one that must change nothing
# (accounts included: a refused pillar must not make or alter one).
TREES = ("/etc/nginx", "/etc/supervisor", "/etc/jft-hard", "/etc/ssl/jupyter", "/opt/jft-hard", "/var/lib/jft-hard",
         "/srv/jft-hard", "/etc/systemd/system", "/etc/passwd", "/etc/group", "/etc/shadow", "/etc/gshadow")
# Set to allow skipping (instead of failing) the faults that kill or restart the daemons
# a real deployment on this host shares with the tests.
SKIP_SHARED = "JUPYTER_FORMULA_SKIP_SHARED_FAULTS"


def new_password():
    """A unique plaintext: if it shows up anywhere, it came from this session."""
    return "hard-" + secrets.token_hex(16)


def base_pillar(password, cert_pem, key_pem):
    pillar = own_pillar(TAG, HTTP_PORT, JUPYTER_PORT, password)
    pillar["nginx"].update({
        # not the catch-all of its ports: other sites may live on the host
        "default_server": False,
        "login_rate_limit": {"rate": "100r/s", "burst": 1000},
        "tls": {"listen": HTTPS_PORT, "certificate_pem": cert_pem, "certificate_key_pem": key_pem},
    })
    return pillar


class Hardening(Deployment):
    """The hardening deployment, with its known-good pillar to come back to."""

    def __init__(self, target, base):
        self.base = base
        self.applied_base = False
        self.removed = False  # jupyter.clean ran (test_clean.py)
        super().__init__(target, "hardening", base)

    def ensure_base(self):
        """Apply the base pillar unless it is what the target has now."""
        if self.applied_base and self.pillar == self.base:
            return
        self.removed = False
        self.write_pillar(self.base)
        proc = self.deploy()
        assert proc.ok, f"deploy.sh failed on {self.target.name}:\n{proc}"
        self.applied_base = True
        self.wait_for_jupyter()

    def apply_pillar(self, pillar, *args):
        """Apply pillar (the target no longer has the base one); Salt's result dict."""
        self.write_pillar(pillar)
        self.applied_base = False
        return self.apply(*args)

    def back_to_base(self):
        """Re-apply the base pillar (after a test that changed it)."""
        self.applied_base = False
        self.ensure_base()


def make_certificate(address="127.0.0.1"):
    """A self-signed certificate for the target's address (PEM texts), made outside the
    scanned trees."""
    work = PILLAR_DIR / "hardening-tls"
    work.mkdir(parents=True, mode=0o700, exist_ok=True)
    cert, key = work / "cert.pem", work / "key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
         "-nodes", "-days", "2", "-subj", f"/CN={address}", "-addext", f"subjectAltName=IP:{address}",
         "-keyout", str(key), "-out", str(cert)],
        check=True, capture_output=True,
    )
    pems = cert.read_text(), key.read_text()
    cert.unlink()
    key.unlink()
    work.rmdir()
    return pems


# --- helpers ---------------------------------------------------------------


def assert_same_trees(before, after):
    differing = sorted(p for p in set(before) | set(after) if before.get(p) != after.get(p))
    assert not differing, f"{len(differing)} paths changed, e.g.: {differing[:10]}"


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
        client = dep.client("https", timeout=10)
        return client.login(dep.password) and client.api("GET", "status").status_code == 200
    except Exception:  # noqa: BLE001 - not answering, whatever the reason
        return False


def shared_daemons_guard(target, what):
    """Faults that kill or restart nginx or supervisord hit every program and site they
    serve. On this host they run only while nothing but the tests' own deployments
    (names jft-*) use those daemons: with a real deployment here the test fails with
    the reason (or is skipped when JUPYTER_FORMULA_SKIP_SHARED_FAULTS=1)."""
    if target is not HOST:
        return
    foreign = [f"program {p}" for p in HOST.foreign_programs("jft-")]
    foreign += [f"site {s}" for s in HOST.foreign_sites("jft-")]
    if not foreign:
        return
    message = (f"{what} would hit what else this host serves ({', '.join(foreign)}); "
               f"not done here (a lab node runs it; {SKIP_SHARED}=1 skips it on this host)")
    if os.environ.get(SKIP_SHARED) == "1":
        pytest.skip(message)
    pytest.fail(message, pytrace=False)
