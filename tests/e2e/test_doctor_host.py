"""
``jupyter.doctor`` on THIS host (issue 14): a healthy deployment passes every check and
``salt-call jupyter.doctor`` exits 0; with each fault injected, exactly the matching
check fails and the exit code is non-zero; each fault is undone (and the host healthy
again) before the next.

The deployment is the test's own (names, ports, paths): two instances under one TLS
site. Instance a has its password in pillar, so the doctor logs in and *observes* the
websocket headers (tornado's own checks); b has only a hash, so for b they are read
from ``nginx -T``. Both paths are proven by the same faults.

Decided for fault (1), the Upgrade header stripped by editing the live site file: the
edit IS drift (the file is no longer what pillar renders), so the doctor reports both
``websocket`` (a and b) and ``drift`` of the site file, naming the removed lines; the
test asserts exactly those three.
"""

import datetime
import errno
import ipaddress
import json
import os
import shutil
import subprocess
import time
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from support.deployment import Deployment, failed, first_json, host_lock
from support.figures import record
from support.loader import load

pytestmark = pytest.mark.e2e

NAME = "doctor"
HTTP, HTTPS = 8097, 8447
PORTS = {"a": 8931, "b": 8932}
PASSWORD_A = "Doctor-A-Granite-57-harbor"
PASSWORD_B = "Doctor-B-Meadow-64-copper"
SITE = "jft-doctor"
SITE_FILE = Path(f"/etc/nginx/sites-available/{SITE}.conf")
ROOT = Path("/srv/jft-doctor")
CONFIG_DIR = Path("/etc/jft-doctor")
DOCTOR_BUDGET = 5.0  # seconds the doctor itself may take (summary.seconds)


def certificate(days):
    """A self-signed certificate for 127.0.0.1 valid for `days` more days (PEM texts)."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (
        x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(hours=1))
        .not_valid_after(now + datetime.timedelta(days=days))
        .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False)
        .sign(key, hashes.SHA256())
    )
    key_pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption()).decode()
    return cert.public_bytes(serialization.Encoding.PEM).decode(), key_pem


def pillar(cert_days=90):
    cert_pem, key_pem = certificate(cert_days)
    hashed_b = load("_modules", "jupyter_password").hash_password(PASSWORD_B)
    return {
        "packages": ["jupyterlab==4.6.6"],
        "root_dir": str(ROOT),
        "venv": "/opt/jft-doctor/venv",
        "venv_store": "/opt/jft-doctor/venvs",
        "state_dir": "/var/lib/jft-doctor",
        "config_file": f"{CONFIG_DIR}/jupyter.json",
        "supervisor": {"program": "jft-doctor", "log_dir": "/var/log/jft-doctor"},
        "nginx": {
            "site": SITE, "listen": HTTP, "default_server": False,
            # the doctor logs in once per run for a; the tests run it ~10 times a minute
            "login_rate_limit": {"rate": "300r/m", "burst": 100},
            "tls": {"listen": HTTPS, "certificate_pem": cert_pem, "certificate_key_pem": key_pem},
        },
        "instances": {
            "a": {"user": "jftdoca", "password": PASSWORD_A, "server": {"port": PORTS["a"], "base_url": "/a/"}},
            "b": {"user": "jftdocb", "hashed_password": hashed_b, "server": {"port": PORTS["b"], "base_url": "/b/"}},
        },
    }


def doctor(dep, *args):
    """salt-call jupyter.doctor: (exit code, its result, wall seconds)."""
    start = time.monotonic()
    proc = dep.salt_call("jupyter.doctor", *args, "--out=json", timeout=120)
    wall = time.monotonic() - start
    try:
        result = first_json(proc.stdout)["local"]
    except (ValueError, KeyError, TypeError) as exc:
        raise AssertionError(f"jupyter.doctor gave no JSON:\n{proc}") from exc
    assert isinstance(result, dict), f"jupyter.doctor failed:\n{proc}"
    return proc.rc, result, wall


def failing(result):
    return sorted((c["check"], c["target"]) for c in result["checks"] if c["ok"] is False)


def entry(result, check, target):
    (found,) = [c for c in result["checks"] if (c["check"], c["target"]) == (check, target)]
    return found


def wait_running(dep, program, timeout=30):
    """Until supervisor says RUNNING (the doctor accepts STARTING too, but a clean
    baseline is what the next fault starts from)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        status = first_json(dep.salt_call("supervisor_rpc.status", program, "--out=json").stdout)["local"]
        if status[program]["state"] == "RUNNING":
            return
        time.sleep(0.5)
    raise AssertionError(f"{program} is not RUNNING after {timeout}s")


