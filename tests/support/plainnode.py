"""
A lab node whose PID 1 is NOT systemd: the no-systemd host kind (containers, WSL, the
machines this project is built on), isolated from this host.

Why: the faults that kill nginx's master or supervisord hit every site and program those
daemons serve. On this host they can run only while nothing but the tests' own
deployments use them (hardening/common.shared_daemons_guard); a plain node has daemons
of its own, so the no-systemd side of those faults is measured on every machine.

Built from tests/jflab's pieces (not a change to it): the suite's cached rootfs under a
copy-on-write overlay, the lab's bridge and proxy, a cgroup of its own, and
systemd-nspawn WITHOUT --boot: PID 1 is a small init (below) that configures the
network, reaps orphans and powers off on SIGRTMIN+4, as jflab.stop expects. nginx and
supervisord then run from their init scripts, exactly as on this host, and Salt's
`service` states are in OFFLINE mode there too. jflab.down() stops and removes it with
the other nodes.
"""

import shutil
import subprocess

import jflab
from jflab.cgroups import cgroup_dirs, launch, launcher_died, nspawn_common
from jflab.network import BRIDGE, NETWORK, PROXY_URL, allocate_ip
from jflab.node import mount_overlay, unmount_overlay
from jflab.rootfs import NODE_PIP_CACHE, install_host_settings, pip_cache

from support.target import NodeTarget, Result

INIT = "/usr/local/sbin/jft-plain-init"
# PID 1: network up, then reap whatever gets reparented here; SIGRTMIN+4 (what jflab
# sends to power a node off) or SIGTERM: stop the init scripts' daemons, then exit.
INIT_SCRIPT = r'''#!/usr/bin/python3
import os, signal, subprocess, sys, time
address = sys.argv[1]
subprocess.run(["ip", "link", "set", "lo", "up"])
subprocess.run(["ip", "addr", "add", address, "dev", "host0"])
subprocess.run(["ip", "link", "set", "host0", "up"])
stopping = False
def poweroff(signum, frame):
    global stopping
    stopping = True
for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGRTMIN + 4):
    signal.signal(sig, poweroff)
while not stopping:  # never blocked in waitpid: Python retries it after a signal handler
    try:
        if os.waitpid(-1, os.WNOHANG)[0] == 0:
            time.sleep(0.2)
    except ChildProcessError:
        time.sleep(0.2)
for daemon in ("nginx", "supervisor"):
    subprocess.run(["service", daemon, "stop"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=60)
os.kill(-1, signal.SIGTERM)
time.sleep(1)
os.kill(-1, signal.SIGKILL)
'''
PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


def boot_plain(name, suite="bookworm", binds_ro=(), timeout=60):
    """Start node NAME without systemd (a fresh overlay). Returns its address."""
    if jflab.leader(name):
        raise jflab.LabError(f"node {name} is already running")
    if not jflab.rootfs_ready(suite):
        jflab.build_rootfs(suite)
    d = jflab.node_dir(name)
    with jflab.phase(f"boot {name} (no systemd, {suite})"):
        jflab.ensure_bridge()
        jflab.ensure_proxy()
        unmount_overlay(name)
        shutil.rmtree(d, ignore_errors=True)
        with jflab.locked("addresses"):
            d.mkdir(parents=True)
            address = allocate_ip(name, None)
            (d / "ip").write_text(address + "\n")
        (d / "suite").write_text(suite + "\n")
        (d / "binds.json").write_text('{"binds": [], "binds_ro": []}')
        root = mount_overlay(name, suite)
        jflab.write(root / "etc/hostname", f"{name}\n")
        jflab.write(root / "etc/hosts", f"127.0.0.1\tlocalhost\n127.0.1.1\t{name}\n")
        install_host_settings(root, suite, proxy=PROXY_URL)
        jflab.write(root / INIT.lstrip("/"), INIT_SCRIPT, mode=0o755)
        cmd = [*nspawn_common(name), f"--network-bridge={BRIDGE}", f"--hostname={name}", "-D", str(root),
               "--resolv-conf=off", "--timezone=off", "--console=pipe",
               f"--bind={pip_cache(suite)}:{NODE_PIP_CACHE}", *[f"--bind-ro={b}" for b in binds_ro],
               INIT, f"{address}/{NETWORK.prefixlen}"]
        launch(name, cmd, d / "console.log")
        jflab.wait_for(f"{name}'s PID 1", lambda: jflab.leader(name) or launcher_died(name), 30)
        if not jflab.leader(name):
            raise jflab.LabError(f"systemd-nspawn for {name} exited:\n{(d / 'console.log').read_text()[-3000:]}")
        jflab.wait_for(f"{address} on {name}'s host0",
                       lambda: f" {address}/" in run(name, ["ip", "-4", "-o", "addr", "show", "dev", "host0"]).stdout,
                       timeout, interval=0.2)
    return address


def _argv(name, cmd, env):
    """nsenter into the node, the command's process moved into the node's cgroup first
    (daemons it starts stay there, and go down with the node)."""
    leader = jflab.leader(name)
    if not leader:
        raise jflab.LabError(f"node {name} is not running")
    procs = " ".join(str(top / "cgroup.procs") for top in cgroup_dirs(name))
    mover = f'for f in {procs}; do echo $$ > "$f" || exit 97; done; exec "$@"'
    environment = [f"PATH={PATH}", "HOME=/root", "LANG=C.UTF-8", "LOGNAME=root", "USER=root",
                   *[f"{k}={v}" for k, v in (env or {}).items()]]
    argv = ["/bin/sh", "-c", cmd] if isinstance(cmd, str) else [str(c) for c in cmd]
    return ["sh", "-c", mover, "sh", "nsenter", "-t", str(leader), "-m", "-u", "-i", "-n", "-p", "-C",
            "--root", "--wd", "--", "env", "-i", *environment, *argv]


def run(name, cmd, input=None, timeout=600, env=None):
    try:
        proc = subprocess.run(_argv(name, cmd, env), input=input or "", capture_output=True, text=True,
                              timeout=timeout, errors="replace", check=False)
    except subprocess.TimeoutExpired as exc:
        raise jflab.LabError(f"{name}: {cmd} timed out after {timeout}s") from exc
    return Result(proc.returncode, proc.stdout, proc.stderr)


class PlainNodeTarget(NodeTarget):
    """A lab node without systemd: the init-script fallback of the formula, isolated."""

    systemd = False

    def __init__(self, lab, name, suite):
        super().__init__(lab, name, suite)
        self.kind = "plain"

    def _run(self, cmd, input, timeout, env):
        return run(self.name, cmd, input=input, timeout=timeout, env=env)

    def popen(self, cmd, env=None):
        return subprocess.Popen(_argv(self.name, cmd, env), stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True, bufsize=1, errors="replace")

    def service(self, action, unit):
        return self.run(["service", unit, action], timeout=180)

    def reboot(self):
        raise NotImplementedError("a plain node is not rebooted by the tests")
