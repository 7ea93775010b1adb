#!/usr/bin/env python3
"""A lab of real systemd hosts: Debian 12 nodes under systemd-nspawn.

Library and CLI.  Every node boots a debootstrapped Debian 12 rootfs (cached,
shared read-only) through its own copy-on-write overlay, runs systemd as PID 1,
and sits on the lab's own bridge with an address that only the lab assigns.
Nodes have no route out: apt and pip inside them go through a forward proxy
(tinyproxy) that the lab runs on the bridge address.  Mirrors and package
indexes are read from the host's own apt and pip configuration at run time.

CLI::

    python3 tests/lab/lab.py rootfs [--rebuild]
    python3 tests/lab/lab.py boot NAME [--ip N] [--bind SRC:DST] [--bind-ro SRC:DST] [--keep]
    python3 tests/lab/lab.py run NAME [--stdin] -- CMD...
    python3 tests/lab/lab.py shell NAME
    python3 tests/lab/lab.py reboot NAME
    python3 tests/lab/lab.py stop NAME
    python3 tests/lab/lab.py list
    python3 tests/lab/lab.py down

The host needs no systemd: each nspawn launcher gets a cgroup made by hand.
Everything runs as root.
"""
from __future__ import annotations

import argparse
import concurrent.futures
import configparser
import contextlib
import errno
import fcntl
import glob
import hashlib
import ipaddress
import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

# --------------------------------------------------------------------------
# Constants (override the locations with environment variables)

CACHE = Path(os.environ.get("JUPYTER_FORMULA_LAB_CACHE", "/var/cache/jupyter-formula-lab"))
STATE = Path(os.environ.get("JUPYTER_FORMULA_LAB_STATE", "/var/lib/jupyter-formula-lab"))
ROOTFS = CACHE / "rootfs"
STAMP = CACHE / "rootfs.stamp"
APT_CACHE = CACHE / "apt-archives"
PIP_CACHE = CACHE / "pip"
NODES = STATE / "nodes"
PROXY_DIR = STATE / "proxy"

BRIDGE = "jflab0"
NETWORK = ipaddress.ip_network("198.51.100.0/24")
HOST_IP = "198.51.100.1"
PROXY_PORT = 3128
PROXY_URL = f"http://{HOST_IP}:{PROXY_PORT}"
CGROUP_PREFIX = "jflab"

SUITE = "bookworm"
SALT_VERSION = "3008.4"
SALT_VENV = "/opt/salt"
SALT_EXTRAS = ["argon2-cffi"]  # what deploy.sh puts beside Salt, so that it finds nothing to install
NODE_PIP_CACHE = "/var/cache/jflab-pip"  # where the shared pip cache appears in a node
CA_BUNDLE = "/etc/ssl/certs/ca-certificates.crt"
HOST_EXTRA_CAS = "/usr/local/share/ca-certificates"

PACKAGES = [
    # what a systemd host is made of
    "systemd", "systemd-sysv", "dbus", "iproute2", "ca-certificates", "procps",
    # Python, and what `pip install salt` needs to build timelib
    "python3", "python3-venv", "python3-dev", "gcc", "libc6-dev",
    # for checks from inside a node
    "curl",
]


def _salt_unit(daemon: str, extra: str) -> str:
    return f"""\
[Unit]
Description=Salt {daemon} (lab, {SALT_VENV})
After=network.target

[Service]
ExecStart={SALT_VENV}/bin/salt-{daemon}
KillMode=process
{extra}Restart=on-failure

[Install]
WantedBy=multi-user.target
"""


# Units written into the rootfs (enabled per node by whoever needs them).
SALT_UNITS = {
    "salt-minion.service": _salt_unit("minion", "TimeoutStopSec=15\n"),
    "salt-master.service": _salt_unit("master", "TimeoutStopSec=30\nLimitNOFILE=100000\n"),
}

# Runs inside the build container (host network, so it reaches the registries
# directly, like the host's own pip does).
BUILD_SCRIPT = f"""\
set -eu
update-ca-certificates >/dev/null
python3 -m venv {SALT_VENV}
{SALT_VENV}/bin/pip install --quiet salt=={SALT_VERSION} {" ".join(SALT_EXTRAS)}
{SALT_VENV}/bin/salt-call --version
systemctl mask apt-daily.timer apt-daily-upgrade.timer
systemctl enable systemd-networkd.service
apt-get clean
rm -rf /var/lib/apt/lists/* /root/.cache
"""

