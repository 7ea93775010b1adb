"""
Virtualenvs of the jupyter formula: built for what is in them, checked before they go
live, switched atomically, kept for rollback.

Layout
    ``<venv_store>/<venv_id>``: one venv per (python, ordered requirement list, pip index
    options); ``venv_id`` is 12 hex digits of a hash of those (credentials left out). The
    manifest ``<dir>/.jupyter-venv.json`` is written last, so a dir without it is a
    leftover of an interrupted build. Root owns every venv (0755 dirs).

    Each instance's ``venv`` path is a symlink to its live venv. The supervisor program
    runs ``<venv>/bin/jupyter-<app>`` through the link, so a switch is the rename of a new
    symlink over the link, then one restart of the program.

    ``<venv_store>/.history/<instance>.json`` (root only) lists the venvs each link
    pointed at, oldest first, with what ``jupyter.rollback`` needs to restart the program.

Markers in a venv dir
    ``.jupyter-venv-check-failed.json``: the candidate check failed for this venv with
    this instance config; the next apply fails at once instead of checking again.
    ``.jupyter-venv-rolled-back.json``: ``jupyter.rollback`` left this venv; no apply
    makes it live again until the marker is removed.

Secrets
    Index URLs may carry credentials: pip gets its index options from a root-only
    requirements file, never on a command line; everything this module returns, stores
    or raises has credentials masked. The candidate server's one-time token travels in
    its environment only.

This module is the machinery; the states ``jupyter_venv.built`` and
``jupyter_venv.live`` and the admin functions ``jupyter.history`` and
``jupyter.rollback`` use it.
"""

import asyncio
import copy
import datetime
import errno
import grp
import hashlib
import json
import logging
import os
import pwd
import re
import secrets
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
import urllib.parse
import uuid

import psutil
from salt.exceptions import CommandExecutionError, SaltInvocationError

try:
    import tornado.httpclient
    import tornado.websocket

    HAS_TORNADO = True
except ImportError:  # pragma: no cover - Salt itself depends on tornado
    HAS_TORNADO = False

log = logging.getLogger(__name__)

__virtualname__ = "jupyter_venv"

DEFAULT_STORE = "/opt/jupyter/venvs"
DEFAULT_KEEP = 2
DEFAULT_TIMEOUT = 180  # seconds a candidate check may take
BUILD_TIMEOUT = 3600  # seconds pip may take (pip has its own network timeouts)
MANIFEST = ".jupyter-venv.json"
CHECK_MARKER = ".jupyter-venv-check-failed.json"
ROLLBACK_MARKER = ".jupyter-venv-rolled-back.json"
HISTORY_DIR = ".history"
# Bumped when the way a venv is built changes, so that old venvs are rebuilt.
RECIPE = 1
TAIL_LINES = 25
HIDDEN = "<hidden>"
CHECKS = ("status", "extensions", "login", "kernel")

_VENV_ID = re.compile(r"^[0-9a-f]{12}$")
_USERINFO = re.compile(r"(?P<scheme>\b[a-zA-Z][a-zA-Z0-9+.-]*://)[^/@\s'\"]+@")

# Runs in a venv's own Python as the instance's user: which server extensions its
# jupyter_server enables (config dirs of jupyter_config_path(), then the instance
# config's ServerApp.jpserver_extensions over them, as ServerApp does), and which of
# ``names`` it could import. The request comes on stdin.
_EXTENSION_LISTER = r"""
import importlib.util, json, sys
from jupyter_core.paths import jupyter_config_path
from jupyter_server.extension.config import ExtensionConfigManager
req = json.load(sys.stdin)
enabled = ExtensionConfigManager(read_config_path=jupyter_config_path()).get_jpserver_extensions()
enabled.update(req["overrides"])
def findable(name):
    try:
        return importlib.util.find_spec(name) is not None
    except (ImportError, ValueError):
        return False
json.dump({"enabled": enabled, "findable": {n: findable(n) for n in req["names"]}}, sys.stdout)
"""


def __virtual__():
    if not HAS_TORNADO:
        return (False, "jupyter_venv needs tornado (a dependency of Salt) for its candidate checks")
    if not hasattr(os, "symlink"):
        return (False, "jupyter_venv needs symlinks")
    return __virtualname__


# ---------------------------------------------------------------------------
# small helpers


def _now():
    return datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def _strip_credentials(url):
    """``url`` without user and password (what a venv id and a manifest may hold)."""
    if not url:
        return url
    parts = urllib.parse.urlsplit(url)
    if "@" not in parts.netloc:
        return url
    return urllib.parse.urlunsplit(parts._replace(netloc=parts.netloc.rsplit("@", 1)[1]))


def _secrets_of(pip):
    """Every credential in the pip options, raw and percent-decoded."""
    found = set()
    pip = pip or {}
    for url in [pip.get("index_url"), pip.get("proxy"), *(pip.get("extra_index_urls") or [])]:
        if not url or "@" not in url:
            continue
        userinfo = urllib.parse.urlsplit(url).netloc.rsplit("@", 1)[0]
        # user:password -> the password; a bare userinfo is a token
        secret = userinfo.split(":", 1)[1] if ":" in userinfo else userinfo
        if len(secret) >= 4:
            found.update({userinfo, secret, urllib.parse.unquote(secret)})
    return found


def mask(text, pip=None, extra=()):
    """
    ``text`` with credentials hidden: the user and password of every URL, each secret
    of the pip options ``pip`` and each string of ``extra`` (a token).

    CLI Example:

    .. code-block:: bash

        salt-call jupyter_venv.mask 'https://user:pw@host/simple'
    """
    text = str(text)
    for secret in sorted(_secrets_of(pip) | {e for e in extra if e}, key=len, reverse=True):
        text = text.replace(secret, HIDDEN)
    return _USERINFO.sub(lambda m: m.group("scheme") + HIDDEN + "@", text)


