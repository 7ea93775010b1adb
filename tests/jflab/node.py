"""Nodes: boot, run, put, stop, reboot, remove, and down for everything the lab started."""
from __future__ import annotations

import concurrent.futures
import contextlib
import errno
import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import time
import uuid
from pathlib import Path

from . import pebble
from .base import NODES, LabError, Result, locked, log, phase, sh, wait_for, write
from .cgroups import (cgroup_kill_all, cgroup_names, cgroup_pids, cgroup_remove, cgroup_remove_top, launch,
                      launcher_died, nspawn_common, nspawn_leftovers, reap)
from .network import (BRIDGE, NETWORK, PROXY_URL, allocate_ip, ensure_bridge, ensure_proxy, node_dir, node_ip,
                      remove_bridge, stop_proxy)
from .rootfs import (DEFAULT_SUITE, NODE_PIP_CACHE, apt_cache, build_rootfs, check_suite, install_host_settings,
                     pip_cache, rootfs_path, rootfs_ready)

def node_suite(name: str) -> str:
    """The suite node NAME runs (bookworm for nodes made before suites were recorded)."""
    path = node_dir(name) / "suite"
    return path.read_text().strip() if path.exists() else DEFAULT_SUITE


def mounted_overlays() -> list[str]:
    found = []
    for line in Path("/proc/self/mounts").read_text().splitlines():
        mnt = line.split()[1].replace("\\040", " ")
        if mnt.startswith(str(NODES) + "/"):
            found.append(mnt)
    return found


def mount_overlay(name: str, suite: str) -> Path:
    d = node_dir(name)
    merged = d / "merged"
    if str(merged) in mounted_overlays():
        return merged
    for sub in ("upper", "work", "merged"):
        (d / sub).mkdir(parents=True, exist_ok=True)
    sh("mount", "-t", "overlay", "overlay", "-o",
       f"lowerdir={rootfs_path(suite)},upperdir={d / 'upper'},workdir={d / 'work'}", str(merged))
    return merged


def unmount_overlay(name: str) -> None:
    merged = str(node_dir(name) / "merged")
    for _ in range(3):
        if merged not in mounted_overlays():
            return
        if sh("umount", merged, check=False).returncode != 0:
            time.sleep(0.5)
    if merged in mounted_overlays():
        sh("umount", "--lazy", merged)


def _link_debs(src: Path, dst: Path) -> None:
    """Hard-link (or copy) the .deb files of src missing in dst."""
    if not src.is_dir():
        return
    dst.mkdir(parents=True, exist_ok=True)
    for deb in src.glob("*.deb"):
        target = dst / deb.name
        if target.exists():
            continue
        try:
            os.link(deb, target)
        except OSError as exc:
            if exc.errno != errno.EXDEV:
                raise
            shutil.copy2(deb, target)


def _node_archives(name: str) -> Path:
    return node_dir(name) / "upper/var/cache/apt/archives"


def _configure_node(name: str, ip: str, root: Path, suite: str) -> None:
    write(root / "etc/hostname", f"{name}\n")
    write(root / "etc/hosts", f"127.0.0.1\tlocalhost\n127.0.1.1\t{name}\n::1\tlocalhost ip6-localhost ip6-loopback\n")
    machine_id = root / "etc/machine-id"
    if not machine_id.read_text().strip():
        machine_id.write_text(uuid.uuid4().hex + "\n")
    write(root / "etc/systemd/network/10-jflab.network", f"""\
[Match]
Name=host0

[Network]
Address={ip}/{NETWORK.prefixlen}
LinkLocalAddressing=no
IPv6AcceptRA=no
""")
    install_host_settings(root, suite, proxy=PROXY_URL)


def boot(name: str, ip: str | int | None = None, binds: list[str] = (), binds_ro: list[str] = (),
         fresh: bool = True, timeout: float = 120, suite: str | None = None) -> str:
    """Boot node NAME (a fresh overlay unless fresh=False).  Returns its address.

    binds/binds_ro: "SRC:DST" strings for nspawn's --bind/--bind-ro.
    suite: "bookworm" (the default) or "trixie"; a kept overlay keeps its own.
    """
    if not re.fullmatch(r"[a-z][a-z0-9-]{0,11}", name):
        raise LabError(f"bad node name {name!r}: lower-case letters, digits and '-', at most 12")
    if leader(name):
        raise LabError(f"node {name} is already running")
    d = node_dir(name)
    keep = not fresh and (d / "ip").exists()
    if keep and suite is not None and suite != node_suite(name):
        raise LabError(f"node {name} runs {node_suite(name)}, not {suite}: boot it fresh for another suite")
    suite = check_suite(node_suite(name) if keep else (suite or DEFAULT_SUITE))
    if not rootfs_ready(suite):
        build_rootfs(suite)
    with phase(f"boot {name}" + ("" if suite == DEFAULT_SUITE else f" ({suite})")):
        ensure_bridge()
        ensure_proxy()
        if not keep:
            unmount_overlay(name)
            if d.exists():
                shutil.rmtree(d)
            with locked("addresses"):  # nodes booting in parallel get different addresses
                d.mkdir(parents=True)
                (d / "ip").write_text(allocate_ip(name, ip) + "\n")
            (d / "suite").write_text(suite + "\n")
            _link_debs(apt_cache(suite), _node_archives(name))
        addr = node_ip(name)
        (d / "binds.json").write_text(json.dumps({"binds": list(binds), "binds_ro": list(binds_ro)}))
        root = mount_overlay(name, suite)
        _configure_node(name, addr, root, suite)
        cmd = [*nspawn_common(name), "--boot", f"--network-bridge={BRIDGE}", f"--hostname={name}",
               "-D", str(root), "--resolv-conf=off", "--timezone=off", "--console=read-only",
               f"--bind={pip_cache(suite)}:{NODE_PIP_CACHE}"]
        cmd += [f"--bind={b}" for b in binds] + [f"--bind-ro={b}" for b in binds_ro]
        launch(name, cmd, d / "console.log")
        try:
            wait_for(f"{name}'s PID 1", lambda: leader(name) or launcher_died(name), 30)
            if not leader(name):
                raise LabError(f"systemd-nspawn for {name} exited:\n{_console_tail(name)}")
            _wait_booted(name, addr, timeout)
        except Exception:
            log(f"boot {name} failed; console:\n{_console_tail(name)}")
            raise
    return addr