DPKG_CFG = "force-unsafe-io\n"
RESOLV_CONF = "# Lab nodes have no DNS: apt and pip reach the registries through the lab's proxy.\n"
LOCALE_CONF = "LANG=C.UTF-8\n"

RECIPE = json.dumps(
    {
        "v": 1,
        "suite": SUITE,
        "packages": PACKAGES,
        "salt": [SALT_VERSION, *SALT_EXTRAS],
        "venv": SALT_VENV,
        "script": BUILD_SCRIPT,
        "units": SALT_UNITS,
        "files": [DPKG_CFG, RESOLV_CONF, LOCALE_CONF],
    },
    sort_keys=True,
)
RECIPE_HASH = hashlib.sha256(RECIPE.encode()).hexdigest()


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


# --------------------------------------------------------------------------
# Small helpers


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


# --------------------------------------------------------------------------
# The host's package sources (read at run time, never written into the repo)


def apt_sources() -> list[dict]:
    """The host's apt sources as deb822 stanzas (dicts), http(s) only."""
    stanzas = []
    for path in sorted(glob.glob("/etc/apt/sources.list.d/*.sources")):
        for block in re.split(r"\n\s*\n", Path(path).read_text()):
            fields = {}
            for line in block.splitlines():
                if line.startswith("#") or ":" not in line or line[:1].isspace():
                    continue
                key, _, value = line.partition(":")
                fields[key.strip().lower()] = value.strip()
            if fields.get("enabled", "yes").lower() == "no" or "deb" not in fields.get("types", "").split():
                continue
            stanzas.append(fields)
    for path in ["/etc/apt/sources.list", *sorted(glob.glob("/etc/apt/sources.list.d/*.list"))]:
        if not os.path.exists(path):
            continue
        for line in Path(path).read_text().splitlines():
            words = re.sub(r"\[[^]]*\]", "", line.split("#", 1)[0]).split()
            if len(words) >= 3 and words[0] == "deb":
                stanzas.append({"uris": words[1], "suites": words[2], "components": " ".join(words[3:])})
    result = []
    for fields in stanzas:
        uris = [u for u in fields.get("uris", "").split() if u.startswith(("http://", "https://"))]
        suites = [s for s in fields.get("suites", "").split() if s.startswith(SUITE)]
        if uris and suites:
            result.append({"uris": uris, "suites": suites, "components": fields.get("components", "main").split()})
    if not result:
        raise LabError(f"no http(s) apt source for {SUITE} in the host's apt configuration")
    return result


def debian_mirror() -> str:
    for src in apt_sources():
        if SUITE in src["suites"]:
            return src["uris"][0]
    raise LabError(f"no apt source for the suite {SUITE} on the host")


def apt_sources_text() -> str:
    return "\n".join(
        "Types: deb\n"
        f"URIs: {' '.join(s['uris'])}\n"
        f"Suites: {' '.join(s['suites'])}\n"
        f"Components: {' '.join(s['components'])}\n"
        "Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg\n"
        for s in apt_sources()
    )


def pip_index_settings() -> dict[str, str]:
    """index-url, extra-index-url and trusted-host of the host's pip configuration.

    Read as pip reads them: the site files, the user files, PIP_CONFIG_FILE, then
    PIP_* variables, later ones winning.  Only http(s) indexes are kept (a file://
    index or a local find-links path means nothing inside a node).
    """
    keys = ("index-url", "extra-index-url", "trusted-host")
    files = ["/etc/xdg/pip/pip.conf", "/etc/pip.conf", "~/.pip/pip.conf", "~/.config/pip/pip.conf",
             os.environ.get("PIP_CONFIG_FILE", "")]
    conf = configparser.RawConfigParser()
    conf.read([os.path.expanduser(f) for f in files if f and f != os.devnull])
    found = {}
    for section in ("global", "install"):
        for key in keys:
            if conf.has_option(section, key):
                found[key] = conf.get(section, key)
    for key in keys:
        env = os.environ.get("PIP_" + key.upper().replace("-", "_"))
        if env:
            found[key] = env
    result = {}
    for key, value in found.items():
        items = value.split()
        if key != "trusted-host":
            items = [u for u in items if u.startswith(("http://", "https://"))]
        if key == "index-url":
            items = items[:1]
        if items:
            result[key] = " ".join(items)
    return result