def _tail(text, lines=TAIL_LINES):
    return "\n".join((text or "").strip().splitlines()[-lines:])


def _read_json(path):
    try:
        with open(path, encoding="utf-8") as handle:
            return json.load(handle)
    except (OSError, ValueError):
        return None


def _write_json(path, data, mode=0o644):
    """Atomically, with ``mode`` set before the rename."""
    directory = os.path.dirname(path)
    handle, tmp = tempfile.mkstemp(dir=directory, prefix=".tmp-")
    try:
        os.fchmod(handle, mode)
        with os.fdopen(handle, "w", encoding="utf-8") as out:
            json.dump(data, out, indent=2, sort_keys=True)
            out.write("\n")
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def _run(cmd, timeout, env=None, input=None, cwd=None, user=None, umask=0o022):  # pylint: disable=redefined-builtin
    """
    subprocess.run, output captured as text. ``user``: (uid, gid, groups) to run as.
    Not cmd.run: the exchange may carry secrets (stdin, environment) that must not
    reach Salt's logs.
    """
    kwargs = {}
    if user is not None:
        kwargs.update(user=user[0], group=user[1], extra_groups=user[2])
    try:
        return subprocess.run(
            cmd,
            env=env,
            input=input,
            cwd=cwd,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
            umask=umask,
            **kwargs,
        )
    except subprocess.TimeoutExpired as exc:
        raise CommandExecutionError(f"{cmd[0]} did not finish within {timeout} s") from exc
    except OSError as exc:
        raise CommandExecutionError(f"cannot run {cmd[0]}: {exc.strerror or exc}") from exc


def _python_version(python):
    """'X.Y' of the interpreter ``python``, or None when it does not exist (yet)."""
    key = f"jupyter_venv.python_version:{python}"
    if key in __context__:
        return __context__[key]
    path = python if os.path.isabs(python) else shutil.which(python)
    version = None
    if path and os.access(path, os.X_OK):
        proc = _run([path, "-c", "import sys; print('%d.%d' % sys.version_info[:2])"], timeout=60)
        if proc.returncode == 0:
            version = proc.stdout.strip()
    if version is not None:
        __context__[key] = version
    return version


def _check_packages(packages):
    if not isinstance(packages, (list, tuple)) or not packages:
        raise SaltInvocationError(f"packages must be a non-empty list of requirement specifiers, got {packages!r}")
    for spec in packages:
        # a requirements file line: an option or a second line would change its meaning
        if not isinstance(spec, str) or not spec.strip() or spec.lstrip().startswith("-") or "\n" in spec:
            raise SaltInvocationError(f"not a pip requirement specifier: {mask(repr(spec))}")


def _pip_options(pip):
    pip = pip or {}
    extra = pip.get("extra_index_urls") or []
    hosts = pip.get("trusted_hosts") or []
    if isinstance(extra, str) or isinstance(hosts, str):
        raise SaltInvocationError("pip:extra_index_urls and pip:trusted_hosts must be lists")
    return pip.get("index_url"), list(extra), list(hosts), pip.get("proxy")


def _id_inputs(python, version, packages, pip):
    index_url, extra, _hosts, _proxy = _pip_options(pip)
    # trusted hosts and proxy change how pip reaches an index, not what it installs
    return {
        "recipe": RECIPE,
        "python": python,
        "python_version": version,
        "packages": [mask(p) for p in packages],
        "index_url": _strip_credentials(index_url),
        "extra_index_urls": [_strip_credentials(u) for u in extra],
    }


def _digest(inputs):
    return hashlib.sha256(json.dumps(inputs, sort_keys=True).encode()).hexdigest()[:12]


# ---------------------------------------------------------------------------
# venv ids and manifests


def venv_id(python, packages, pip=None, venv_store=None):
    """
    The id of the venv that ``python`` with ``packages`` (ordered pip requirement
    specifiers) and the pip index options ``pip`` make: 12 hex digits of a hash of the
    python path and its X.Y version, the requirement list and the index URLs (without
    credentials). Trusted hosts and proxy are left out: they change how pip reaches an
    index, not what it installs.

    An interpreter that does not exist yet (a fresh host, whose python the same apply
    installs) hashes with an unknown version; once it exists, a complete venv built
    under that id with the same X.Y in ``venv_store`` keeps its id, so the second apply
    of a fresh host does not rebuild.

    CLI Example:

    .. code-block:: bash

        salt-call jupyter_venv.venv_id /usr/bin/python3 '["jupyterlab==4.6.6"]'
    """
    _check_packages(packages)
    version = _python_version(python)
    ident = _digest(_id_inputs(python, version, packages, pip))
    if version is not None and venv_store and not os.path.isdir(os.path.join(venv_store, ident)):
        unknown = _digest(_id_inputs(python, None, packages, pip))
        found = manifest(os.path.join(venv_store, unknown))
        if found and found.get("python", {}).get("version") == version:
            return unknown
    return ident


def manifest(path):
    """
    The manifest of the complete venv at ``path`` (what it was built for, ``pip
    freeze``, when), or None when ``path`` is not a complete venv.

    CLI Example:

    .. code-block:: bash

        salt-call jupyter_venv.manifest /opt/jupyter/venvs/0123456789ab
    """
    data = _read_json(os.path.join(path, MANIFEST))
    if not isinstance(data, dict) or "built_at" not in data:
        return None
    return data


def _requirements_text(packages, pip):
    """pip's input: one index option a line, then the requirements (root only, 0600)."""
    index_url, extra, hosts, _proxy = _pip_options(pip)
    lines = []
    if index_url:
        lines.append(f"--index-url {index_url}")
    lines += [f"--extra-index-url {url}" for url in extra]
    lines += [f"--trusted-host {host}" for host in hosts]
    return "\n".join(lines + list(packages)) + "\n"


