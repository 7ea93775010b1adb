"""The cached rootfs of each Debian suite: debootstrap, the baked Salt, the recipe stamp, caches.

The mirror, the pip indexes and the CA certificates come from the host's own
configuration, read when the lab runs; none is named in this repository.
"""
from __future__ import annotations

import configparser
import contextlib
import glob
import hashlib
import json
import os
import re
import shutil
import time
from pathlib import Path

from .base import CACHE, LabError, locked, log, phase, sh, write
from .cgroups import cgroup_remove, launch, nspawn_common, nspawn_leftovers, reap

SUITES = {"bookworm": "12", "trixie": "13"}  # suite -> Debian version
DEFAULT_SUITE = "bookworm"

SALT_VERSION = "3008.4"
SALT_VENV = "/opt/salt"
# what deploy.sh puts beside Salt, so that it finds nothing to install
SALT_EXTRAS = ["argon2-cffi", "zxcvbn"]
NODE_PIP_CACHE = "/var/cache/jflab-pip"  # where the suite's pip cache appears in a node
CA_BUNDLE = "/etc/ssl/certs/ca-certificates.crt"
HOST_EXTRA_CAS = "/usr/local/share/ca-certificates"
KEYRINGS = ("/usr/share/keyrings/debian-archive-keyring.pgp", "/usr/share/keyrings/debian-archive-keyring.gpg")

PACKAGES = [
    # what a systemd host is made of
    "systemd", "systemd-sysv", "dbus", "iproute2", "ca-certificates", "procps",
    # Python, and what `pip install salt` needs to build timelib
    "python3", "python3-venv", "python3-dev", "gcc", "libc6-dev",
    # for checks from inside a node
    "curl",
]
# packages only one suite needs (none so far)
SUITE_PACKAGES: dict[str, list[str]] = {"bookworm": [], "trixie": []}


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
python3 --version
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


def check_suite(suite: str) -> str:
    if suite not in SUITES:
        raise LabError(f"unknown suite {suite!r}: one of {', '.join(SUITES)}")
    return suite


def packages(suite: str) -> list[str]:
    return PACKAGES + SUITE_PACKAGES[check_suite(suite)]


def recipe(suite: str) -> str:
    return json.dumps(
        {
            "v": 1,
            "suite": suite,
            "packages": packages(suite),
            "salt": [SALT_VERSION, *SALT_EXTRAS],
            "venv": SALT_VENV,
            "script": BUILD_SCRIPT,
            "units": SALT_UNITS,
            "files": [DPKG_CFG, RESOLV_CONF, LOCALE_CONF],
        },
        sort_keys=True,
    )


def recipe_hash(suite: str) -> str:
    return hashlib.sha256(recipe(suite).encode()).hexdigest()


# Each suite has its own cache directory: CACHE/SUITE/{rootfs,rootfs.stamp,apt-archives,pip}.
def suite_cache(suite: str) -> Path:
    return CACHE / check_suite(suite)


def rootfs_path(suite: str = DEFAULT_SUITE) -> Path:
    return suite_cache(suite) / "rootfs"


def stamp_path(suite: str) -> Path:
    return suite_cache(suite) / "rootfs.stamp"


def apt_cache(suite: str) -> Path:
    return suite_cache(suite) / "apt-archives"


def pip_cache(suite: str) -> Path:
    return suite_cache(suite) / "pip"


def build_log(suite: str) -> Path:
    return suite_cache(suite) / "rootfs-build.log"


# --------------------------------------------------------------------------
# The host's package sources (read at run time, never written into the repo)


def host_codename() -> str:
    with contextlib.suppress(FileNotFoundError):
        for line in Path("/etc/os-release").read_text().splitlines():
            if line.startswith("VERSION_CODENAME="):
                return line.partition("=")[2].strip().strip('"')
    return ""


def _host_apt_stanzas() -> list[dict]:
    """The host's enabled `deb` sources: [{uris, suites, components}], http(s) only."""
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
        if uris:
            result.append({"uris": uris, "suites": fields.get("suites", "").split(),
                           "components": fields.get("components", "main").split()})
    return result