def assert_healthy(dep):
    rc, result, wall = doctor(dep)
    assert failing(result) == [] and rc == 0, json.dumps(result, indent=1)
    assert all(c["ok"] is True for c in result["checks"]), [c for c in result["checks"] if c["ok"] is not True]
    return result, wall


def remove_notebooks():
    """The test's own root_dir tree (jupyter.clean keeps notebooks by design, and the
    validator refuses a root_dir the formula did not create): a tmpfs left mounted by an
    interrupted run first."""
    mounts = [line.split()[1] for line in Path("/proc/mounts").read_text().splitlines()]
    for mount in sorted((m for m in mounts if m.startswith(f"{ROOT}/")), reverse=True):
        subprocess.run(["umount", mount], check=True, capture_output=True)
    shutil.rmtree(ROOT, ignore_errors=True)


@pytest.fixture(scope="module")
def deployed():
    with host_lock():
        remove_notebooks()  # of an interrupted run of this test (its own path)
        dep = Deployment(NAME, pillar())
        proc = dep.deploy()
        assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-3000:]
        for name in PORTS:
            wait_running(dep, f"jft-doctor-{name}")
        try:
            yield dep
        finally:
            # jupyter.clean with its accounts, then deploy.sh's config dir, pillar file, cache
            cleaned = dep.clean(user=True)
            remove_notebooks()
            # the record that jupyter.clean keeps of the notebooks, gone with them (the test's own path)
            shutil.rmtree(dep.pillar["state_dir"], ignore_errors=True)
            assert not failed(cleaned), failed(cleaned)


def test_healthy_host_every_check_passes_and_salt_call_exits_0(deployed):
    result, wall = assert_healthy(deployed)
    checks = {(c["check"], c["target"]) for c in result["checks"]}
    assert checks == {
        ("nginx", "nginx -t"),
        *((check, name) for check in ("program", "login", "websocket", "proxy_headers") for name in PORTS),
        ("tls", SITE),
        ("disk", str(ROOT / "a")), ("disk", str(ROOT / "b")),
        ("drift", str(CONFIG_DIR / "a.json")), ("drift", str(CONFIG_DIR / "b.json")), ("drift", str(SITE_FILE)),
    }
    # a: logged in, the websocket headers observed; b: only a hash, read from nginx -T
    assert "pillar's password logs in" in entry(result, "login", "a")["detail"]
    assert "101 Switching Protocols" in entry(result, "websocket", "a")["detail"]
    assert "Upgrade, Connection and Host observed" in entry(result, "websocket", "a")["detail"]
    assert "Jupyter's own 403 (its auth refusal)" in entry(result, "websocket", "b")["detail"]
    assert "not observed (pillar has only the password's hash)" in entry(result, "websocket", "b")["detail"]
    for name in PORTS:
        # the client address seen in Jupyter's own log, not the forged X-Real-IP
        assert "observed: Jupyter logged the probe from 127.0.0.2" in entry(result, "proxy_headers", name)["detail"]
    assert "nginx serves it on port 8447" in entry(result, "tls", SITE)["detail"]
    summary = result["summary"]
    assert summary["ok"] is True and summary["failed"] == summary["skipped"] == 0
    assert summary["checks"] == summary["passed"] == len(checks)
    assert summary["seconds"] < DOCTOR_BUDGET, summary

    # the default outputter, as an admin or monitoring calls it
    text = deployed.salt_call("jupyter.doctor", timeout=120)
    assert text.rc == 0 and "websocket" in text.stdout and PASSWORD_A not in text.stdout + text.stderr
    runs = sorted(doctor(deployed)[1]["summary"]["seconds"] for _ in range(3))
    record("e2e", f"jupyter.doctor, 2 instances + TLS site, healthy: {len(checks)} checks, "
                  f"doctor {runs[1]:.2f} s (median of 3, {runs[0]:.2f}-{runs[2]:.2f}), salt-call wall {wall:.2f} s")
    if os.environ.get("JUPYTER_DOCTOR_SHOW"):  # the output the README shows
        record("salt-call jupyter.doctor", "\n" + text.stdout)
        record("salt-call jupyter.doctor --out=yaml", "\n" + deployed.salt_call("jupyter.doctor", "--out=yaml").stdout)