def build(path, python, packages, pip=None, timeout=BUILD_TIMEOUT):
    """
    Build the venv ``path`` from scratch: ``python -m venv``, then ``pip install`` of
    ``packages`` with the index options of ``pip`` (``index_url``,
    ``extra_index_urls``, ``trusted_hosts``, ``proxy``; each URL and host its own
    option), then the manifest, last. Root owns it, directories 0755.

    A leftover without manifest is removed first; a complete venv is refused (it may be
    live). On failure the half-built dir is removed and the error carries pip's stderr
    tail with credentials masked.

    Returns the manifest.

    CLI Example:

    .. code-block:: bash

        salt-call jupyter_venv.build /opt/jupyter/venvs/0123456789ab /usr/bin/python3 '["jupyterlab==4.6.6"]'
    """
    _check_packages(packages)
    path = os.path.normpath(path)
    if manifest(path):
        raise CommandExecutionError(f"{path} is a complete venv already; remove it to rebuild it")
    version = _python_version(python)
    if version is None:
        raise CommandExecutionError(f"python {python} does not exist or does not run")
    if os.path.lexists(path):
        log.info("jupyter_venv: removing the leftover %s (no manifest)", path)
        _remove(path)
    os.makedirs(os.path.dirname(path), mode=0o755, exist_ok=True)
    index_url, extra, hosts, proxy = _pip_options(pip)
    env = dict(os.environ, PIP_NO_INPUT="1", PIP_DISABLE_PIP_VERSION_CHECK="1")
    if proxy:
        env["PIP_PROXY"] = proxy  # the environment of a root process: not in the process list
    started = time.monotonic()
    try:
        with tempfile.TemporaryDirectory(prefix="jupyter-venv-build-") as tmp:
            requirements = os.path.join(tmp, "requirements.txt")
            fd = os.open(requirements, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "w", encoding="utf-8") as out:
                out.write(_requirements_text(packages, pip))
            steps = (
                ("python -m venv", [python, "-m", "venv", path], 300),
                ("pip install", [os.path.join(path, "bin", "python"), "-m", "pip", "install", "-r", requirements], timeout),
            )
            for what, cmd, limit in steps:
                proc = _run(cmd, timeout=limit, env=env, cwd=tmp)
                if proc.returncode != 0:
                    raise CommandExecutionError(
                        f"{what} for {path} failed (exit {proc.returncode}):\n"
                        + mask(_tail(proc.stderr) or _tail(proc.stdout), pip)
                    )
        freeze = _run([os.path.join(path, "bin", "python"), "-m", "pip", "freeze", "--all"], timeout=120, env=env)
        os.chmod(path, 0o755)
        data = {
            "venv_id": os.path.basename(path),
            "python": {"path": python, "version": version},
            "packages": [mask(p) for p in packages],
            "pip": {
                "index_url": _strip_credentials(index_url),
                "extra_index_urls": [_strip_credentials(u) for u in extra],
                "trusted_hosts": hosts,
            },
            "freeze": [mask(line) for line in freeze.stdout.splitlines() if line.strip()],
            "built_at": _now(),
            "build_seconds": round(time.monotonic() - started, 1),
        }
        _write_json(os.path.join(path, MANIFEST), data)
    except BaseException:
        _remove(path)
        raise
    return data


def _remove(path):
    if os.path.islink(path) or os.path.isfile(path):
        os.unlink(path)
    elif os.path.isdir(path):
        shutil.rmtree(path)


# ---------------------------------------------------------------------------
# settings


def _settings():
    # reveal_secrets: the environment and pip options are needed as they are; nothing
    # of them leaves this module unmasked
    return __salt__["jupyter.settings"](reveal_secrets=True)


def instance_settings(name, settings=None):
    """
    The settings of the instance ``name`` as the venv machinery reads them, with
    ``venv_store`` and ``upgrade`` filled in from the top level and the defaults.

    settings
        What ``jupyter.settings`` returned, when the caller has it already (the
        states pass the one with secrets revealed); default: ``jupyter.settings()``,
        secrets hidden.

    CLI Example:

    .. code-block:: bash

        salt-call jupyter_venv.instance_settings jupyter
    """
    if settings is None:
        settings = __salt__["jupyter.settings"](require_password=False)
    return _instance(name, settings)


def _instance(name, settings):
    instances = settings.get("instances") or {}
    if name not in instances:
        raise SaltInvocationError(
            f"no instance named '{name}' in jupyter.settings (instances: {', '.join(sorted(instances)) or 'none'})"
        )
    inst = dict(instances[name])
    inst.setdefault("name", name)
    inst["venv_store"] = inst.get("venv_store") or settings.get("venv_store") or DEFAULT_STORE
    upgrade = {"keep": DEFAULT_KEEP, "timeout": DEFAULT_TIMEOUT}
    upgrade.update({k: v for k, v in (settings.get("upgrade") or {}).items() if v is not None})
    upgrade.update({k: v for k, v in (inst.get("upgrade") or {}).items() if v is not None})
    inst["upgrade"] = upgrade
    return inst


# ---------------------------------------------------------------------------
# links


def link_target(link):
    """
    What is at the instance link ``link``: ``{"kind": "absent" | "link" | "dir" |
    "other", "target": <normalized absolute target or None>, "exists": bool}``
    (``exists``: the link's target exists).

    CLI Example:

    .. code-block:: bash

        salt-call jupyter_venv.link_target /opt/jupyter/venv
    """
    if os.path.islink(link):
        target = os.readlink(link)
        if not os.path.isabs(target):
            target = os.path.join(os.path.dirname(link), target)
        target = os.path.normpath(target)
        return {"kind": "link", "target": target, "exists": os.path.isdir(target)}
    if os.path.isdir(link):
        return {"kind": "dir", "target": None, "exists": True}
    if os.path.lexists(link):
        return {"kind": "other", "target": None, "exists": True}
    return {"kind": "absent", "target": None, "exists": False}