def pip_conf_text(proxy: str | None) -> str:
    lines = ["[global]", f"cert = {CA_BUNDLE}", f"cache-dir = {NODE_PIP_CACHE}",
             "timeout = 60", "retries = 5", "disable-pip-version-check = true"]
    if proxy:
        lines.append(f"proxy = {proxy}")
    lines += [f"{k} = {v}" for k, v in sorted(pip_index_settings().items())]
    return "\n".join(lines) + "\n"


def apt_proxy_text() -> str:
    return (
        f'Acquire::http::Proxy "{PROXY_URL}";\n'
        f'Acquire::https::Proxy "{PROXY_URL}";\n'
        'Acquire::Retries "3";\n'
    )


def install_host_settings(root: Path, proxy: str | None) -> None:
    """apt sources, pip config and the host's CA certificates, into a rootfs or overlay."""
    with contextlib.suppress(FileNotFoundError):
        (root / "etc/apt/sources.list").unlink()
    write(root / "etc/apt/sources.list.d/jflab.sources", apt_sources_text())
    write(root / "etc/pip.conf", pip_conf_text(proxy))
    if proxy:
        write(root / "etc/apt/apt.conf.d/80jflab-proxy", apt_proxy_text())
    if os.path.isdir(HOST_EXTRA_CAS):
        shutil.copytree(HOST_EXTRA_CAS, root / HOST_EXTRA_CAS.lstrip("/"), dirs_exist_ok=True)
    if os.path.exists(CA_BUNDLE):
        (root / CA_BUNDLE.lstrip("/")).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(CA_BUNDLE, root / CA_BUNDLE.lstrip("/"))


# --------------------------------------------------------------------------
# cgroups made by hand (the host's PID 1 is not systemd)


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
            with contextlib.suppress(FileNotFoundError):
                pids.update(int(p) for p in Path(dirpath, "cgroup.procs").read_text().split())
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


_children: dict[str, subprocess.Popen] = {}


def launch(name: str, cmd: list[str], logfile: Path) -> subprocess.Popen:
    """Start cmd in a fresh cgroup jflab/NAME of every hierarchy, detached, output to logfile."""
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
                                stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    _children[name] = proc
    return proc


def nspawn_leftovers(machine: str, directory: Path) -> None:
    """What systemd-nspawn leaves under /run when /run is no tmpfs or it was killed."""
    shutil.rmtree(f"/run/systemd/nspawn/propagate/{machine}", ignore_errors=True)
    with contextlib.suppress(OSError):
        st = os.stat(directory)
        os.unlink(f"/run/systemd/nspawn/locks/inode-{st.st_dev}:{st.st_ino}")


def reap(name: str) -> None:
    proc = _children.pop(name, None)
    if proc is not None:
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=5)


# --------------------------------------------------------------------------
# The rootfs


def rootfs_ready() -> bool:
    return STAMP.exists() and STAMP.read_text().strip() == RECIPE_HASH and (ROOTFS / "usr/bin/systemctl").exists()


def nspawn_common(name: str) -> list[str]:
    return ["systemd-nspawn", "--quiet", "--register=no", "--keep-unit", f"--machine={name}",
            "--link-journal=no"]


