"""Pebble, Let's Encrypt's ACME test server, on the host's bridge address.

Debian's `pebble` package ships both servers used here:

- `pebble`: the ACME server.  Its HTTPS API (port 14000) and management API (port
  15000, where /roots/0 gives the root that issues the certificates) use a
  certificate the lab makes with openssl: a small CA of its own, in
  STATE/pebble/api-ca.pem, which ACME clients trust (certbot through
  REQUESTS_CA_BUNDLE, the formula through `acme.ca_bundle`).  Validations of
  http-01 go to port 80 of the node (`httpPort: 80`; Pebble's default is 5002).
- `pebble-challtestsrv`: a DNS server with a management API to add A records.
  Pebble resolves names through it (`-dnsserver`), so a node's name resolves to its
  address without touching the host's /etc/hosts.

Pebble makes a new root at every start: read it after ensure_pebble(), not before.
The nodes reach Pebble directly on the bridge: an ACME client in a node that has
https_proxy set must have HOST_IP in no_proxy (the lab's tinyproxy only CONNECTs to 443).
"""
from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
import signal
import ssl
import subprocess
import urllib.request
from pathlib import Path

from .base import STATE, LabError, locked, log, pid_from, sh, wait_for, write
from .network import HOST_IP, ensure_bridge, listening

PEBBLE_DIR = STATE / "pebble"
API_PORT = 14000
MANAGEMENT_PORT = 15000
DNS_PORT = 8053
DNS_MANAGEMENT_PORT = 8055
DIRECTORY_URL = f"https://{HOST_IP}:{API_PORT}/dir"
MANAGEMENT_URL = f"https://{HOST_IP}:{MANAGEMENT_PORT}"
DNS_MANAGEMENT_URL = f"http://{HOST_IP}:{DNS_MANAGEMENT_PORT}"
DNS_DOMAIN = "lab.test"  # RFC 6761: never a real name

API_CA = PEBBLE_DIR / "api-ca.pem"
_API_CA_KEY = PEBBLE_DIR / "api-ca.key"
_API_CERT = PEBBLE_DIR / "api.pem"
_API_KEY = PEBBLE_DIR / "api.key"
_CONFIG = PEBBLE_DIR / "pebble-config.json"
_DNS_RECORDS = PEBBLE_DIR / "dns.json"
_PEBBLE_PID = PEBBLE_DIR / "pebble.pid"
_DNS_PID = PEBBLE_DIR / "challtestsrv.pid"

# By default Pebble sleeps up to 15 s before each validation, rejects 5% of good
# nonces, and reuses a valid authorization for half of the orders (skipping the
# challenge), to shake out clients.  The lab wants fast issuance that validates
# every order, so that a test with port 80 blocked fails every time.
PEBBLE_ENV = {"PEBBLE_VA_NOSLEEP": "1", "PEBBLE_WFE_NONCEREJECT": "0", "PEBBLE_AUTHZREUSE": "0"}

_children: dict[str, subprocess.Popen] = {}


def node_fqdn(node: str) -> str:
    """The DNS name the lab gives node NAME in Pebble's resolver (see add_dns)."""
    return f"{node}.{DNS_DOMAIN}"


def info() -> dict:
    """Where Pebble is, for ACME clients (see ensure_pebble)."""
    return {
        "directory": DIRECTORY_URL,
        "ca_bundle": str(API_CA),
        "management": MANAGEMENT_URL,
        "roots_url": f"{MANAGEMENT_URL}/roots/0",
        "dns": f"{HOST_IP}:{DNS_PORT}",
        "domain": DNS_DOMAIN,
        "no_proxy": HOST_IP,
        "log": str(PEBBLE_DIR / "pebble.log"),
    }


def pebble_pid() -> int | None:
    return pid_from(_PEBBLE_PID, str(_CONFIG))


def dns_pid() -> int | None:
    return pid_from(_DNS_PID, f"{HOST_IP}:{DNS_MANAGEMENT_PORT}")


def _opener():
    """HTTPS to Pebble's APIs from the host: trusting the lab's API CA, never through a proxy."""
    context = ssl.create_default_context(cafile=str(API_CA))
    return urllib.request.build_opener(urllib.request.ProxyHandler({}),
                                       urllib.request.HTTPSHandler(context=context))