def _legacy_freeze(path):
    python = os.path.join(path, "bin", "python")
    if not os.access(python, os.X_OK):
        return []
    try:
        proc = _run([python, "-m", "pip", "freeze", "--all"], timeout=120)
    except CommandExecutionError:
        return []
    return [mask(line) for line in proc.stdout.splitlines() if line.strip()] if proc.returncode == 0 else []


def switch(link, target):
    """
    Point the symlink ``link`` at the venv ``target``, atomically (a new symlink
    renamed over the old one). A real directory at ``link`` (the venv of the formula's
    previous version) is first moved aside into ``target``'s store as
    ``legacy-<time>`` (beside ``link`` when the store is on another file system); it
    can not be rolled back to: its scripts name ``link`` in their shebangs.

    Returns ``{"old": previous target or the legacy dir's new path, "new": target,
    "legacy": the legacy dir's new path or None}``.

    CLI Example:

    .. code-block:: bash

        salt-call jupyter_venv.switch /opt/jupyter/venv /opt/jupyter/venvs/0123456789ab
    """
    link = os.path.normpath(link)
    target = os.path.normpath(target)
    found = manifest(target)
    if not found:
        raise CommandExecutionError(f"{target} is not a complete venv: not switching {link} to it")
    if found.get("legacy"):
        raise CommandExecutionError(
            f"{target} is a venv of the formula's previous version, moved aside from "
            f"{found.get('moved_from')}: its scripts name that path, it cannot be switched to"
        )
    now = link_target(link)
    legacy = None
    if now["kind"] == "other":
        raise CommandExecutionError(f"{link} is neither a symlink nor a venv directory: not replacing it")
    if now["kind"] == "dir":
        legacy = _move_aside(link, os.path.dirname(target))
    os.makedirs(os.path.dirname(link), mode=0o755, exist_ok=True)
    tmp = f"{link}.jupyter-venv-{uuid.uuid4().hex[:8]}"
    os.symlink(target, tmp)
    try:
        os.replace(tmp, link)
    except BaseException:
        os.unlink(tmp)
        raise
    return {"old": legacy or now["target"], "new": target, "legacy": legacy}


def _move_aside(path, store):
    stamp = time.strftime("%Y%m%dT%H%M%S", time.gmtime())
    freeze = _legacy_freeze(path)
    os.makedirs(store, mode=0o755, exist_ok=True)
    dest = os.path.join(store, f"legacy-{stamp}")
    try:
        os.rename(path, dest)
    except OSError as exc:
        if exc.errno != errno.EXDEV:
            raise
        dest = f"{path}.legacy-{stamp}"
        os.rename(path, dest)
    _write_json(
        os.path.join(dest, MANIFEST),
        {"legacy": True, "moved_from": path, "freeze": freeze, "built_at": None, "moved_at": _now()},
    )
    return dest


# ---------------------------------------------------------------------------
# history


def _history_dir(venv_store):
    return os.path.join(venv_store, HISTORY_DIR)


def read_history(venv_store=None, instance=None):
    """
    The venv history of every instance (or of ``instance``) recorded in
    ``venv_store`` (default ``/opt/jupyter/venvs``): ``{instance: {"link", "program",
    "socket", "port", "timeout", "entries": [{"venv", "venv_id", "live_since", "by",
    "legacy"}, ...]}}``, oldest entry first; the live venv is the last.

    CLI Example:

    .. code-block:: bash

        salt-call jupyter_venv.read_history
        salt-call jupyter_venv.read_history instance=alice
    """
    directory = _history_dir(venv_store or DEFAULT_STORE)
    found = {}
    try:
        names = sorted(os.listdir(directory))
    except OSError:
        names = []
    for filename in names:
        if not filename.endswith(".json"):
            continue
        name = filename[: -len(".json")]
        if instance is not None and name != instance:
            continue
        data = _read_json(os.path.join(directory, filename))
        if isinstance(data, dict) and isinstance(data.get("entries"), list):
            found[name] = data
    return found


def record(instance, link, venv, venv_store=None, by="apply", legacy=None, program=None):
    """
    Note in the history of ``instance`` that ``link`` now points at ``venv`` (made
    live by ``by``); ``legacy``: the path a legacy venv was moved to, noted before it.
    ``program``: ``{"name", "socket", "port", "timeout"}`` for ``jupyter.rollback``.
    Returns the instance's history.

    CLI Example:

    .. code-block:: bash

        salt-call jupyter_venv.record jupyter /opt/jupyter/venv /opt/jupyter/venvs/0123456789ab
    """
    venv_store = venv_store or DEFAULT_STORE
    directory = _history_dir(venv_store)
    os.makedirs(directory, mode=0o700, exist_ok=True)
    path = os.path.join(directory, f"{instance}.json")
    data = _read_json(path) or {}
    entries = [e for e in data.get("entries", []) if e.get("venv") not in (venv, legacy)]
    if legacy:
        entries.append(
            {
                "venv": legacy,
                "legacy": True,
                "live_since": None,
                "by": "formula before venv history",
                "note": f"moved aside from {link}; can not be rolled back to (its scripts name {link} in their shebangs)",
            }
        )
    entries.append({"venv": venv, "venv_id": os.path.basename(venv), "live_since": _now(), "by": by, "legacy": False})
    data.update(instance=instance, link=link, entries=entries)
    if program:
        data["program"] = program
    _write_json(path, data, mode=0o600)
    return data


