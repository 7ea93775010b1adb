"""What every part of the lab shares: locations, errors, logging, timed phases, locks."""
from __future__ import annotations

import contextlib
import fcntl
import os
import shlex
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

# Override the locations with environment variables.
CACHE = Path(os.environ.get("JUPYTER_FORMULA_LAB_CACHE", "/var/cache/jupyter-formula-lab"))
STATE = Path(os.environ.get("JUPYTER_FORMULA_LAB_STATE", "/var/lib/jupyter-formula-lab"))
NODES = STATE / "nodes"

CGROUP_PREFIX = "jflab"


class LabError(RuntimeError):
    pass


@dataclass
class Result:
    rc: int
    stdout: str
    stderr: str

    @property
    def ok(self) -> bool:
        return self.rc == 0

    def __str__(self) -> str:
        return f"rc={self.rc}\n--- stdout\n{self.stdout}\n--- stderr\n{self.stderr}"


def log(msg: str) -> None:
    print(f"[lab] {msg}", file=sys.stderr, flush=True)


PHASES: list = []  # every timed phase of this process, for the test run's summary


@contextlib.contextmanager
def phase(name: str):
    """Time a phase and print it: ``with phase("apply node1"): ...``."""
    start = time.monotonic()
    log(f"{name} ...")
    ok = False
    try:
        yield
        ok = True
    finally:
        line = f"phase {name}: {time.monotonic() - start:.1f}s{'' if ok else ' (failed)'}"
        log(line)
        PHASES.append(line)


def sh(*cmd, check=True, **kw) -> subprocess.CompletedProcess:
    """Run a host command, text mode, output captured."""
    proc = subprocess.run(list(cmd), text=True, capture_output=True, **kw)
    if check and proc.returncode != 0:
        raise LabError(f"{shlex.join(cmd)} failed (rc={proc.returncode}):\n{proc.stdout}{proc.stderr}")
    return proc


def write(path: Path, text: str, mode: int = 0o644) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    path.chmod(mode)


def wait_for(what: str, predicate, timeout: float, interval: float = 0.2):
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise LabError(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(interval)


@contextlib.contextmanager
def locked(name: str):
    CACHE.mkdir(parents=True, exist_ok=True)
    with open(CACHE / f"{name}.lock", "w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        yield


def session_lock():
    """Hold this (an open file) while a test session uses the lab: a second session waits."""
    STATE.mkdir(parents=True, exist_ok=True)
    fh = open(STATE / "session.lock", "w")
    try:
        fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        log("another session holds the lab; waiting for it")
        fcntl.flock(fh, fcntl.LOCK_EX)
    return fh


def preflight() -> list[str]:
    """What keeps the lab from running here (empty when it can run)."""
    problems = []
    if os.geteuid() != 0:
        problems.append("the lab needs root")
    for tool in ("systemd-nspawn", "debootstrap", "tinyproxy", "nsenter", "ip"):
        if not shutil.which(tool):
            problems.append(f"{tool} is missing")
    return problems


def pid_from(pidfile: Path, marker: str) -> int | None:
    """The pid in pidfile, if it is alive and its command line contains marker."""
    try:
        pid = int(pidfile.read_text().split()[0])
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except (FileNotFoundError, ValueError, IndexError, ProcessLookupError):
        return None
    return pid if marker in cmdline else None