def _make_api_certificate() -> None:
    """A CA of the lab's own and, signed by it, the certificate of Pebble's APIs (SAN: HOST_IP)."""
    if _API_CERT.exists() and API_CA.exists() and \
            sh("openssl", "x509", "-checkend", str(30 * 86400), "-noout", "-in", str(_API_CERT),
               check=False).returncode == 0:
        return
    PEBBLE_DIR.mkdir(parents=True, exist_ok=True)
    ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
    sh("openssl", "req", "-x509", *ec, "-keyout", str(_API_CA_KEY), "-out", str(API_CA), "-days", "3650",
       "-subj", "/CN=jflab Pebble API CA", "-addext", "basicConstraints=critical,CA:TRUE",
       "-addext", "keyUsage=critical,keyCertSign,cRLSign")
    csr = PEBBLE_DIR / "api.csr"
    ext = PEBBLE_DIR / "api.ext"
    sh("openssl", "req", "-new", *ec, "-keyout", str(_API_KEY), "-out", str(csr), "-subj", f"/CN={HOST_IP}")
    write(ext, f"""\
basicConstraints = critical,CA:FALSE
keyUsage = critical,digitalSignature
extendedKeyUsage = serverAuth
subjectAltName = IP:{HOST_IP}
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid:always
""")
    sh("openssl", "x509", "-req", "-in", str(csr), "-CA", str(API_CA), "-CAkey", str(_API_CA_KEY),
       "-set_serial", "0x" + secrets.token_hex(8), "-days", "3650", "-extfile", str(ext), "-out", str(_API_CERT))
    for key in (_API_CA_KEY, _API_KEY):
        key.chmod(0o600)
    csr.unlink()
    ext.unlink()


def _start(what: str, cmd: list[str], pidfile: Path, env: dict | None = None) -> None:
    # Neither server has a proxy to use: drop any *_proxy the caller has.
    base = {k: v for k, v in os.environ.items() if not k.lower().endswith("_proxy")}
    with open(PEBBLE_DIR / f"{what}.log", "ab") as out:
        proc = subprocess.Popen(cmd, cwd=PEBBLE_DIR, stdin=subprocess.DEVNULL, stdout=out,
                                stderr=subprocess.STDOUT, start_new_session=True, env={**base, **(env or {})})
    _children[what] = proc
    pidfile.write_text(f"{proc.pid}\n")


def _died(what: str) -> bool:
    proc = _children.get(what)
    return proc is not None and proc.poll() is not None


def _log_tail(what: str) -> str:
    path = PEBBLE_DIR / f"{what}.log"
    return path.read_text(errors="replace")[-2000:] if path.exists() else ""


def _directory_answers() -> bool:
    with contextlib.suppress(OSError, ValueError), _opener().open(DIRECTORY_URL, timeout=3) as resp:
        return resp.status == 200 and "newOrder" in json.load(resp)
    return False


