"""The lab network: the bridge, the lab's own tinyproxy, and the nodes' addresses."""
from __future__ import annotations

import contextlib
import ipaddress
import os
import shutil
import signal
import socket
from pathlib import Path

from .base import NODES, STATE, LabError, log, pid_from, sh, wait_for, write

BRIDGE = "jflab0"
NETWORK = ipaddress.ip_network("198.51.100.0/24")
HOST_IP = "198.51.100.1"
PROXY_PORT = 3128
PROXY_URL = f"http://{HOST_IP}:{PROXY_PORT}"
PROXY_DIR = STATE / "proxy"


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


def listening(host: str, port: int) -> bool:
    with contextlib.suppress(OSError), socket.create_connection((host, port), timeout=1):
        return True
    return False


# --------------------------------------------------------------------------
# The proxy


def proxy_pid() -> int | None:
    return pid_from(PROXY_DIR / "tinyproxy.pid", str(PROXY_DIR / "tinyproxy.conf"))


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
    wait_for("tinyproxy to listen", lambda: proxy_pid() and listening(HOST_IP, PROXY_PORT), 10)
    log(f"proxy: tinyproxy on {PROXY_URL} (pid {proxy_pid()})")


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
# Addresses


def node_dir(name: str) -> Path:
    return NODES / name


def node_ip(name: str) -> str:
    path = node_dir(name) / "ip"
    if not path.exists():
        raise LabError(f"no node {name!r}")
    return path.read_text().strip()


def nodes() -> list[str]:
    return sorted(p.name for p in NODES.glob("*") if (p / "ip").exists())


def allocate_ip(name: str, ip: str | int | None) -> str:
    """The address for node NAME: 198.51.100.N for ip=N, an address as given, or the first free."""
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
