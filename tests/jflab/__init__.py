"""A lab of real systemd hosts: Debian 12 and 13 nodes under systemd-nspawn.

Every node boots a debootstrapped Debian rootfs (bookworm by default, or trixie;
cached, shared read-only) through its own copy-on-write overlay, runs systemd as
PID 1, and sits on the lab's own bridge with an address that only the lab assigns.
Nodes have no route out: apt and pip inside them go through a forward proxy
(tinyproxy) that the lab runs on the bridge address.  Mirrors and package indexes
are read from the host's own apt and pip configuration at run time.  Pebble, an
ACME test server, can run on the bridge too (jflab.pebble).

The host needs no systemd: each nspawn launcher gets a cgroup made by hand.
Everything runs as root.  The CLI: `PYTHONPATH=tests python3 -m jflab --help`.
"""
from .base import (CACHE, CGROUP_PREFIX, NODES, PHASES, STATE, LabError, Result, locked, log, phase, preflight,
                   session_lock, sh, wait_for, write)
from .cgroups import cgroup_bases, cgroup_dirs, cgroup_kill_all, cgroup_pids, launch, nspawn_common
from .network import (BRIDGE, HOST_IP, NETWORK, PROXY_DIR, PROXY_PORT, PROXY_URL, ensure_bridge, ensure_proxy,
                      node_dir, node_ip, nodes, proxy_log, proxy_pid, remove_bridge, stop_proxy, wait_http)
from .node import (boot, boot_many, down, leader, mounted_overlays, node_suite, put, reboot, remove, run, run_argv,
                   service_pids, shell, stop)
from .pebble import add_dns, ensure_pebble, node_fqdn, pebble_root, remove_dns, stop_pebble
from .rootfs import (CA_BUNDLE, DEFAULT_SUITE, NODE_PIP_CACHE, PACKAGES, SALT_EXTRAS, SALT_UNITS, SALT_VENV,
                     SALT_VERSION, SUITES, apt_sources, build_rootfs, debian_mirror, rootfs_path, rootfs_ready)
from .salt import first_json, salt_call, salt_changed, salt_failed, stop_minion

ROOTFS = rootfs_path(DEFAULT_SUITE)

__all__ = [
    "BRIDGE", "CACHE", "CA_BUNDLE", "CGROUP_PREFIX", "DEFAULT_SUITE", "HOST_IP", "NETWORK", "NODES",
    "NODE_PIP_CACHE", "PACKAGES", "PHASES", "PROXY_DIR", "PROXY_PORT", "PROXY_URL", "ROOTFS", "SALT_EXTRAS",
    "SALT_UNITS", "SALT_VENV", "SALT_VERSION", "STATE", "SUITES", "LabError", "Result",
    "add_dns", "apt_sources", "boot", "boot_many", "build_rootfs", "cgroup_bases", "cgroup_dirs",
    "cgroup_kill_all", "cgroup_pids", "debian_mirror", "down", "ensure_bridge", "ensure_pebble", "ensure_proxy",
    "first_json", "launch", "leader", "locked", "log", "mounted_overlays", "node_dir", "node_fqdn", "node_ip",
    "node_suite", "nodes", "nspawn_common", "pebble_root", "phase", "preflight", "proxy_log", "proxy_pid", "put",
    "reboot", "remove", "remove_bridge", "remove_dns", "rootfs_path", "rootfs_ready", "run", "salt_call",
    "salt_changed", "salt_failed", "service_pids", "session_lock", "sh", "shell", "stop", "stop_minion",
    "stop_pebble", "stop_proxy", "wait_for", "wait_http", "write",
]