def apt_sources(suite: str = DEFAULT_SUITE) -> list[dict]:
    """apt sources for suite, as deb822 stanzas (dicts), from the host's own sources.

    The host's sources for suite if it has them; otherwise those of the host's own
    release with the suite renamed (bookworm-security -> trixie-security): the same
    mirrors serve every Debian release.
    """
    check_suite(suite)
    stanzas = _host_apt_stanzas()
    named = any(suite in s["suites"] for s in stanzas)
    source = suite if named else host_codename()

    def ours(name):
        return bool(source) and (name == source or name.startswith(source + "-"))

    result = []
    for s in stanzas:
        suites = [suite + name[len(source):] for name in s["suites"] if ours(name)]
        if suites:
            result.append({**s, "suites": suites})
    if not any(suite in s["suites"] for s in result):
        raise LabError(f"no http(s) apt source for {suite} (nor for the host's own release "
                       f"{source or '?'}) in the host's apt configuration")
    return result


def debian_mirror(suite: str = DEFAULT_SUITE) -> str:
    for src in apt_sources(suite):
        if suite in src["suites"]:
            return src["uris"][0]
    raise LabError(f"no apt source for the suite {suite} on the host")


def apt_sources_text(suite: str, keyring: str = KEYRINGS[-1]) -> str:
    return "\n".join(
        "Types: deb\n"
        f"URIs: {' '.join(s['uris'])}\n"
        f"Suites: {' '.join(s['suites'])}\n"
        f"Components: {' '.join(s['components'])}\n"
        f"Signed-By: {keyring}\n"
        for s in apt_sources(suite)
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


def apt_proxy_text(proxy: str) -> str:
    return (
        f'Acquire::http::Proxy "{proxy}";\n'
        f'Acquire::https::Proxy "{proxy}";\n'
        'Acquire::Retries "3";\n'
    )


def install_host_settings(root: Path, suite: str, proxy: str | None) -> None:
    """apt sources, pip config and the host's CA certificates, into a rootfs or overlay."""
    with contextlib.suppress(FileNotFoundError):
        (root / "etc/apt/sources.list").unlink()
    # trixie's keyring package ships .pgp files, bookworm's .gpg ones
    keyring = next((k for k in KEYRINGS if (root / k.lstrip("/")).exists()), KEYRINGS[-1])
    write(root / "etc/apt/sources.list.d/jflab.sources", apt_sources_text(suite, keyring))
    write(root / "etc/pip.conf", pip_conf_text(proxy))
    if proxy:
        write(root / "etc/apt/apt.conf.d/80jflab-proxy", apt_proxy_text(proxy))
    if os.path.isdir(HOST_EXTRA_CAS):
        shutil.copytree(HOST_EXTRA_CAS, root / HOST_EXTRA_CAS.lstrip("/"), dirs_exist_ok=True)
    if os.path.exists(CA_BUNDLE):
        (root / CA_BUNDLE.lstrip("/")).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(CA_BUNDLE, root / CA_BUNDLE.lstrip("/"))


# --------------------------------------------------------------------------
# The rootfs


def overlays_on(lower: Path) -> list[str]:
    """Mount points of the overlays whose lower directory is lower."""
    found = []
    for line in Path("/proc/self/mounts").read_text().splitlines():
        _, mnt, fstype, opts = line.split()[:4]
        if fstype == "overlay" and f"lowerdir={lower}," in opts + ",":
            found.append(mnt.replace("\\040", " "))
    return found


def rootfs_ready(suite: str = DEFAULT_SUITE) -> bool:
    stamp = stamp_path(suite)
    return (stamp.exists() and stamp.read_text().strip() == recipe_hash(suite)
            and (rootfs_path(suite) / "usr/bin/systemctl").exists())


def _drop_flat_layout() -> None:
    """Earlier versions kept one rootfs right in CACHE: reuse its debs, drop the rest."""
    old = CACHE / "rootfs"
    flat = [old, CACHE / "rootfs.new", CACHE / "rootfs.stamp"]
    if not any(p.exists() for p in flat) or overlays_on(old):
        return
    log(f"rootfs: removing the earlier single-suite layout {old}")
    if (CACHE / "apt-archives").is_dir() and not apt_cache(DEFAULT_SUITE).exists():
        apt_cache(DEFAULT_SUITE).parent.mkdir(parents=True, exist_ok=True)
        (CACHE / "apt-archives").rename(apt_cache(DEFAULT_SUITE))
    for path in (old, CACHE / "rootfs.new", CACHE / "apt-archives", CACHE / "pip"):
        shutil.rmtree(path, ignore_errors=True)
    for path in (CACHE / "rootfs.stamp", CACHE / "rootfs-build.log", CACHE / "rootfs.lock"):
        path.unlink(missing_ok=True)


def build_rootfs(suite: str = DEFAULT_SUITE, force: bool = False) -> Path:
    """Build (or reuse) the cached rootfs of suite.  Returns its path."""
    check_suite(suite)
    root = rootfs_path(suite)
    with locked(f"rootfs-{suite}"), phase(f"rootfs {suite}"):
        if rootfs_ready(suite) and not force:
            log(f"rootfs: {suite} cached at {root} (recipe {recipe_hash(suite)[:12]})")
            return root
        if overlays_on(root):
            raise LabError(f"nodes are running on the old {suite} rootfs: run `python3 -m jflab down` first")
        _drop_flat_layout()
        apt_dir, pip_dir = apt_cache(suite), pip_cache(suite)
        for d in (apt_dir, pip_dir):
            d.mkdir(parents=True, exist_ok=True)
        pip_dir.chmod(0o777)
        new = suite_cache(suite) / "rootfs.new"
        if new.exists():
            shutil.rmtree(new)
        start = time.monotonic()
        proc = sh("debootstrap", "--variant=minbase", f"--include={','.join(packages(suite))}",
                  f"--cache-dir={apt_dir}", suite, str(new), debian_mirror(suite), check=False)
        if proc.returncode != 0:
            tail = (new / "debootstrap/debootstrap.log")
            raise LabError(f"debootstrap {suite} failed:\n{proc.stdout[-3000:]}{proc.stderr[-3000:]}"
                           + (tail.read_text()[-3000:] if tail.exists() else ""))
        log(f"rootfs: {suite} debootstrap {time.monotonic() - start:.1f}s")
        install_host_settings(new, suite, proxy=None)
        write(new / "etc/dpkg/dpkg.cfg.d/90jflab", DPKG_CFG)
        write(new / "etc/locale.conf", LOCALE_CONF)
        for unit, text in SALT_UNITS.items():
            write(new / "etc/systemd/system" / unit, text)
        start = time.monotonic()
        logfile = build_log(suite)
        logfile.unlink(missing_ok=True)
        machine = f"jflab-build-{suite}"
        proc = launch(f"build-{suite}", [*nspawn_common(machine), "-D", str(new), "--resolv-conf=copy-host",
                                         f"--bind={pip_dir}:{NODE_PIP_CACHE}", "--setenv=LANG=C.UTF-8",
                                         "/bin/sh", "-c", BUILD_SCRIPT], logfile)
        rc = proc.wait()
        reap(f"build-{suite}")
        cgroup_remove(f"build-{suite}")
        nspawn_leftovers(machine, new)
        if rc != 0:
            raise LabError(f"rootfs build script failed (rc={rc}); log: {logfile}\n{logfile.read_text()[-4000:]}")
        if f"salt-call {SALT_VERSION}" not in logfile.read_text():
            raise LabError(f"salt {SALT_VERSION} is not in the {suite} rootfs; log: {logfile}")
        log(f"rootfs: {suite} salt venv {time.monotonic() - start:.1f}s")
        write(new / "etc/resolv.conf", RESOLV_CONF)
        (new / "etc/machine-id").write_text("")  # each node writes its own
        with contextlib.suppress(FileNotFoundError):
            (new / "etc/hostname").unlink()
        if root.exists():
            shutil.rmtree(root)
        new.rename(root)
        stamp_path(suite).write_text(recipe_hash(suite) + "\n")
        return root