def build_rootfs(force: bool = False) -> Path:
    """Build (or reuse) the cached Debian 12 rootfs.  Returns its path."""
    with locked("rootfs"), phase("rootfs"):
        if rootfs_ready() and not force:
            log(f"rootfs: cached at {ROOTFS} (recipe {RECIPE_HASH[:12]})")
            return ROOTFS
        if mounted_overlays():
            raise LabError("nodes are running on the old rootfs: run `lab.py down` first")
        for d in (APT_CACHE, PIP_CACHE):
            d.mkdir(parents=True, exist_ok=True)
        PIP_CACHE.chmod(0o777)
        new = CACHE / "rootfs.new"
        if new.exists():
            shutil.rmtree(new)
        start = time.monotonic()
        proc = sh("debootstrap", "--variant=minbase", f"--include={','.join(PACKAGES)}",
                  f"--cache-dir={APT_CACHE}", SUITE, str(new), debian_mirror(), check=False)
        if proc.returncode != 0:
            tail = (new / "debootstrap/debootstrap.log")
            raise LabError(f"debootstrap failed:\n{proc.stdout[-3000:]}{proc.stderr[-3000:]}"
                           + (tail.read_text()[-3000:] if tail.exists() else ""))
        log(f"rootfs: debootstrap {time.monotonic() - start:.1f}s")
        install_host_settings(new, proxy=None)
        write(new / "etc/dpkg/dpkg.cfg.d/90jflab", DPKG_CFG)
        write(new / "etc/locale.conf", LOCALE_CONF)
        for unit, text in SALT_UNITS.items():
            write(new / "etc/systemd/system" / unit, text)
        start = time.monotonic()
        build_log = CACHE / "rootfs-build.log"
        build_log.unlink(missing_ok=True)
        proc = launch("build", [*nspawn_common("jflab-build"), "-D", str(new), "--resolv-conf=copy-host",
                                f"--bind={PIP_CACHE}:{NODE_PIP_CACHE}", "--setenv=LANG=C.UTF-8",
                                "/bin/sh", "-c", BUILD_SCRIPT], build_log)
        rc = proc.wait()
        reap("build")
        cgroup_remove("build")
        nspawn_leftovers("jflab-build", new)
        if rc != 0:
            raise LabError(f"rootfs build script failed (rc={rc}); log: {build_log}\n{build_log.read_text()[-4000:]}")
        if f"salt-call {SALT_VERSION}" not in build_log.read_text():
            raise LabError(f"salt {SALT_VERSION} is not in the rootfs; log: {build_log}")
        log(f"rootfs: salt venv {time.monotonic() - start:.1f}s")
        write(new / "etc/resolv.conf", RESOLV_CONF)
        (new / "etc/machine-id").write_text("")  # each node writes its own
        with contextlib.suppress(FileNotFoundError):
            (new / "etc/hostname").unlink()
        if ROOTFS.exists():
            shutil.rmtree(ROOTFS)
        new.rename(ROOTFS)
        STAMP.write_text(RECIPE_HASH + "\n")
        return ROOTFS


# --------------------------------------------------------------------------
# The network: bridge and proxy


def ensure_bridge() -> None:
    if sh("ip", "link", "show", BRIDGE, check=False).returncode != 0:
        sh("ip", "link", "add", BRIDGE, "type", "bridge")
    addrs = sh("ip", "-4", "-o", "addr", "show", "dev", BRIDGE).stdout
    if f" {HOST_IP}/" not in addrs:
        sh("ip", "addr", "add", f"{HOST_IP}/{NETWORK.prefixlen}", "dev", BRIDGE)
    sh("ip", "link", "set", BRIDGE, "up")


def remove_bridge() -> None:
    if sh("ip", "link", "show", BRIDGE, check=False).returncode == 0:
        sh("ip", "link", "del", BRIDGE)


def _pid_from(pidfile: Path, marker: str) -> int | None:
    """The pid in pidfile, if it is alive and its command line contains marker."""
    try:
        pid = int(pidfile.read_text().split()[0])
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except (FileNotFoundError, ValueError, IndexError, ProcessLookupError):
        return None
    return pid if marker in cmdline else None


def proxy_pid() -> int | None:
    return _pid_from(PROXY_DIR / "tinyproxy.pid", str(PROXY_DIR / "tinyproxy.conf"))


def proxy_log() -> Path:
    return PROXY_DIR / "tinyproxy.log"