def mark_rolled_back(venv, instance, to):
    """
    Mark ``venv`` as left by ``jupyter.rollback`` (instance ``instance``, back to
    ``to``), so that no apply makes it live again until the marker is removed.

    CLI Example:

    .. code-block:: bash

        salt-call jupyter_venv.mark_rolled_back /opt/jupyter/venvs/0123456789ab jupyter /opt/jupyter/venvs/ba9876543210
    """
    path = os.path.join(venv, ROLLBACK_MARKER)
    data = _read_json(path) or {"instances": {}}
    data.update(at=_now(), by="jupyter.rollback")
    data.setdefault("instances", {})[instance] = to
    _write_json(path, data)
    return data


def rolled_back(venv):
    """
    The message why an apply must not make ``venv`` live (it was rolled back), or
    None.

    CLI Example:

    .. code-block:: bash

        salt-call jupyter_venv.rolled_back /opt/jupyter/venvs/0123456789ab
    """
    path = os.path.join(venv, ROLLBACK_MARKER)
    data = _read_json(path)
    if not data:
        return None
    return (
        f"{venv} was rolled back by {data.get('by', 'jupyter.rollback')} at {data.get('at', '?')}; "
        f"change packages in pillar, or remove {path} to allow it again"
    )


def _referenced_by_programs(conf_dirs, venv_store):
    """Store dirs that a supervisor program file names (its command, its PATH)."""
    pattern = re.compile(re.escape(os.path.normpath(venv_store)) + r"/([^/\s\"',:=]+)")
    found = set()
    for directory in conf_dirs:
        try:
            names = os.listdir(directory)
        except OSError:
            continue
        for filename in names:
            try:
                with open(os.path.join(directory, filename), encoding="utf-8", errors="replace") as handle:
                    text = handle.read()
            except OSError:
                continue
            found.update(os.path.join(venv_store, m) for m in pattern.findall(text))
    return found


def prune(venv_store=None, keep=DEFAULT_KEEP, protect=None, conf_dirs=None):
    """
    Trim every instance's history to its last ``keep`` venvs and remove the venvs of
    ``venv_store`` that nothing references any more. Never removed: a venv a link
    points at, one another history still lists, one a supervisor program file in
    ``conf_dirs`` (default ``/etc/supervisor/conf.d``) names, and those in
    ``protect`` (the venvs the current pillar names). Returns the removed paths.

    CLI Example:

    .. code-block:: bash

        salt-call jupyter_venv.prune keep=2
    """
    venv_store = os.path.normpath(venv_store or DEFAULT_STORE)
    try:
        keep = int(keep)
    except (TypeError, ValueError) as exc:
        raise SaltInvocationError(f"keep must be an integer of at least 1, got {keep!r}") from exc
    if keep < 1:
        raise SaltInvocationError(f"keep must be an integer of at least 1, got {keep!r}")
    referenced = {os.path.normpath(p) for p in (protect or [])}
    dropped = set()
    for name, data in read_history(venv_store).items():
        entries = data["entries"]
        live = link_target(data.get("link", "")) if data.get("link") else {"target": None}
        if live["target"]:
            referenced.add(live["target"])
        kept = entries[-keep:]
        kept += [e for e in entries[:-keep] if e.get("venv") == live["target"]]
        dropped.update(e["venv"] for e in entries if e not in kept)
        referenced.update(e["venv"] for e in kept)
        if len(kept) != len(entries):
            data["entries"] = [e for e in entries if e in kept]
            _write_json(os.path.join(_history_dir(venv_store), f"{name}.json"), data, mode=0o600)
    referenced |= _referenced_by_programs(conf_dirs or ["/etc/supervisor/conf.d"], venv_store)
    candidates = set()
    try:
        names = os.listdir(venv_store)
    except OSError:
        names = []
    for name in names:
        path = os.path.join(venv_store, name)
        if (_VENV_ID.match(name) or name.startswith("legacy-")) and os.path.isdir(path) and not os.path.islink(path):
            candidates.add(path)
    # a legacy venv moved beside its link (store on another file system)
    candidates.update(p for p in dropped if ".legacy-" in os.path.basename(p) and os.path.isdir(p))
    removed = []
    for path in sorted(candidates - referenced):
        log.info("jupyter_venv: pruning %s", path)
        shutil.rmtree(path, ignore_errors=True)
        removed.append(path)
    return removed


# ---------------------------------------------------------------------------
# the candidate check


class _CheckFailed(Exception):
    def __init__(self, check, comment):
        super().__init__(comment)
        self.check = check
        self.comment = comment


def _user_of(inst):
    try:
        entry = pwd.getpwnam(inst["user"])
    except KeyError as exc:
        raise CommandExecutionError(f"user '{inst['user']}' does not exist") from exc
    group = inst.get("group") or inst["user"]
    try:
        gid = grp.getgrnam(group).gr_gid
    except KeyError as exc:
        raise CommandExecutionError(f"group '{group}' does not exist") from exc
    return entry.pw_uid, gid, os.getgrouplist(inst["user"], gid)


def _free_port():
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _candidate_config(config, port):
    """
    The instance config for a candidate server: on ``127.0.0.1:<port>``, plain HTTP on
    TCP, at least INFO logging (the extension check reads it), and no token trait, so
    that the one-time token in ``JUPYTER_TOKEN`` is the token. Everything else (the
    password, base_url, root_dir, extensions, kernels' settings) as the live server has it.
    """
    config = copy.deepcopy(config) if isinstance(config, dict) else {}
    for cls in ("ServerApp", "IdentityProvider", "PasswordIdentityProvider", "NotebookApp"):
        if isinstance(config.get(cls), dict):
            config[cls].pop("token", None)
    server = config.setdefault("ServerApp", {})
    for trait in ("sock", "sock_mode", "certfile", "keyfile", "client_ca", "custom_display_url"):
        server.pop(trait, None)
    server.update(ip="127.0.0.1", port=port, port_retries=0, open_browser=False)
    server["log_level"] = "DEBUG" if server.get("log_level") in ("DEBUG", 10) else "INFO"
    return config


