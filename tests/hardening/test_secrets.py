"""
Password rotation without leaks: the plaintext password appears nowhere but in the
pillar file (on tmpfs under /run, the admin's input): not on the target's disk under
/etc, /opt, /srv, /var, /root, /home or /tmp (the minion cache included), not in Salt's
output at info or debug level, not in the process list while an apply hashes it (this
host's process list shows the nodes' processes too). Each rotation makes the new
password the only one that logs in.
"""

import json
import re
import subprocess
import threading
import time

from hardening.common import new_password
from support.deployment import changed, failed, first_json, merge
from support.fixtures import WHEELHOUSE_DIR
from support.target import REPO_IN_NODE

SCANNED = ("/etc", "/opt", "/srv", "/var", "/root", "/home", "/tmp")
# Large trees the formula never writes to: package mirrors, toolchains, apt's .deb cache,
# the systemd lab's root filesystem; on nodes, the host's folders bound into them.
NOT_SCANNED = {
    "/opt/pypi", "/opt/pypi-more", "/opt/wheels", "/opt/tf-plugins",
    "/root/.pyenv", "/root/.rustup", "/root/.cargo", "/root/.m2",
    "/var/cache/apt", "/var/cache/jupyter-formula-lab", "/var/lib/jupyter-formula-lab",
    REPO_IN_NODE, "/var/cache/jflab-pip", str(WHEELHOUSE_DIR.parent),
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
    """`ps -eo args` on this host every 50 ms until stopped; keeps the lines that hold a secret."""

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
    results = first_json(proc.stdout)["local"]
    assert not failed(results)
    assert set(changed(results)) == {"jupyter-config-file", "jupyter-supervisor-program"}  # hashed, restarted
    return proc.stdout + proc.stderr, sampler


_ROOTS_SCRIPT = r"""
import json, os, sys
tops, skip = json.loads(sys.argv[1]), set(json.loads(sys.argv[2]))
def roots(path):
    # the path itself, or its children when something to skip lies below it
    if path in skip or os.path.islink(path):
        return []
    if not any(s.startswith(path + "/") for s in skip):
        return [path]
    return [r for name in sorted(os.listdir(path)) for r in roots(os.path.join(path, name))]
print(json.dumps([r for top in tops for name in sorted(os.listdir(top)) for r in roots(os.path.join(top, name))]))
"""


def scan_roots(target):
    """The trees to scan on the target, the NOT_SCANNED ones (at any depth) left out."""
    proc = target.run([target.python, "-c", _ROOTS_SCRIPT, json.dumps(SCANNED), json.dumps(sorted(NOT_SCANNED))],
                      check=True)
    return json.loads(proc.stdout)


def files_holding(target, secrets_):
    """Files under the scanned trees that hold a secret (grep -r does not follow links)."""
    args = ["grep", "-rlsF", "--devices=skip"] + [f"-e{secret}" for secret in secrets_] + ["--"] + scan_roots(target)
    proc = target.run(args, timeout=900)
    assert proc.rc in (0, 1, 2), proc.stderr[-2000:]  # 2: files vanished meanwhile
    return proc.stdout.split()


def test_rotation_keeps_the_plaintext_out_of_logs_processes_and_disk(deployed):
    target = deployed.target
    base = deployed.base["password"]
    seen = {}
    for level in ("debug", "info"):
        password = new_password()
        output, sampler = apply_logged(deployed, password, level)
        # deploy.sh's minion config puts the level first on each log line
        assert re.search(rf"^{level.upper()} ", output, re.M), f"no {level} lines in Salt's output"
        seen[level] = password
        assert not leaks(output, [password, base]), f"Salt output at -l {level}"
        assert sampler.samples >= 20, sampler.samples  # the apply was watched all along
        assert not sampler.found, f"process list during the -l {level} apply"

    settings = deployed.salt_call("jupyter.settings", "--out=json").stdout
    assert first_json(settings)["local"]["password"] == "<hidden>"
    assert not leaks(settings, list(seen.values()))
    deployed.wait_for_jupyter()
    assert deployed.login()  # the last password is the one that works ...
    for old in (seen["debug"], base):  # ... the ones before no longer do
        assert not deployed.client("https").login(old)

    # Salt's cache of this deployment is there, under /var, and scanned
    assert target.run(["ls", "-A", deployed.cache_dir]).stdout.strip(), deployed.cache_dir
    # a canary proves that the scan finds what is there
    canary = new_password()
    planted = "/var/tmp/hardening-canary"
    target.write(planted, f"x{canary}x\n")
    try:
        assert files_holding(target, [base, *seen.values(), canary]) == [planted]
    finally:
        target.remove(planted)