def ensure_proxy() -> None:
    """Start the lab's own tinyproxy on the bridge address (not the system service)."""
    if proxy_pid():
        return
    ensure_bridge()
    PROXY_DIR.mkdir(parents=True, exist_ok=True)
    PROXY_DIR.chmod(0o755)
    conf = PROXY_DIR / "tinyproxy.conf"
    logf = proxy_log()
    logf.touch()
    shutil.chown(logf, "nobody", "nogroup")
    write(conf, f"""\
User nobody
Group nogroup
Port {PROXY_PORT}
Listen {HOST_IP}
Timeout 600
MaxClients 100
PidFile "{PROXY_DIR / 'tinyproxy.pid'}"
LogFile "{logf}"
LogLevel Connect
Allow {NETWORK}
ConnectPort 443
DisableViaHeader Yes
""")
    sh("tinyproxy", "-c", str(conf))
    wait_for("tinyproxy to listen", lambda: proxy_pid() and _listening(HOST_IP, PROXY_PORT), 10)
    log(f"proxy: tinyproxy on {PROXY_URL} (pid {proxy_pid()})")


def _listening(host: str, port: int) -> bool:
    import socket
    with contextlib.suppress(OSError), socket.create_connection((host, port), timeout=1):
        return True
    return False


def stop_proxy() -> None:
    pid = proxy_pid()
    if pid:
        os.kill(pid, signal.SIGTERM)
        with contextlib.suppress(LabError):
            wait_for("tinyproxy to exit", lambda: not proxy_pid(), 10)
        if proxy_pid():
            os.kill(pid, signal.SIGKILL)
    (PROXY_DIR / "tinyproxy.pid").unlink(missing_ok=True)


# --------------------------------------------------------------------------
# Nodes


def node_dir(name: str) -> Path:
    return NODES / name


def node_ip(name: str) -> str:
    path = node_dir(name) / "ip"
    if not path.exists():
        raise LabError(f"no node {name!r}")
    return path.read_text().strip()


def nodes() -> list[str]:
    return sorted(p.name for p in NODES.glob("*") if (p / "ip").exists())


def _allocate_ip(name: str, ip: str | int | None) -> str:
    taken = {node_ip(n) for n in nodes() if n != name}
    if ip is not None:
        addr = str(NETWORK[int(ip)]) if isinstance(ip, int) or str(ip).isdigit() else str(ip)
        if addr in taken or ipaddress.ip_address(addr) not in NETWORK or addr == HOST_IP:
            raise LabError(f"address {addr} is not free on {NETWORK}")
        return addr
    for host in list(NETWORK.hosts())[9:]:
        if str(host) not in taken:
            return str(host)
    raise LabError("no free address left on the lab network")


def mounted_overlays() -> list[str]:
    found = []
    for line in Path("/proc/self/mounts").read_text().splitlines():
        mnt = line.split()[1].replace("\\040", " ")
        if mnt.startswith(str(NODES) + "/"):
            found.append(mnt)
    return found


def _mount_overlay(name: str) -> Path:
    d = node_dir(name)
    merged = d / "merged"
    if str(merged) in mounted_overlays():
        return merged
    for sub in ("upper", "work", "merged"):
        (d / sub).mkdir(parents=True, exist_ok=True)
    sh("mount", "-t", "overlay", "overlay", "-o",
       f"lowerdir={ROOTFS},upperdir={d / 'upper'},workdir={d / 'work'}", str(merged))
    return merged


def _unmount_overlay(name: str) -> None:
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


def _configure_node(name: str, ip: str, root: Path) -> None:
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
    install_host_settings(root, proxy=PROXY_URL)