def test_upgrade_header_stripped_fails_websocket_and_drift(deployed):
    original = SITE_FILE.read_text()
    stripped = "".join(line for line in original.splitlines(True) if "proxy_set_header Upgrade" not in line)
    assert stripped != original
    SITE_FILE.write_text(stripped)
    try:
        subprocess.run(["service", "nginx", "reload"], check=True, capture_output=True)
        rc, result, _ = doctor(deployed)
        assert rc != 0
        assert failing(result) == [("drift", str(SITE_FILE)), ("websocket", "a"), ("websocket", "b")], \
            json.dumps(result, indent=1)
        # a: observed (tornado's own refusal after the login); b: read from the configuration
        assert "Upgrade header did not reach Jupyter" in entry(result, "websocket", "a")["detail"]
        assert "does not set Upgrade" in entry(result, "websocket", "b")["detail"]
        drift = entry(result, "drift", str(SITE_FILE))["detail"]
        assert "missing on disk: 'proxy_set_header Upgrade $http_upgrade;'" in drift
        assert result["summary"]["failures"] == ["websocket a", "websocket b", f"drift {SITE_FILE}"]
    finally:
        SITE_FILE.write_text(original)
        subprocess.run(["service", "nginx", "reload"], check=True, capture_output=True)
    assert_healthy(deployed)


def test_program_stopped_fails_its_program_check_only(deployed):
    stopped = deployed.salt_call("supervisor_rpc.stop", "jft-doctor-a")
    assert stopped.rc == 0, stopped
    try:
        rc, result, _ = doctor(deployed)
        assert rc != 0
        assert failing(result) == [("program", "a")], json.dumps(result, indent=1)
        assert entry(result, "program", "a")["detail"].startswith("jft-doctor-a: STOPPED")
        # what goes through nginx to a is not asked: its program check names the cause
        skipped = sorted((c["check"], c["target"]) for c in result["checks"] if c["ok"] is None)
        assert skipped == [("login", "a"), ("proxy_headers", "a"), ("websocket", "a")]
    finally:
        started = deployed.salt_call("supervisor_rpc.start", "jft-doctor-a", f"ready_port={PORTS['a']}")
        assert started.rc == 0, started
    wait_running(deployed, "jft-doctor-a")
    assert_healthy(deployed)


def test_certificate_about_to_expire_fails_tls_only(deployed):
    good = deployed.pillar
    deployed.write_pillar({**good, "nginx": {**good["nginx"], "tls": {
        **good["nginx"]["tls"], **dict(zip(("certificate_pem", "certificate_key_pem"), certificate(2)))}}})
    try:
        results = deployed.apply()
        assert not failed(results), failed(results)
        rc, result, _ = doctor(deployed)
        assert rc != 0
        assert failing(result) == [("tls", SITE)], json.dumps(result, indent=1)
        detail = entry(result, "tls", SITE)["detail"]
        assert "under the threshold of 14 days" in detail and "nginx serves it on port 8447" in detail
        # the threshold is a parameter
        rc, result, _ = doctor(deployed, "cert_days=1")
        assert rc == 0 and failing(result) == []
    finally:
        deployed.write_pillar(good)
        results = deployed.apply()
        assert not failed(results), failed(results)
    assert_healthy(deployed)


def test_root_dir_full_fails_disk_only(deployed):
    root = ROOT / "a"
    info = root.stat()
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size=1m,mode=0750,uid={info.st_uid},gid={info.st_gid}",
                    f"tmpfs-{NAME}", str(root)], check=True, capture_output=True)
    try:
        try:
            with open(root / "fill", "wb") as out:
                while True:
                    out.write(b"\0" * 65536)
                    out.flush()
        except OSError as exc:
            assert exc.errno == errno.ENOSPC
        rc, result, _ = doctor(deployed)
        assert rc != 0
        assert failing(result) == [("disk", str(root))], json.dumps(result, indent=1)
        assert "under 5%" in entry(result, "disk", str(root))["detail"]
    finally:
        subprocess.run(["umount", str(root)], check=True, capture_output=True)
    assert_healthy(deployed)