def ensure_pebble() -> dict:
    """Start Pebble and its DNS server on the bridge address (unless they run).  Returns info().

    {"directory": the ACME directory URL, "ca_bundle": the CA file that trusts
    Pebble's API, "roots_url": where Pebble's issuing root is (see pebble_root()),
    "no_proxy": what an ACME client in a node must reach directly, ...}
    """
    missing = [tool for tool in ("pebble", "pebble-challtestsrv", "openssl") if not shutil.which(tool)]
    if missing:
        raise LabError(f"{', '.join(missing)} missing: apt-get install pebble openssl")
    with locked("pebble"):  # two callers at once would start two of each
        ensure_bridge()
        PEBBLE_DIR.mkdir(parents=True, exist_ok=True)
        _make_api_certificate()
        if not dns_pid():
            _start("challtestsrv", ["pebble-challtestsrv", "-management", f"{HOST_IP}:{DNS_MANAGEMENT_PORT}",
                                    "-dns01", f"{HOST_IP}:{DNS_PORT}",
                                    # only DNS: no challenge servers, and no answer for unknown names
                                    "-http01", "", "-https01", "", "-tlsalpn01", "",
                                    "-defaultIPv4", "", "-defaultIPv6", ""], _DNS_PID)
            wait_for("pebble-challtestsrv to listen",
                     lambda: _died("challtestsrv") or listening(HOST_IP, DNS_MANAGEMENT_PORT), 10)
            if _died("challtestsrv"):
                raise LabError(f"pebble-challtestsrv exited:\n{_log_tail('challtestsrv')}")
            for name, ip in _records().items():  # records kept across a restart of the DNS server
                _post_dns("add-a", {"host": name, "addresses": [ip]})
        if not pebble_pid():
            write(_CONFIG, json.dumps({"pebble": {
                "listenAddress": f"{HOST_IP}:{API_PORT}",
                "managementListenAddress": f"{HOST_IP}:{MANAGEMENT_PORT}",
                "certificate": str(_API_CERT),
                "privateKey": str(_API_KEY),
                "httpPort": 80,
                "tlsPort": 443,
                "ocspResponderURL": "",
                "externalAccountBindingRequired": False,
            }}, indent=2) + "\n")
            _start("pebble", ["pebble", "-config", str(_CONFIG), "-dnsserver", f"{HOST_IP}:{DNS_PORT}"],
                   _PEBBLE_PID, PEBBLE_ENV)
            wait_for("Pebble's directory", lambda: _died("pebble") or _directory_answers(), 20, interval=0.3)
            if _died("pebble"):
                raise LabError(f"pebble exited:\n{_log_tail('pebble')}")
            log(f"pebble: {DIRECTORY_URL} (pid {pebble_pid()}), DNS {HOST_IP}:{DNS_PORT} (pid {dns_pid()})")
    return info()


def _records() -> dict[str, str]:
    with contextlib.suppress(FileNotFoundError, ValueError):
        return json.loads(_DNS_RECORDS.read_text())
    return {}


def _post_dns(path: str, body: dict) -> None:
    req = urllib.request.Request(f"{DNS_MANAGEMENT_URL}/{path}", data=json.dumps(body).encode(), method="POST")
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    with opener.open(req, timeout=5) as resp:
        if resp.status != 200:
            raise LabError(f"pebble-challtestsrv /{path} {body}: HTTP {resp.status}")


def add_dns(name: str, ip: str) -> None:
    """Make name resolve to ip (an A record) for Pebble's validations; starts Pebble if needed."""
    fqdn = name.rstrip(".") + "."  # the DNS server keys its records by fully qualified name
    ensure_pebble()
    _post_dns("add-a", {"host": fqdn, "addresses": [ip]})
    _DNS_RECORDS.write_text(json.dumps({**_records(), fqdn: ip}, indent=2) + "\n")


def remove_dns(name: str) -> None:
    fqdn = name.rstrip(".") + "."
    if dns_pid():
        _post_dns("clear-a", {"host": fqdn})
    records = _records()
    records.pop(fqdn, None)
    if _DNS_RECORDS.exists():
        _DNS_RECORDS.write_text(json.dumps(records, indent=2) + "\n")


def pebble_root() -> str:
    """PEM of the root that issues Pebble's certificates (from its management API)."""
    if not pebble_pid():
        raise LabError("pebble is not running: ensure_pebble() first")
    with _opener().open(f"{MANAGEMENT_URL}/roots/0", timeout=10) as resp:
        return resp.read().decode()


def _stop(what: str, pid_of, pidfile: Path) -> None:
    pid = pid_of()
    if pid:
        os.kill(pid, signal.SIGTERM)
        # a child of this process lingers as a zombie: pid_of() sees no command line then
        with contextlib.suppress(LabError):
            wait_for(f"{what} to exit", lambda: _died(what) or not pid_of(), 10)
        if pid_of():
            os.kill(pid, signal.SIGKILL)
    proc = _children.pop(what, None)
    if proc is not None:
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=5)
    pidfile.unlink(missing_ok=True)


def stop_pebble() -> None:
    """Stop Pebble and its DNS server (their records go with them).  Idempotent."""
    _stop("pebble", pebble_pid, _PEBBLE_PID)
    _stop("challtestsrv", dns_pid, _DNS_PID)
    _DNS_RECORDS.unlink(missing_ok=True)