def boot(name: str, ip: str | int | None = None, binds: list[str] = (), binds_ro: list[str] = (),
         fresh: bool = True, timeout: float = 120) -> str:
    """Boot node NAME (a fresh overlay unless fresh=False).  Returns its address.

    binds/binds_ro: "SRC:DST" strings for nspawn's --bind/--bind-ro.
    """
    if not re.fullmatch(r"[a-z][a-z0-9-]{0,11}", name):
        raise LabError(f"bad node name {name!r}: lower-case letters, digits and '-', at most 12")
    if leader(name):
        raise LabError(f"node {name} is already running")
    if not rootfs_ready():
        build_rootfs()
    with phase(f"boot {name}"):
        ensure_bridge()
        ensure_proxy()
        d = node_dir(name)
        if fresh or not (d / "ip").exists():
            _unmount_overlay(name)
            if d.exists():
                shutil.rmtree(d)
            with locked("addresses"):  # nodes booting in parallel get different addresses
                d.mkdir(parents=True)
                (d / "ip").write_text(_allocate_ip(name, ip) + "\n")
            _link_debs(APT_CACHE, _node_archives(name))
        addr = node_ip(name)
        (d / "binds.json").write_text(json.dumps({"binds": list(binds), "binds_ro": list(binds_ro)}))
        root = _mount_overlay(name)
        _configure_node(name, addr, root)
        cmd = [*nspawn_common(name), "--boot", f"--network-bridge={BRIDGE}", f"--hostname={name}",
               "-D", str(root), "--resolv-conf=off", "--timezone=off", "--console=read-only",
               f"--bind={PIP_CACHE}:{NODE_PIP_CACHE}"]
        cmd += [f"--bind={b}" for b in binds] + [f"--bind-ro={b}" for b in binds_ro]
        launch(name, cmd, d / "console.log")
        try:
            wait_for(f"{name}'s PID 1", lambda: leader(name) or _launcher_died(name), 30)
            if not leader(name):
                raise LabError(f"systemd-nspawn for {name} exited:\n{_console_tail(name)}")
            _wait_booted(name, addr, timeout)
        except Exception:
            log(f"boot {name} failed; console:\n{_console_tail(name)}")
            raise
    return addr


def _launcher_died(name: str) -> bool:
    proc = _children.get(name)
    return proc is not None and proc.poll() is not None


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


def run(name: str, cmd, input: str | None = None, timeout: float = 600, env: dict | None = None,
        user: str = "root", cwd: str | None = None, check: bool = False) -> Result:
    """Run cmd (a list, or a string for /bin/sh -c) in node NAME as a transient service.

    systemd-run --wait --pipe inside the node: a clean environment and a cgroup
    of its own.  Returns Result(rc, stdout, stderr).
    """
    argv = ["/bin/sh", "-c", cmd] if isinstance(cmd, str) else list(cmd)
    unit = f"jflab-run-{uuid.uuid4().hex[:12]}"
    srun = ["/usr/bin/systemd-run", "--wait", "--pipe", "--quiet", "--collect", f"--unit={unit}",
            f"--uid={user}", "--service-type=exec"]
    if cwd:
        srun.append(f"--working-directory={cwd}")
    srun += [f"--setenv={k}={v}" for k, v in (env or {}).items()]
    full = [*_in_node(name), *srun, "--", *argv]
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


def stop_minion(name: str, timeout: float = 30) -> None:
    """Stop a salt-minion service in the node if it has one (it can hang once its master is gone)."""
    if leader(name):
        with contextlib.suppress(LabError):
            run(name, "systemctl stop salt-minion.service 2>/dev/null || true", timeout=timeout)


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
        _unmount_overlay(name)
        _link_debs(_node_archives(name), APT_CACHE)


def stop(*names: str, timeout: float = 60) -> None:
    """Power nodes off cleanly, in parallel; their overlays are kept.

    Every node's salt-minion is stopped before any node goes down (a minion can
    hang on stop once its master is gone); a node still up after timeout has its
    cgroup killed.
    """
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
            _unmount_overlay(name)
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
    if not rootfs_ready():
        build_rootfs()
    ensure_proxy()
    addrs = _parallel(lambda n: boot(n, **specs[n]), specs)
    return dict(zip(specs, addrs))


def down(keep_nodes: bool = False) -> None:
    """Stop everything the lab started (nodes, proxy), unmount, remove the bridge.  Idempotent."""
    with phase("down"):
        names = sorted(p.name for p in NODES.iterdir() if p.is_dir()) if NODES.exists() else []
        errors = []
        try:
            (remove if not keep_nodes else stop)(*names)
        except LabError as exc:
            errors.append(str(exc))
        for mnt in mounted_overlays():
            sh("umount", "--lazy", mnt, check=False)
        stop_proxy()
        remove_bridge()
        for base in cgroup_bases():
            top = base / CGROUP_PREFIX
            if top.exists():
                for child in top.iterdir():
                    if child.is_dir():
                        cgroup_kill_all(child.name)
                        cgroup_remove(child.name)
                with contextlib.suppress(OSError):
                    top.rmdir()
        if errors:
            raise LabError("down: " + "; ".join(errors))