def _candidate_env(inst, venv, extra=None):
    env = {str(k): str(v) for k, v in (inst.get("environment") or {}).items()}
    link_bin = os.path.join(os.path.normpath(inst["venv"]), "bin")
    venv_bin = os.path.join(venv, "bin")
    parts = [venv_bin if os.path.normpath(p) == link_bin else p for p in env.get("PATH", "/usr/local/bin:/usr/bin:/bin").split(":")]
    if venv_bin not in parts:
        parts.insert(0, venv_bin)
    env["PATH"] = ":".join(parts)
    env.update(extra or {})
    return env


def _list_extensions(inst, venv, user, overrides, names, timeout):
    """(enabled {name: bool}, findable {name: bool}) in ``venv``; raises when it cannot tell."""
    python = os.path.join(venv, "bin", "python")
    if not os.access(python, os.X_OK):
        raise CommandExecutionError(f"{python} does not exist")
    proc = _run(
        [python, "-c", _EXTENSION_LISTER],
        timeout=timeout,
        env=_candidate_env(inst, venv),
        input=json.dumps({"overrides": overrides, "names": sorted(names)}),
        cwd=inst.get("root_dir") or "/",
        user=user,
        umask=0o027,
    )
    if proc.returncode != 0:
        raise CommandExecutionError(f"listing the server extensions of {venv} failed: {_tail(proc.stderr, 5)}")
    data = json.loads(proc.stdout)
    return data["enabled"], data["findable"]


def _expected_extensions(inst, venv, old, user, overrides, timeout):
    """
    Extensions the candidate must load: those it enables, and those the live venv
    enabled that the candidate still has (unless the candidate disables them).
    Returns (expected, dropped): ``dropped`` are the live venv's that the candidate no
    longer has at all (a package taken out of ``packages``).
    """
    old_enabled = {}
    if old and os.path.isdir(old):
        try:
            old_enabled, _ = _list_extensions(inst, old, user, overrides, [], timeout)
        except (CommandExecutionError, ValueError, KeyError) as exc:
            log.warning("jupyter_venv: cannot list the extensions of the live venv %s: %s", old, exc)
    old_on = sorted(n for n, on in old_enabled.items() if on)
    try:
        enabled, findable = _list_extensions(inst, venv, user, overrides, old_on, timeout)
    except (CommandExecutionError, ValueError, KeyError) as exc:
        raise _CheckFailed("extensions", str(exc)) from exc
    expected = {n for n, on in enabled.items() if on}
    dropped = []
    for name in old_on:
        if name in expected or enabled.get(name) is False:
            continue
        if findable.get(name):
            expected.add(name)
        else:
            dropped.append(name)
    return sorted(expected), dropped


def _extension_problems(log_text, expected):
    """One line per expected extension that jupyter_server did not report as loaded."""
    problems = []
    for name in expected:
        if re.search(rf"\] {re.escape(name)} \| extension was successfully loaded", log_text):
            continue
        mine = re.compile(rf"\] {re.escape(name)} \| .*(fail|error)")
        why = [line.split("] ", 1)[-1] for line in log_text.splitlines() if mine.search(line)]
        problems.append(f"{name}: " + ("; ".join(why) if why else "not loaded (no 'extension was successfully loaded' line)"))
    return problems


async def _http_checks(base, token, deadline, proc, log_path, expected, results):
    client = tornado.httpclient.AsyncHTTPClient(force_instance=True)
    headers = {"Authorization": f"token {token}"}

    def remaining():
        return max(1.0, deadline - time.monotonic())

    async def status():
        last = "no answer"
        while True:
            if proc.poll() is not None:
                raise _CheckFailed("status", f"the candidate server exited with code {proc.returncode} before it answered /api/status")
            try:
                resp = await client.fetch(base + "api/status", headers=headers, request_timeout=5, raise_error=False)
                if resp.code == 200 and "started" in json.loads(resp.body or b"{}"):
                    return "answers"
                last = f"HTTP {resp.code}"
            except (OSError, ValueError, tornado.httpclient.HTTPClientError) as exc:
                last = str(exc)
            if time.monotonic() > deadline:
                raise _CheckFailed("status", f"no answer from /api/status in time (last: {last})")
            await asyncio.sleep(0.2)

    async def extensions():
        with open(log_path, encoding="utf-8", errors="replace") as handle:
            text = handle.read()
        problems = _extension_problems(text, expected)
        if problems:
            raise _CheckFailed("extensions", "server extensions did not load: " + " | ".join(problems))
        return f"{len(expected)} loaded: {', '.join(expected)}"

    async def login():
        resp = await client.fetch(base + "login", request_timeout=remaining(), raise_error=False)
        body = (resp.body or b"").decode("utf-8", "replace")
        if resp.code != 200 or 'name="password"' not in body:
            raise _CheckFailed("login", f"GET {base}login gave HTTP {resp.code} without the password form")
        return "password form"

    async def kernel():
        resp = await client.fetch(base + "api/kernels", method="POST", body="{}", headers=headers,
                                  request_timeout=remaining(), raise_error=False)
        if resp.code != 201:
            raise _CheckFailed("kernel", f"POST api/kernels gave HTTP {resp.code}: {_tail((resp.body or b'').decode(errors='replace'), 3)}")
        kernel_id = json.loads(resp.body)["id"]
        try:
            return await _run_code(base, headers, kernel_id, deadline)
        finally:
            await client.fetch(base + f"api/kernels/{kernel_id}", method="DELETE", headers=headers,
                               request_timeout=10, raise_error=False)

    try:
        for name, step in (("status", status), ("extensions", extensions), ("login", login), ("kernel", kernel)):
            started = time.monotonic()
            try:
                comment = await step()
            except _CheckFailed as exc:
                results[name] = {"result": False, "seconds": round(time.monotonic() - started, 2), "comment": exc.comment}
                raise
            except (OSError, ValueError, KeyError, asyncio.TimeoutError, tornado.httpclient.HTTPClientError,
                    tornado.websocket.WebSocketError) as exc:
                results[name] = {"result": False, "seconds": round(time.monotonic() - started, 2), "comment": str(exc) or type(exc).__name__}
                raise _CheckFailed(name, str(exc) or type(exc).__name__) from exc
            results[name] = {"result": True, "seconds": round(time.monotonic() - started, 2), "comment": comment}
    finally:
        client.close()