def _console_tail(name: str, chars: int = 4000) -> str:
    path = node_dir(name) / "console.log"
    return path.read_text(errors="replace")[-chars:] if path.exists() else "(no console log)"


def _wait_booted(name: str, addr: str, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while True:
        res = run(name, ["systemctl", "is-system-running", "--wait"], timeout=max(5, deadline - time.monotonic()))
        state = res.stdout.strip()
        if state in ("running", "degraded"):
            break
        if time.monotonic() > deadline:
            raise LabError(f"{name} did not finish booting: {res}")
        time.sleep(0.3)  # PID 1 not ready for systemd-run yet
    if state == "degraded":
        failed = run(name, ["systemctl", "--failed", "--no-legend", "--plain"]).stdout.strip()
        log(f"{name} is degraded; failed units:\n{failed}")
    wait_for(f"{addr} on {name}'s host0",
             lambda: f" {addr}/" in run(name, ["ip", "-4", "-o", "addr", "show", "dev", "host0"]).stdout,
             max(5, deadline - time.monotonic()), interval=0.3)


def _nspids(pid: int | str) -> list[str]:
    """The pid as seen from each pid namespace, outermost first ([] when it is gone)."""
    with contextlib.suppress(FileNotFoundError, ProcessLookupError):
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("NSpid:"):
                return line.split()[1:]
    return []


def leader(name: str) -> int | None:
    """Host pid of the node's PID 1 (systemd), or None when it is not running."""
    depth = len(_nspids("self")) + 1  # one pid namespace below ours (not a nested one)
    for pid in cgroup_pids(name):
        ids = _nspids(pid)
        if len(ids) == depth and ids[-1] == "1":
            return pid
    return None


def _in_node(name: str) -> list[str]:
    pid = leader(name)
    if not pid:
        raise LabError(f"node {name} is not running")
    return ["nsenter", "-t", str(pid), "-m", "-u", "-i", "-n", "-p", "-C", "--"]


def run_argv(name: str, argv: list, env: dict | None = None, user: str = "root",
             cwd: str | None = None) -> tuple[list[str], str]:
    """(the host's command line that runs argv in node NAME as a transient service, the
    service's unit name): systemd-run --wait --pipe inside the node, a clean environment
    and a cgroup of its own."""
    unit = f"jflab-run-{uuid.uuid4().hex[:12]}"
    srun = ["/usr/bin/systemd-run", "--wait", "--pipe", "--quiet", "--collect", f"--unit={unit}",
            f"--uid={user}", "--service-type=exec"]
    if cwd:
        srun.append(f"--working-directory={cwd}")
    srun += [f"--setenv={k}={v}" for k, v in (env or {}).items()]
    return [*_in_node(name), *srun, "--", *[str(c) for c in argv]], unit


def run(name: str, cmd, input: str | None = None, timeout: float = 600, env: dict | None = None,
        user: str = "root", cwd: str | None = None, check: bool = False) -> Result:
    """Run cmd (a list, or a string for /bin/sh -c) in node NAME (run_argv).
    Returns Result(rc, stdout, stderr)."""
    argv = ["/bin/sh", "-c", cmd] if isinstance(cmd, str) else list(cmd)
    full, unit = run_argv(name, argv, env, user, cwd)
    try:
        proc = subprocess.run(full, input=(input or "").encode(), capture_output=True, timeout=timeout)
    except subprocess.TimeoutExpired as exc:
        with contextlib.suppress(Exception):
            subprocess.run([*_in_node(name), "systemctl", "kill", "--signal=KILL", unit], timeout=10,
                           capture_output=True)
        raise LabError(f"{name}: {shlex.join(argv)} timed out after {timeout}s\n"
                       f"{(exc.stdout or b'').decode(errors='replace')[-2000:]}"
                       f"{(exc.stderr or b'').decode(errors='replace')[-2000:]}") from None
    res = Result(proc.returncode, proc.stdout.decode(errors="replace"), proc.stderr.decode(errors="replace"))
    if check and not res.ok:
        raise LabError(f"{name}: {shlex.join(argv)} failed: {res}")
    return res


def put(name: str, path: str, text: str, mode: str = "0644") -> None:
    """Write a file inside the node (parent directories made)."""
    run(name, ["/bin/sh", "-c", 'mkdir -p "$(dirname "$1")" && cat > "$1" && chmod "$2" "$1"', "put", path, mode],
        input=text, check=True)


def shell(name: str) -> int:
    """An interactive login shell in the node (for developers)."""
    return subprocess.call([*_in_node(name), "/usr/bin/systemd-run", "--wait", "--pty", "--quiet",
                            "--collect", "--uid=root", "--", "/bin/bash", "-l"])


def service_pids(name: str, unit: str) -> tuple[int, list[int]]:
    """(MainPID, sorted pids of its children) of a service in node NAME."""
    main = int(run(name, ["systemctl", "show", "-p", "MainPID", "--value", unit], check=True).stdout)
    children = run(name, ["ps", "--no-headers", "--ppid", str(main), "-o", "pid"]).stdout.split()
    return main, sorted(int(p) for p in children)


def _poweroff(name: str, timeout: float = 60) -> None:
    """Power one node off (kill its cgroup after timeout); unmount its overlay, which is kept."""
    with phase(f"stop {name}"):
        pid = leader(name)
        if pid:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGRTMIN + 4)  # systemd: poweroff
            try:
                wait_for(f"{name} to power off", lambda: not cgroup_pids(name), timeout, interval=0.3)
            except LabError as exc:
                log(f"{exc}; killing its cgroup")
        cgroup_kill_all(name)
        reap(name)
        cgroup_remove(name)
        nspawn_leftovers(name, node_dir(name) / "merged")
        unmount_overlay(name)
        _link_debs(_node_archives(name), apt_cache(node_suite(name)))