# --------------------------------------------------------------------------
# Helpers for tests


def first_json(text: str):
    """The first JSON document in text (Salt's --out=json, with other output around it)."""
    start = text.find("{")
    if start < 0:
        raise ValueError("no JSON in the output")
    return json.JSONDecoder().raw_decode(text[start:])[0]


def salt_changed(results: dict) -> list[str]:
    """IDs of the states that changed something, from one minion's state results."""
    return sorted(ret["__id__"] for ret in results.values() if ret.get("changes"))


def salt_failed(results: dict) -> dict[str, str]:
    return {ret["__id__"]: ret.get("comment") for ret in results.values() if ret.get("result") is False}


def service_pids(name: str, unit: str) -> tuple[int, list[int]]:
    """(MainPID, sorted pids of its children) of a service in node NAME."""
    main = int(run(name, ["systemctl", "show", "-p", "MainPID", "--value", unit], check=True).stdout)
    children = run(name, ["ps", "--no-headers", "--ppid", str(main), "-o", "pid"]).stdout.split()
    return main, sorted(int(p) for p in children)


def wait_http(url: str, status: int = 200, timeout: float = 90) -> None:
    """Poll url from the host until it answers with status."""
    import urllib.error
    import urllib.request
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # straight to the node

    def answered():
        try:
            with opener.open(url, timeout=5) as resp:
                return resp.status == status
        except urllib.error.HTTPError as exc:
            return exc.code == status
        except OSError:
            return False

    wait_for(f"{url} to answer {status}", answered, timeout, interval=0.5)


# --------------------------------------------------------------------------
# CLI


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="lab.py", description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("rootfs", help="build the cached rootfs (if missing or its recipe changed)")
    s.add_argument("--rebuild", action="store_true")
    s = sub.add_parser("boot", help="boot a node on a fresh overlay")
    s.add_argument("name")
    s.add_argument("--ip", help="host number (e.g. 20) or address on the lab network")
    s.add_argument("--bind", action="append", default=[], metavar="SRC:DST")
    s.add_argument("--bind-ro", action="append", default=[], metavar="SRC:DST")
    s.add_argument("--keep", action="store_true", help="reuse the node's existing overlay")
    s = sub.add_parser("run", help="run a command in a node: run [--stdin] NAME -- CMD...")
    s.add_argument("name")
    s.add_argument("--stdin", action="store_true", help="pass this process's stdin to the command")
    for verb in ("shell", "reboot"):
        sub.add_parser(verb).add_argument("name")
    sub.add_parser("stop", help="power nodes off (their overlays are kept)").add_argument("names", nargs="+")
    sub.add_parser("list", help="nodes, their addresses and whether they run")
    sub.add_parser("down", help="stop everything the lab started")
    argv = sys.argv[1:] if argv is None else argv
    command = []
    if "--" in argv:
        argv, command = argv[:argv.index("--")], argv[argv.index("--") + 1:]
    args = p.parse_args(argv)

    problems = preflight()
    if problems:
        p.error("; ".join(problems))
    try:
        if args.cmd == "rootfs":
            print(build_rootfs(force=args.rebuild))
        elif args.cmd == "boot":
            print(boot(args.name, ip=args.ip, binds=args.bind, binds_ro=args.bind_ro, fresh=not args.keep))
        elif args.cmd == "run":
            if not command:
                p.error("run NAME -- CMD...")
            res = run(args.name, command, input=sys.stdin.read() if args.stdin else None)
            sys.stdout.write(res.stdout)
            sys.stderr.write(res.stderr)
            return res.rc
        elif args.cmd == "shell":
            return shell(args.name)
        elif args.cmd == "stop":
            stop(*args.names)
        elif args.cmd == "reboot":
            print(reboot(args.name))
        elif args.cmd == "list":
            for name in nodes():
                print(f"{name}\t{node_ip(name)}\t{'running' if leader(name) else 'stopped'}")
        elif args.cmd == "down":
            down()
    except LabError as exc:
        print(f"lab.py: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