async def _run_code(base, headers, kernel_id, deadline):
    """6*7 on the kernel over its websocket channels; '42' or _CheckFailed."""
    session = uuid.uuid4().hex
    url = "ws" + base[len("http"):] + f"api/kernels/{kernel_id}/channels?session_id={session}"
    request = tornado.httpclient.HTTPRequest(url, headers=headers, request_timeout=max(1.0, deadline - time.monotonic()))
    conn = await tornado.websocket.websocket_connect(request)
    msg_id = uuid.uuid4().hex
    conn.write_message(json.dumps({
        "header": {"msg_id": msg_id, "username": "jupyter-venv-check", "session": session,
                   "msg_type": "execute_request", "version": "5.3", "date": _now()},
        "parent_header": {}, "metadata": {}, "channel": "shell", "buffers": [],
        "content": {"code": "6*7", "silent": False, "store_history": False, "user_expressions": {},
                    "allow_stdin": False, "stop_on_error": True},
    }))
    try:
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise _CheckFailed("kernel", "no result of 6*7 from the kernel in time")
            raw = await asyncio.wait_for(conn.read_message(), left)
            if raw is None:
                raise _CheckFailed("kernel", "the kernel websocket closed before the result of 6*7")
            msg = json.loads(raw)
            if msg.get("parent_header", {}).get("msg_id") != msg_id:
                continue
            content = msg.get("content", {})
            if msg.get("msg_type") == "execute_result":
                value = content.get("data", {}).get("text/plain")
                if value != "42":
                    raise _CheckFailed("kernel", f"6*7 gave {value!r}")
                return "6*7 = 42 over the websocket"
            if msg.get("msg_type") == "error":
                raise _CheckFailed("kernel", f"6*7 raised {content.get('ename')}: {content.get('evalue')}")
    finally:
        conn.close()


def _in_thread(coro_factory):
    """Run a coroutine on a loop of its own (Salt's process may have one running)."""
    box = {}

    def target():
        try:
            box["value"] = asyncio.run(coro_factory())
        except BaseException as exc:  # pylint: disable=broad-except
            box["error"] = exc

    thread = threading.Thread(target=target, name="jupyter-venv-check", daemon=True)
    thread.start()
    thread.join()
    if "error" in box:
        raise box["error"]
    return box.get("value")


def _stop_candidate(proc):
    """TERM to the candidate's process group, KILL after 10 s; its kernels too."""
    try:
        family = psutil.Process(proc.pid).children(recursive=True)
    except psutil.Error:
        family = []
    if proc.poll() is None:
        try:
            os.killpg(proc.pid, signal.SIGTERM)
            proc.wait(10)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(10)
        except ProcessLookupError:
            pass
    for child in family:
        try:
            if child.is_running():
                child.kill()
        except psutil.Error:
            pass


