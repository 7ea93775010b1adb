"""
The plaintext password appears nowhere but in the pillar file (on tmpfs under /run, the
admin's input): not on disk under /etc, /opt, /srv, /var, /root, /home or /tmp (the
minion cache included), not in Salt's output at info or debug level, not in the
process list while an apply hashes it.
"""

import json
import os
import subprocess
import tempfile
import threading
import time

from hardening.common import new_password
from support.deployment import changed, failed, merge

SCANNED = ("/etc", "/opt", "/srv", "/var", "/root", "/home", "/tmp")
# Large trees the formula never writes to: package mirrors, toolchains, apt's .deb cache,
# the systemd lab's root filesystem.
NOT_SCANNED = {
    "/opt/pypi", "/opt/pypi-more", "/opt/wheels", "/opt/tf-plugins",
    "/root/.pyenv", "/root/.rustup", "/root/.cargo", "/root/.m2",
    "/var/cache/apt", "/var/cache/jupyter-formula-lab", "/var/lib/jupyter-formula-lab",
}


def leaks(text, secrets_):
    """The lines of text that hold a secret, the secret masked (never print it)."""
    out = []
    for line in text.splitlines():
        if any(secret in line for secret in secrets_):
            for secret in secrets_:
                line = line.replace(secret, "<PASSWORD>")
            out.append(line[:300])
    return out


class ProcessSampler(threading.Thread):
    """`ps -eo args` every 50 ms until stopped; keeps the lines that hold a secret."""

    def __init__(self, secrets_):
        super().__init__(daemon=True)
        self.secrets = secrets_
        self.samples = 0
        self.found = []
        self.done = threading.Event()

    def run(self):
        while not self.done.is_set():
            listing = subprocess.run(["ps", "-eo", "args"], capture_output=True, text=True, check=False).stdout
            self.samples += 1
            self.found += leaks(listing, self.secrets)
            time.sleep(0.05)

    def __enter__(self):
        self.start()
        return self

    def __exit__(self, *exc):
        self.done.set()
        self.join()


def apply_logged(dep, password, level):
    """Apply a new password with Salt logging at `level`, the process list sampled."""
    dep.write_pillar(merge(dep.pillar, {"password": password}))
    dep.applied_base = False
    with ProcessSampler([password]) as sampler:
        proc = dep.salt_call("state.apply", "jupyter", "-l", level, "--out=json", "--retcode-passthrough")
    results = json.loads(proc.stdout)["local"]
    assert not failed(results)
    assert changed(results)["jupyter-config-file"]["password"] == "new hash"  # it was hashed
    return proc.stdout + proc.stderr, sampler


def scan_roots():
    roots = []
    for top in SCANNED:
        for entry in sorted(os.scandir(top), key=lambda e: e.name):
            if entry.path not in NOT_SCANNED and not entry.is_symlink():
                roots.append(entry.path)
    return roots


def files_holding(secrets_):
    """Files under the scanned trees that hold a secret (grep -r does not follow links)."""
    args = ["grep", "-rlsF", "--devices=skip"] + [f"-e{secret}" for secret in secrets_] + ["--"] + scan_roots()
    proc = subprocess.run(args, capture_output=True, text=True, check=False, timeout=600)
    assert proc.returncode in (0, 1, 2), proc.stderr[-2000:]  # 2: files vanished meanwhile
    return proc.stdout.split()


def test_plaintext_stays_out_of_logs_processes_and_disk(deployed):
    base = deployed.base["password"]
    seen = {}
    for level in ("debug", "info"):
        password = new_password()
        output, sampler = apply_logged(deployed, password, level)
        assert "[DEBUG   ]" in output if level == "debug" else "[INFO    ]" in output
        seen[level] = password
        assert not leaks(output, [password, base]), f"Salt output at -l {level}"
        assert sampler.samples >= 20, sampler.samples  # the apply was watched all along
        assert not sampler.found, f"process list during the -l {level} apply"

    settings = deployed.salt_call("jupyter.settings", "--out=json").stdout
    assert json.loads(settings)["local"]["password"] == "<hidden>"
    assert not leaks(settings, list(seen.values()))
    assert deployed.login()  # the last password is the one that works ...
    stale = deployed.client("https")
    assert not stale.login(seen["debug"])  # ... the one before no longer does

    cache = "/var/cache/jupyter-formula/_etc_jupyter-formula-hardening"
    assert any(os.scandir(cache)), cache  # the minion cache is there, and under /var
    # a canary proves that the scan finds what is there
    canary = new_password()
    with tempfile.NamedTemporaryFile("w", dir="/var/tmp", prefix="hardening-canary.") as planted:
        planted.write(f"x{canary}x\n")
        planted.flush()
        assert files_holding([base, *seen.values(), canary]) == [planted.name]
