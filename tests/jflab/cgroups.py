"""cgroups made by hand (the host's PID 1 is not systemd), and the detached launcher of nspawn."""
from __future__ import annotations

import contextlib
import errno
import os
import shlex
import shutil
import signal
import subprocess
from pathlib import Path

from .base import CGROUP_PREFIX, LabError, wait_for


def cgroup_bases() -> list[Path]:
    """The hierarchies nspawn cares about: cgroup2 and/or the v1 name=systemd one."""
    bases = []
    for line in Path("/proc/self/mounts").read_text().splitlines():
        _, mnt, fstype, opts = line.split()[:4]
        if fstype == "cgroup2" or (fstype == "cgroup" and "name=systemd" in opts.split(",")):
            bases.append(Path(mnt))
    if not bases:
        raise LabError("no cgroup2 or name=systemd cgroup hierarchy is mounted")
    return bases


def cgroup_dirs(name: str) -> list[Path]:
    return [base / CGROUP_PREFIX / name for base in cgroup_bases()]


def cgroup_pids(name: str) -> set[int]:
    pids = set()
    for top in cgroup_dirs(name):
        for dirpath, _, _ in os.walk(top):
            try:
                pids.update(int(p) for p in Path(dirpath, "cgroup.procs").read_text().split())
            except OSError as exc:
                # a node's own systemd removes its sub-cgroups while it powers off: gone
                # before the open (ENOENT) or between the open and the read (ENODEV)
                if exc.errno not in (errno.ENOENT, errno.ENODEV):
                    raise
    return pids


def cgroup_kill(name: str) -> None:
    for top in cgroup_dirs(name):
        kill_file = top / "cgroup.kill"
        if kill_file.exists():
            with contextlib.suppress(OSError):
                kill_file.write_text("1")
    for pid in cgroup_pids(name):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


def cgroup_kill_all(name: str, timeout: float = 15) -> None:
    """Kill the cgroup's processes until none is left (without cgroup.kill, forks can race)."""
    if cgroup_pids(name):
        wait_for(f"{CGROUP_PREFIX}/{name} to empty", lambda: cgroup_kill(name) or not cgroup_pids(name),
                 timeout, interval=0.3)


def cgroup_remove(name: str) -> None:
    for top in cgroup_dirs(name):
        if not top.exists():
            continue
        for dirpath, _, _ in sorted(os.walk(top), key=lambda w: -len(w[0])):
            with contextlib.suppress(OSError):
                os.rmdir(dirpath)


def cgroup_names() -> list[str]:
    """Every jflab/NAME cgroup that exists in any hierarchy."""
    names = set()
    for base in cgroup_bases():
        top = base / CGROUP_PREFIX
        if top.exists():
            names.update(child.name for child in top.iterdir() if child.is_dir())
    return sorted(names)


def cgroup_remove_top() -> None:
    for base in cgroup_bases():
        with contextlib.suppress(OSError):
            (base / CGROUP_PREFIX).rmdir()


_children: dict[str, subprocess.Popen] = {}


def launch(name: str, cmd: list[str], logfile: Path, env: dict | None = None) -> subprocess.Popen:
    """Start cmd in a fresh cgroup jflab/NAME of every hierarchy, detached, output to logfile.

    env: variables added to this process's environment for cmd.
    """
    if cgroup_pids(name):
        raise LabError(f"cgroup {CGROUP_PREFIX}/{name} still has processes: {sorted(cgroup_pids(name))}")
    cgroup_remove(name)
    procs = []
    for top in cgroup_dirs(name):
        top.mkdir(parents=True, exist_ok=True)
        procs.append(str(top / "cgroup.procs"))
    mover = 'for f in ' + " ".join(shlex.quote(p) for p in procs) + '; do echo $$ > "$f" || exit 97; done; exec "$@"'
    logfile.parent.mkdir(parents=True, exist_ok=True)
    with open(logfile, "ab") as out:
        proc = subprocess.Popen(["sh", "-c", mover, "sh", *cmd], stdin=subprocess.DEVNULL,
                                stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
                                env={**os.environ, **env} if env else None)
    _children[name] = proc
    return proc


def launcher_died(name: str) -> bool:
    proc = _children.get(name)
    return proc is not None and proc.poll() is not None


def reap(name: str) -> None:
    proc = _children.pop(name, None)
    if proc is not None:
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=5)


def nspawn_common(name: str) -> list[str]:
    return ["systemd-nspawn", "--quiet", "--register=no", "--keep-unit", f"--machine={name}",
            "--link-journal=no"]


def nspawn_leftovers(machine: str, directory: Path) -> None:
    """What systemd-nspawn leaves under /run when /run is no tmpfs or it was killed."""
    shutil.rmtree(f"/run/systemd/nspawn/propagate/{machine}", ignore_errors=True)
    with contextlib.suppress(OSError):
        st = os.stat(directory)
        os.unlink(f"/run/systemd/nspawn/locks/inode-{st.st_dev}:{st.st_ino}")