def _check(inst, venv, old, timeout):
    """Run the candidate check; returns the result dict of :py:func:`check`."""
    venv = os.path.normpath(venv)
    started = time.monotonic()
    deadline = started + float(timeout)
    results = {}
    outcome = {"result": False, "failed": None, "checks": results, "log_tail": "", "dropped_extensions": [],
               "overhead": {}}
    user = _user_of(inst)
    token = secrets.token_urlsafe(32)
    binary = os.path.join(venv, "bin", f"jupyter-{inst.get('app', 'lab')}")
    config = _read_json(inst["config_file"])
    if config is None:
        raise CommandExecutionError(f"cannot read the instance config {inst['config_file']}")
    overrides = (config.get("ServerApp") or {}).get("jpserver_extensions") or {}
    tmp = tempfile.mkdtemp(prefix="jupyter-venv-check-")
    proc = None
    try:
        # 0700, the user's: the config copy holds the password hash
        os.chown(tmp, user[0], user[1])
        runtime = os.path.join(tmp, "runtime")
        os.mkdir(runtime, 0o700)
        os.chown(runtime, user[0], user[1])
        port = _free_port()
        config_path = os.path.join(tmp, "config.json")
        fd = os.open(config_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        os.fchown(fd, user[0], user[1])
        with os.fdopen(fd, "w", encoding="utf-8") as out:
            json.dump(_candidate_config(config, port), out)
        log_path = os.path.join(tmp, "server.log")
        try:
            mark = time.monotonic()
            expected, outcome["dropped_extensions"] = _expected_extensions(
                inst, venv, old, user, overrides, max(10, min(60, timeout))
            )
            outcome["overhead"]["list extensions"] = round(time.monotonic() - mark, 2)
            if not os.access(binary, os.X_OK):
                raise _CheckFailed("status", f"{binary} does not exist (is the app's package in packages?)")
            base = f"http://127.0.0.1:{port}{_base_url(inst, config)}"
            with open(log_path, "wb") as log_file:
                try:
                    # its own session: the stop reaches the server and what it started
                    proc = subprocess.Popen(  # pylint: disable=consider-using-with
                        [binary, "--no-browser", f"--config={config_path}"],
                        env=_candidate_env(inst, venv, {"JUPYTER_TOKEN": token, "JUPYTER_RUNTIME_DIR": runtime}),
                        cwd=inst.get("root_dir") or "/",
                        user=user[0],
                        group=user[1],
                        extra_groups=user[2],
                        stdin=subprocess.DEVNULL,
                        stdout=log_file,
                        stderr=subprocess.STDOUT,
                        start_new_session=True,
                        umask=0o027,
                    )
                except OSError as exc:
                    raise _CheckFailed("status", f"cannot start {binary}: {exc.strerror or exc}") from exc
            _in_thread(lambda: _http_checks(base, token, deadline, proc, log_path, expected, results))
            outcome["result"] = True
        except _CheckFailed as exc:
            outcome["failed"] = exc.check
            results.setdefault(exc.check, {"result": False, "seconds": 0, "comment": exc.comment})
        finally:
            if proc is not None:
                mark = time.monotonic()
                _stop_candidate(proc)
                outcome["overhead"]["stop candidate"] = round(time.monotonic() - mark, 2)
            try:
                with open(log_path, encoding="utf-8", errors="replace") as handle:
                    outcome["log_tail"] = mask(_tail(handle.read()), inst.get("pip"), extra=[token])
            except OSError:
                pass
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    for item in results.values():
        item["comment"] = mask(item["comment"], inst.get("pip"), extra=[token])
    outcome["seconds"] = round(time.monotonic() - started, 2)
    return outcome


def _base_url(inst, config):
    base = (config.get("ServerApp") or {}).get("base_url") or (inst.get("server") or {}).get("base_url") or "/"
    base = "/" + base.strip("/") + "/"
    return "/" if base == "//" else base


def check_key(instance, venv):
    """
    What a candidate check of ``venv`` for ``instance`` depends on: the venv, the
    instance's config file as it is on disk, and the instance settings the candidate
    runs with (user, app, root_dir, environment, server). A hex digest.

    CLI Example:

    .. code-block:: bash

        salt-call jupyter_venv.check_key jupyter /opt/jupyter/venvs/0123456789ab
    """
    return _check_key(_instance(instance, _settings()), venv)


def _check_key(inst, venv):
    try:
        with open(inst["config_file"], "rb") as handle:
            config = hashlib.sha256(handle.read()).hexdigest()
    except OSError:
        config = None
    facts = {
        "venv": os.path.normpath(venv),
        "config": config,
        "settings": {k: inst.get(k) for k in ("user", "group", "app", "root_dir", "environment", "server")},
    }
    return hashlib.sha256(json.dumps(facts, sort_keys=True, default=str).encode()).hexdigest()


def failed_check(instance, venv):
    """
    The recorded failure of the candidate check of ``venv`` for ``instance``
    (``{"at", "check", "comment", "log_tail", "marker"}``), or None when it has not
    failed with the same venv and config.

    CLI Example:

    .. code-block:: bash

        salt-call jupyter_venv.failed_check jupyter /opt/jupyter/venvs/0123456789ab
    """
    return _failed_check(_instance(instance, _settings()), venv)


def _failed_check(inst, venv):
    path = os.path.join(venv, CHECK_MARKER)
    data = _read_json(path)
    if isinstance(data, dict) and data.get("key") == _check_key(inst, venv):
        data["marker"] = path
        return data
    return None


def check(instance, venv, old=None, timeout=None, remember=True):
    """
    Check the venv ``venv`` as a candidate for the instance ``instance``: start
    ``<venv>/bin/jupyter-<app>`` as the instance's user, with its environment, in its
    root_dir, with a copy of its config on a free loopback port, and require, in turn:

    - ``status``: ``/api/status`` answers;
    - ``extensions``: every server extension the candidate enables, and every one the
      live venv ``old`` (default: the instance's link) enabled that the candidate still
      has, logs "extension was successfully loaded";
    - ``login``: the login page renders the password form;
    - ``kernel``: a kernel starts and answers 6*7 = 42 over its websocket.

    The check authenticates with a one-time token passed in the candidate's
    environment (never on a command line). The candidate is stopped (its process group
    and kernels) afterwards; its temporary config and runtime dir are removed.

    remember
        A failure is recorded in ``venv`` (keyed by :py:func:`check_key`), and a later
        check with the same venv and config returns it at once, without starting
        anything (``"remembered": True``), until packages or config change. A pass
        forgets an older failure. False: check anew, record nothing.

    Returns ``{"result": bool, "failed": <first failed check or None>, "checks":
    {name: {"result", "seconds", "comment"}}, "log_tail": <the candidate's log tail>,
    "dropped_extensions": [...], "overhead": {"list extensions": s, "stop candidate": s},
    "seconds": total, "remembered": bool}``.

    CLI Example:

    .. code-block:: bash

        salt-call jupyter_venv.check jupyter /opt/jupyter/venvs/0123456789ab
        salt-call jupyter_venv.check jupyter /opt/jupyter/venvs/0123456789ab remember=False
    """
    inst = _instance(instance, _settings())
    venv = os.path.normpath(venv)
    key = _check_key(inst, venv)
    if remember:
        known = _failed_check(inst, venv)
        if known:
            return {
                "result": False,
                "failed": known.get("check"),
                "checks": {known.get("check"): {"result": False, "seconds": 0, "comment": known.get("comment", "")}},
                "log_tail": known.get("log_tail", ""),
                "dropped_extensions": [],
                "overhead": {},
                "seconds": 0,
                "remembered": True,
                "at": known.get("at"),
                "marker": known["marker"],
            }
    outcome = _check(inst, venv, old or inst["venv"], timeout or inst["upgrade"]["timeout"])
    outcome["remembered"] = False
    if remember:
        marker = os.path.join(venv, CHECK_MARKER)
        if outcome["result"]:
            try:
                os.unlink(marker)
            except FileNotFoundError:
                pass
        else:
            failed = outcome["failed"]
            _write_json(marker, {
                "key": key,
                "at": _now(),
                "check": failed,
                "comment": outcome["checks"].get(failed, {}).get("comment", ""),
                "log_tail": outcome["log_tail"],
            })
            outcome["marker"] = marker
    return outcome