def stop(*names: str, timeout: float = 60) -> None:
    """Power nodes off cleanly, in parallel; their overlays are kept.

    Every node's salt-minion is stopped before any node goes down (a minion can
    hang on stop once its master is gone); a node still up after timeout has its
    cgroup killed.
    """
    from .salt import stop_minion  # salt.py runs commands through this module

    _parallel(stop_minion, [n for n in names if leader(n)])
    errors = [f"{n}: {err}" for n, err in zip(names, _parallel(_try(_poweroff, timeout=timeout), names)) if err]
    if errors:
        raise LabError("; ".join(errors))


def reboot(name: str, timeout: float = 120) -> str:
    """Stop the node and boot it again on the same overlay (its state is kept)."""
    binds = json.loads((node_dir(name) / "binds.json").read_text())
    stop(name)
    return boot(name, binds=binds["binds"], binds_ro=binds["binds_ro"], fresh=False, timeout=timeout)


def remove(*names: str) -> None:
    """Stop nodes (see stop) and delete their overlays."""
    try:
        stop(*names)
    finally:
        for name in names:
            unmount_overlay(name)
            shutil.rmtree(node_dir(name), ignore_errors=True)


def _parallel(fn, names) -> list:
    names = list(names)
    if not names:
        return []
    with concurrent.futures.ThreadPoolExecutor(max_workers=len(names)) as pool:
        return list(pool.map(fn, names))


def _try(fn, **kwargs):
    def wrapped(*args):
        try:
            fn(*args, **kwargs)
        except Exception as exc:  # collected, reported after the rest is torn down
            return str(exc)
        return None
    return wrapped


def boot_many(specs: dict[str, dict]) -> dict[str, str]:
    """Boot several nodes in parallel: {name: boot kwargs} -> {name: address}."""
    for suite in sorted({spec.get("suite") or DEFAULT_SUITE for spec in specs.values()}):
        if not rootfs_ready(suite):
            build_rootfs(suite)
    ensure_proxy()
    addrs = _parallel(lambda n: boot(n, **specs[n]), specs)
    return dict(zip(specs, addrs))


def down(keep_nodes: bool = False) -> None:
    """Stop everything the lab started (nodes, proxy, Pebble), unmount, remove the bridge.  Idempotent."""
    with phase("down"):
        names = sorted(p.name for p in NODES.iterdir() if p.is_dir()) if NODES.exists() else []
        errors = []
        try:
            (remove if not keep_nodes else stop)(*names)
        except LabError as exc:
            errors.append(str(exc))
        for mnt in mounted_overlays():
            sh("umount", "--lazy", mnt, check=False)
        pebble.stop_pebble()
        stop_proxy()
        remove_bridge()
        for child in cgroup_names():
            cgroup_kill_all(child)
            cgroup_remove(child)
        cgroup_remove_top()
        if errors:
            raise LabError("down: " + "; ".join(errors))

