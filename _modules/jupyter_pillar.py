"""
Validation of the jupyter formula's pillar: the gate between an admin's typo and a
compromised host. The formula's output is a public code-execution endpoint, so a pillar
that is well formed but dangerous is refused as firmly as a malformed one.

Pure functions (no host access), called by ``jupyter.settings``:

- ``check_layer``: the schema walk of one layer as written in pillar (the top level, or
  one instance's own entry): types, unknown keys (with the key a typo meant),
  normalisation (paths, base_url, addresses, sizes).
- ``check_instance``: the classes of danger on one merged instance, after
  normalisation: weak or published passwords, paths (system directories, what the
  Jupyter user can write versus what root runs), Jupyter config traits that weaken
  authentication, exposure, accounts, empty lists, TLS material, base_url.
- ``check_instances``: the rules between instances (ports, nginx server blocks, users,
  overlapping paths, names that must differ).

``gather_facts`` reads what the host-dependent rules need (accounts, owners and
realpaths of paths, TLS files, IPv6, the formula's record); a rule whose fact is
missing is skipped, so the pure checks stay unit-testable with synthetic facts.

Every message reads ``jupyter:<key path>: <what was expected / why>`` and never shows a
secret. Written by hand: the schema libraries at hand (jsonschema, voluptuous) give
messages about schema paths rather than pillar keys, and none suggests the key a typo
meant.
"""

import datetime
import difflib
import ipaddress
import json
import math
import os
import posixpath
import re

try:
    from packaging.requirements import InvalidRequirement, Requirement

    HAS_PACKAGING = True
except ImportError:  # pragma: no cover - Salt itself depends on packaging
    HAS_PACKAGING = False

__virtualname__ = "jupyter_pillar"

HIDDEN = "<hidden>"
PREFIX = "jupyter"

# Keys of the top level only: shared by every instance, refused inside one.
TOP_ONLY = ("clean", "instances", "upgrade", "venv_store", "state_dir")

INSTANCE_NAME = re.compile(r"[a-z][a-z0-9_]{0,23}")  # no '-': it means nesting in systemd slice names

# --------------------------------------------------------------------------------------
# The documented lists (the issue asks for lists here; everything else is a rule).

# Directories of the operating system, its packages and the services the formula
# configures. No path key may name one of them or an ancestor of one: the formula
# creates, chowns or (clean) removes the directories it is given.
SYSTEM_DIRS = frozenset(
    """
    / /bin /boot /dev /etc /home /lib /lib32 /lib64 /libx32 /lost+found /media /mnt /opt
    /proc /root /run /sbin /snap /srv /sys /tmp /usr /var
    /usr/bin /usr/sbin /usr/lib /usr/lib32 /usr/lib64 /usr/libx32 /usr/libexec /usr/include
    /usr/share /usr/src /usr/games /usr/etc /usr/local /usr/local/bin /usr/local/sbin
    /usr/local/lib /usr/local/lib64 /usr/local/libexec /usr/local/include /usr/local/share
    /usr/local/src /usr/local/etc /usr/local/games /usr/share/ca-certificates
    /usr/local/share/ca-certificates
    /var/backups /var/cache /var/empty /var/lib /var/local /var/lock /var/log /var/mail
    /var/opt /var/run /var/spool /var/tmp /var/www /var/lib/apt /var/lib/dpkg /var/lib/rpm
    /var/lib/systemd /var/lib/nginx /var/log/nginx /var/log/supervisor /var/log/salt
    /var/cache/apt /var/cache/salt /var/spool/cron
    /etc/apt /etc/ca-certificates /etc/cron.d /etc/cron.daily /etc/cron.hourly
    /etc/cron.monthly /etc/cron.weekly /etc/default /etc/init.d /etc/jupyter /etc/ld.so.conf.d
    /etc/letsencrypt /etc/logrotate.d /etc/modprobe.d /etc/nginx /etc/pam.d /etc/pki
    /etc/pki/tls /etc/profile.d /etc/salt /etc/security /etc/ssh /etc/ssl /etc/ssl/certs
    /etc/ssl/private /etc/sudoers.d /etc/supervisor /etc/sysctl.d /etc/systemd
    /etc/systemd/system
    /srv/salt /srv/pillar
    """.split()
)

# Trees the Jupyter user must not own anything in: root-only or shared system trees,
# world-writable temporary trees (another user can plant a link there first), trees
# served or executed by other services.
ROOT_ONLY_TREES = (
    "/bin", "/boot", "/dev", "/etc", "/lib", "/lib32", "/lib64", "/libx32", "/proc", "/root",
    "/run", "/sbin", "/sys", "/tmp", "/usr", "/var/backups", "/var/cache", "/var/lib/apt",
    "/var/lib/dpkg", "/var/lib/systemd", "/var/lock", "/var/log", "/var/mail", "/var/run",
    "/var/spool", "/var/tmp", "/var/www", "/srv/salt", "/srv/pillar",
)

# jupyter_core's system config path: every Jupyter server on the host reads these
# (and <sys.prefix>/etc/jupyter of its own Python).
SHARED_CONFIG_DIRS = ("/etc/jupyter", "/usr/local/etc/jupyter", "/usr/etc/jupyter")

# Groups whose members are root in all but name (or read every secret, or every log).
PRIVILEGED_GROUPS = frozenset(
    "root sudo admin wheel adm shadow disk kmem sys docker lxd libvirt kvm systemd-journal "
    "staff src utmp tty operator input".split()
)

# nginx worker accounts of the supported distributions (and nginx:user, whatever it is).
NGINX_WORKERS = ("www-data", "nginx", "http")

# Passwords the formula's own docs and examples show (README.md, pillar.example, docs/,
# tests/lab/README.md, DESIGN.md, the CLI examples of the modules). A test scans those
# files and fails when one is missing here. Compared after _password_key().
PUBLISHED_PASSWORDS = (
    "change-me-please",
    "s3cret",
    "s3cret-pass",
    "correct horse battery staple",
)

# Jupyter config traits the formula sets from its own keys. Refused on every class:
# traitlets applies a trait set on a subclass (PasswordIdentityProvider.token) or in a
# nested section (ServerApp.IdentityProvider.token) over the formula's own value.
OWNED_TRAITS = {
    "ip": "jupyter:server:ip",
    "port": "jupyter:server:port",
    "port_retries": "jupyter:server:port (a busy port must fail, not move away from nginx)",
    "sock": "jupyter:server:ip and jupyter:server:port (nginx proxies to them)",
    "sock_mode": "jupyter:server:ip and jupyter:server:port (nginx proxies to them)",
    "base_url": "jupyter:server:base_url",
    "root_dir": "jupyter:root_dir",
    "notebook_dir": "jupyter:root_dir",
    "password": "jupyter:password or jupyter:hashed_password",
    "hashed_password": "jupyter:password or jupyter:hashed_password",
    "allow_root": "jupyter:user (the server never runs as root)",
    "allow_remote_access": "jupyter:nginx (requests arrive through nginx)",
    "trust_xheaders": "jupyter:nginx (nginx sets the X-Forwarded headers)",
    "certfile": "jupyter:nginx:tls (nginx terminates TLS)",
    "keyfile": "jupyter:nginx:tls (nginx terminates TLS; Session.keyfile signs kernel messages)",
    "client_ca": "jupyter:nginx:tls (nginx terminates TLS)",
    "ssl_options": "jupyter:nginx:tls (nginx terminates TLS)",
    "config_file": "jupyter:config_file",
    "config_file_name": "jupyter:config_file",
}

# Traits that weaken authentication, origin, XSRF or Host checks: refused on every class.
WEAKENING_TRAITS = {
    "token": "token login comes back (the formula allows the password only)",
    "password_required": "a server without a password (the formula requires one)",
    "allow_password_change": "the login page could change the password (it belongs to pillar)",
    "identity_provider_class": "replaces the login check",
    "authorizer_class": "replaces the permission check",
    "login_handler_class": "replaces the login page",
    "logout_handler_class": "replaces the logout page",
    "cookie_secret": "forges login cookies for whoever knows it",
    "cookie_secret_file": "moves the secret that signs login cookies",
    "secure_cookie": "the formula decides the cookie's Secure flag from jupyter:nginx:tls",
    "allow_unauthenticated_access": "lets requests through without a login",
    "disable_check_xsrf": "turns the cross-site request forgery check off",
    "allow_origin": "lets other sites' pages call the API",
    "allow_origin_pat": "lets other sites' pages call the API",
    "allow_credentials": "lets other sites' pages call the API with the login cookie",
    "local_hostnames": "widens the Host check against DNS rebinding",
    "websocket_url": "sends kernel websockets around nginx",
    "extra_static_paths": "static files are served without a login",
    "key": "Session.key signs kernel messages (empty turns signing off)",
    "signature_scheme": "Session.signature_scheme signs kernel messages",
}

# Traits allowed only with their safe value.
SAFE_VALUES = {
    "authenticate_prometheus": True,  # False: /metrics without a login
    "nbconvert_csp_sandbox": True,  # False: notebooks rendered as HTML run scripts on the origin
    "validate_cert": True,  # GatewayClient: False trusts any certificate
}

# Keys of a tornado_settings trait that weaken the same checks (jupyter_server passes
# tornado_settings over its own web application settings).
REFUSED_TORNADO_SETTINGS = {
    "cookie_secret": "signs login cookies",
    "login_url": "moves the login page",
    "xsrf_cookies": "turns the XSRF check off",
    "disable_check_xsrf": "turns the XSRF check off",
    "allow_origin": "lets other sites' pages call the API",
    "allow_origin_pat": "lets other sites' pages call the API",
    "allow_credentials": "lets other sites' pages call the API with the login cookie",
    "allow_unauthenticated_access": "lets requests through without a login",
    "allow_remote_access": "set by the formula",
    "local_hostnames": "widens the Host check",
    "authenticate_prometheus": "/metrics without a login",
    "allow_password_change": "the password belongs to pillar",
    "identity_provider": "replaces the login check",
    "authorizer": "replaces the permission check",
    "login_handler_class": "replaces the login page",
    "password": "the password comes from pillar",
    "token": "token login",
    "base_url": "set by the formula",
    "static_path": "static files are served without a login",
    "static_custom_path": "static files are served without a login",
    "static_handler_class": "static files are served without a login",
    "static_handler_args": "static files are served without a login",
    "static_url_prefix": "static files are served without a login",
    "websocket_url": "sends kernel websockets around nginx",
    "nbconvert_csp_sandbox": "notebooks rendered as HTML would run scripts on the origin",
    "serverapp": "jupyter_server's own object",
    "config": "jupyter_server's own object",
}

# Dict-valued traits / tornado settings holding cookie attributes.
COOKIE_TRAITS = ("cookie_options", "get_secure_cookie_kwargs", "xsrf_cookie_kwargs")

ARGON2_HASH = re.compile(
    r"argon2:\$argon2id\$v=19\$m=\d+,t=\d+,p=\d+\$[A-Za-z0-9+/]+\$[A-Za-z0-9+/]+"
)
LEGACY_HASH = re.compile(r"(sha1|sha256|sha512|md5):[0-9a-f]*:[0-9a-f]+")

TLS_DEFAULTS = {
    "certificate": None,
    "certificate_key": None,
    "certificate_pem": None,
    "certificate_key_pem": None,
    "listen": 443,
    "redirect_http": True,
    "acme": None,
}
ACME_DEFAULTS = {"email": None, "directory": None, "ca_bundle": None, "renew_before_days": 30}
SYS_UID_MAX = 999  # Debian's default when /etc/login.defs does not say
NOBODY_UID = 65534
MIN_STRENGTH = 3  # zxcvbn's score, 0 to 4
MiB = 1024 * 1024


def __virtual__():
    if not HAS_PACKAGING:
        return (False, "jupyter_pillar needs the packaging library")
    return __virtualname__


class Invalid(Exception):
    """A value does not fit; the message says what was expected."""


def _shown(value):
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


# --------------------------------------------------------------------------------------
# leaf checkers: each takes a value and returns it (normalised) or raises Invalid


def _string(pattern, expected):
    regex = re.compile(pattern)

    def check(value):
        if not isinstance(value, str) or not regex.fullmatch(value):
            raise Invalid(f"expected {expected}, got {_shown(value)}")
        return value

    return check


def _integer(low, high):
    def check(value):
        if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
            raise Invalid(f"expected an integer from {low} to {high}, got {_shown(value)}")
        return value

    return check


def _boolean(value):
    if not isinstance(value, bool):
        raise Invalid(f"expected true or false, got {_shown(value)}")
    return value


def _choice(*choices):
    def check(value):
        if value not in choices:
            raise Invalid(f"expected one of {', '.join(choices)}, got {_shown(value)}")
        return value

    return check


def _nullable(inner):
    """None, or what inner (a checker or a dict of keys) accepts."""
    return ("nullable", inner)


def _list(inner, scalar_ok=False):
    def check(value):
        if scalar_ok and isinstance(value, str):
            value = [value]
        if not isinstance(value, list):
            raise Invalid(f"expected a list, got {_shown(value)}")
        out = []
        for index, item in enumerate(value):
            try:
                out.append(inner(item))
            except Invalid as exc:
                raise Invalid(f"item {index}: {exc}") from None
        return out

    return check


def _normalise_path(value):
    """'//' collapsed, '.' and '..' resolved (lexically: realpaths are facts)."""
    return posixpath.normpath(re.sub(r"/+", "/", value))


def _path(value):
    if not isinstance(value, str) or not re.fullmatch(r"/[A-Za-z0-9._@+/-]*", value):
        raise Invalid(
            "expected an absolute path of letters, digits and ._@+-/ "
            f"(no spaces, quotes, ';' or braces), got {_shown(value)}"
        )
    return _normalise_path(value)


def _json_path(value):
    value = _path(value)
    if not value.endswith(".json") or value.endswith("/.json"):
        raise Invalid(f"expected an absolute path ending in .json, got {_shown(value)}")
    return value


def _base_url(value):
    """A URL path: '/' added at both ends when missing; no '.', '..' or empty segments."""
    if not isinstance(value, str) or not re.fullmatch(r"[A-Za-z0-9._~/-]*", value):
        raise Invalid(
            "expected a URL path of letters, digits, ._~- and '/' (e.g. /nb/), "
            f"got {_shown(value)}"
        )
    value = ("" if value.startswith("/") else "/") + value
    value += "" if value.endswith("/") else "/"
    if "//" in value:
        raise Invalid(f"expected no empty segment ('//'), got {_shown(value)}")
    if any(seg in (".", "..") for seg in value.split("/")):
        raise Invalid(f"expected no '.' or '..' segment (a path traversal), got {_shown(value)}")
    return value


def _ip(value):
    # strict: no scope ID (%eth0), no spaces or other text, no integers
    if not isinstance(value, str) or not re.fullmatch(r"[0-9A-Fa-f.:]+", value):
        raise Invalid(f"expected an IP address (no scope ID, no spaces), got {_shown(value)}")
    try:
        return str(ipaddress.ip_address(value))
    except ValueError:
        raise Invalid(f"expected an IP address, got {_shown(value)}") from None


def _size(value):
    """Bytes: an integer, or a number with K, M or G (powers of 1024)."""
    expected = f"a size of at least 1M: bytes, or a number with K, M or G such as 512M, got {_shown(value)}"
    if isinstance(value, bool):
        raise Invalid(f"expected {expected}")
    if isinstance(value, str):
        match = re.fullmatch(r"([1-9][0-9]*)([KkMmGg])", value)
        if not match:
            raise Invalid(f"expected {expected}")
        value = int(match.group(1)) * 1024 ** " KMG".index(match.group(2).upper())
    if not isinstance(value, int) or value < MiB:
        raise Invalid(f"expected {expected}")
    return value


def _cpu(value):
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or not 0 < value <= 4096:
        raise Invalid(f"expected a number of cores greater than 0 (e.g. 1.5), got {_shown(value)}")
    return float(value)


def _requirement(value):
    if not isinstance(value, str) or value.startswith("-") or "\n" in value:
        raise Invalid(f"expected a pip requirement specifier, got {_shown(value)}")
    try:
        Requirement(value)
    except InvalidRequirement as exc:
        raise Invalid(f"not a pip requirement specifier: {exc}") from None
    return value


def _password(value):
    if not isinstance(value, str) or len(value) < 8 or "\n" in value:
        # never show the value: it is the secret
        raise Invalid("expected a string of at least 8 characters on one line")
    return value


def _hashed_password(value):
    if isinstance(value, str) and LEGACY_HASH.fullmatch(value):
        raise Invalid(
            "legacy salted-hash passwords are refused (fast to brute-force); give "
            "jupyter:password and the formula stores an argon2 hash, or make one with "
            "`salt-call jupyter.hash_password`"
        )
    if not isinstance(value, str) or not ARGON2_HASH.fullmatch(value):
        raise Invalid(
            "expected an argon2 hash as jupyter_server makes it "
            "('argon2:$argon2id$v=19$m=...,t=...,p=...$<salt>$<hash>')"
        )
    return value


def _pem(kind):
    def check(value):
        if not isinstance(value, str) or f"-----BEGIN {kind}" not in value:
            raise Invalid(f"expected PEM text with a '-----BEGIN {kind}' line")
        return value

    return check


def _traitlets(value):
    """The shape only; what the traits do is check_instance's (rule class 3)."""
    if not isinstance(value, dict):
        raise Invalid(f"expected a mapping of traitlets classes, got {_shown(value)}")
    for cls, traits in value.items():
        if not isinstance(cls, str) or not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", cls):
            raise Invalid(f"{_shown(cls)} is not a traitlets class name")
        if not isinstance(traits, dict):
            raise Invalid(f"{cls}: expected a mapping of trait names to values")
    return value


def _environment(value):
    if not isinstance(value, dict):
        raise Invalid(f"expected a mapping of variable names to values, got {_shown(value)}")
    for key, val in value.items():
        if not isinstance(key, str) or not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", key):
            raise Invalid(f"{_shown(key)} is not an environment variable name")
        # supervisor reads ' ;' and ' #' as the start of a comment and strips quotes
        if not isinstance(val, (str, int)) or re.search(r'["\'\n\r%,;#]', str(val)):
            raise Invalid(f"{key}: expected a value without quotes, '%', ',', ';', '#' or newlines")
    return {key: str(val) for key, val in value.items()}


NAME = r"[a-z_][a-z0-9_-]{0,31}"
HOST = r"_|(\*\.)?[A-Za-z0-9]([A-Za-z0-9-]*[A-Za-z0-9])?(\.[A-Za-z0-9]([A-Za-z0-9-]*[A-Za-z0-9])?)*"
URL = r"(https?|file)://[^\s\"';{}]+"
EMAIL = r"[A-Za-z0-9._%+-]+@[A-Za-z0-9]([A-Za-z0-9-]*[A-Za-z0-9])?(\.[A-Za-z0-9]([A-Za-z0-9-]*[A-Za-z0-9])?)+"
PORT = _integer(1, 65535)

SCHEMA = {
    "user": _string(NAME, "a POSIX user name (lower case letters, digits, _ and -)"),
    "group": _nullable(_string(NAME, "a POSIX group name")),
    "home": _nullable(_path),
    "shell": _path,
    "root_dir": _path,
    "venv": _path,
    "python": _path,
    "app": _choice("lab", "notebook"),
    "packages": _list(_requirement),
    "pip": {
        "index_url": _nullable(_string(URL, "an http(s) or file URL")),
        "extra_index_urls": _list(_string(URL, "an http(s) or file URL"), scalar_ok=True),
        "trusted_hosts": _list(_string(HOST, "a host name"), scalar_ok=True),
        "proxy": _nullable(_string(URL, "an http(s) URL")),
    },
    "password": _nullable(_password),
    "hashed_password": _nullable(_hashed_password),
    "config_file": _nullable(_json_path),
    "server": {
        "ip": _ip,
        "port": PORT,
        "base_url": _base_url,
        "expose": _boolean,
    },
    "config": _traitlets,
    "limits": _nullable(
        {
            "memory": _nullable(_size),
            "cpu": _nullable(_cpu),
            "tasks": _nullable(_integer(1, 4194304)),
        }
    ),
    "supervisor": {
        "program": _string(r"[A-Za-z0-9_-]{1,64}", "a program name of letters, digits, _ and -"),
        "startsecs": _integer(0, 600),
        "stopwaitsecs": _integer(1, 3600),
        "log_dir": _path,
        "environment": _environment,
        "package": _string(r"[a-z0-9][a-z0-9.+-]*", "a package name"),
        "service": _string(r"[A-Za-z0-9_.@-]+", "a service name"),
        "conf_dir": _path,
        "conf_ext": _choice(".conf", ".ini"),
        "socket": _path,
    },
    "nginx": {
        "site": _string(r"[A-Za-z0-9_-]{1,64}", "a file name of letters, digits, _ and -"),
        "server_name": _list(_string(HOST, "a host name, *.domain or _"), scalar_ok=True),
        "listen": PORT,
        "ipv6": _boolean,
        "default_server": _boolean,
        "client_max_body_size": _string(r"\d+[kKmMgG]?", "a size such as 512m, 2g or 0"),
        "proxy_read_timeout": _integer(1, 7 * 86400),
        "login_rate_limit": _nullable(
            {
                "rate": _string(r"[1-9]\d*r/[sm]", "a rate such as 10r/m or 1r/s"),
                "burst": _integer(0, 10000),
            }
        ),
        "hsts_max_age": _integer(0, 10 * 365 * 86400),
        "extra_directives": _list(
            _string(r"[^\n\r{}]+;", "one nginx directive on one line, ending in ';'")
        ),
        "tls": _nullable(
            {
                "certificate": _nullable(_path),
                "certificate_key": _nullable(_path),
                "certificate_pem": _nullable(_pem("CERTIFICATE")),
                "certificate_key_pem": _nullable(_pem("")),
                "listen": PORT,
                "redirect_http": _boolean,
                "acme": _nullable(
                    {
                        "email": _nullable(_string(EMAIL, "an e-mail address")),
                        "directory": _nullable(_string(r"https://[^\s\"';{}]+", "an https:// ACME directory URL")),
                        "ca_bundle": _nullable(_path),
                        "renew_before_days": _integer(1, 365),
                    }
                ),
            }
        ),
        "package": _string(r"[a-z0-9][a-z0-9.+-]*", "a package name"),
        "service": _string(r"[A-Za-z0-9_.@-]+", "a service name"),
        "user": _string(NAME, "a user name"),
        "sites_available": _path,
        "sites_enabled": _nullable(_path),
        "distro_default_site": _nullable(_path),
        "tls_dir": _path,
        "modules_include": _nullable(_string(r"/[A-Za-z0-9._/*-]+", "an absolute path or glob")),
    },
    "python_packages": _list(_string(r"[a-z0-9][a-z0-9.+-]*", "a package name")),
    "clean": {"packages": _boolean, "user": _boolean},
    "upgrade": {"keep": _integer(1, 100), "timeout": _integer(1, 86400)},
    "venv_store": _path,
    "state_dir": _path,
    # "instances" is walked by check_layer itself: its keys are names, its values layers
}
INSTANCE_SCHEMA = {key: value for key, value in SCHEMA.items() if key not in TOP_ONLY}


def _walk(schema, value, path, errors):
    """Check value against schema (a dict of keys or a checker); collect errors."""
    if isinstance(schema, tuple):
        return None if value is None else _walk(schema[1], value, path, errors)
    if callable(schema):
        try:
            return schema(value)
        except Invalid as exc:
            errors.append(f"{path}: {exc}")
            return value
    if not isinstance(value, dict):
        errors.append(f"{path}: expected a mapping, got {_shown(value)}")
        return value
    out = {}
    for key, item in value.items():
        if key not in schema:
            hint = difflib.get_close_matches(str(key), list(schema), n=1)
            more = f"; did you mean '{hint[0]}'?" if hint else f" (known: {', '.join(schema)})"
            errors.append(f"{path}:{key}: unknown key{more}")
            continue
        out[key] = _walk(schema[key], item, f"{path}:{key}", errors)
    return out


# --------------------------------------------------------------------------------------
# check_layer


def check_layer(layer, path=PREFIX, top=True):
    """
    Check ONE layer of pillar as written: the top level (``top=True``; its
    ``instances`` entries are checked too, each as a layer of its own) or one
    instance's own entry (``top=False``, ``path="jupyter:instances:NAME"``). Checks
    types, refuses unknown keys (suggesting the key a typo meant) and the top-level
    keys inside an instance (clean, instances, upgrade, venv_store, state_dir), and
    normalises: paths (``//``, ``.``, ``..``), base_url (``/`` at both ends),
    addresses, sizes (``limits:memory`` in bytes), a scalar ``server_name``.

    Returns ``(normalised, errors)``; each error reads ``<path>:<key>: <why>``.

    CLI Example:

    .. code-block:: bash

        salt '*' jupyter_pillar.check_layer '{"server": {"base_url": "nb"}}'
    """
    errors = []
    if layer is None and not top:
        return {}, errors
    if not isinstance(layer, dict):
        return layer, [f"{path}: expected a mapping, got {_shown(layer)}"]
    layer = dict(layer)
    instances = layer.pop("instances", None) if top else None
    if not top:
        for key in [k for k in layer if k in TOP_ONLY]:
            errors.append(
                f"{path}:{key}: set at the top level only (jupyter:{key}), not inside an instance"
            )
            layer.pop(key)
    out = _walk(SCHEMA if top else INSTANCE_SCHEMA, layer, path, errors)
    if not top:
        return out, errors
    top_tls = _fill_tls(out, {})
    if instances is None:
        return out, errors
    if not isinstance(instances, dict):
        errors.append(f"{path}:instances: expected a mapping of instance names to settings, got {_shown(instances)}")
        return out, errors
    if not instances:
        errors.append(f"{path}:instances: expected at least one instance (leave instances out for one server)")
    out["instances"] = {}
    for name, entry in instances.items():
        where = f"{path}:instances:{name}"
        if not isinstance(name, str) or not INSTANCE_NAME.fullmatch(name):
            errors.append(
                f"{where}: expected an instance name of 1 to 24 lower case letters, digits and _, "
                "starting with a letter (no '-': systemd reads it as nesting)"
            )
            continue
        out["instances"][name], more = check_layer(entry, where, top=False)
        errors += more
        if not more:
            _fill_tls(out["instances"][name], top_tls)
    return out, errors


def _fill_tls(layer, inherited):
    """The defaults of nginx:tls and nginx:tls:acme, which are null by default so that
    defaults.yaml cannot hold their keys: filled where a layer opens the mapping, for
    the keys it does not inherit (``inherited``: the top level's filled tls), so that a
    deep merge of an instance over the top level keeps the top level's values."""
    tls = (layer.get("nginx") or {}).get("tls") if isinstance(layer.get("nginx"), dict) else None
    if not isinstance(tls, dict):
        return {}
    inherited = inherited if isinstance(inherited, dict) else {}
    for key, value in TLS_DEFAULTS.items():
        if key not in tls and key not in inherited:
            tls[key] = value
    acme = tls.get("acme")
    if isinstance(acme, dict):
        known = inherited.get("acme") if isinstance(inherited.get("acme"), dict) else {}
        for key, value in ACME_DEFAULTS.items():
            if key not in acme and key not in known:
                acme[key] = value
    return tls


# --------------------------------------------------------------------------------------
# helpers for the merged instance


def _get(data, key, default=None):
    value = data
    for part in key.split(":"):
        if not isinstance(value, dict):
            return default
        value = value.get(part)
        if value is None:
            return default
    return value


def _norm(value):
    return _normalise_path(value) if isinstance(value, str) and value.startswith("/") else value


def _inside(child, parent):
    """child is parent or below it."""
    return child == parent or child.startswith(parent.rstrip("/") + "/")


def _overlap(one, other):
    return _inside(one, other) or _inside(other, one)


def _instance_name(path):
    parts = path.split(":")
    return parts[2] if len(parts) >= 3 and parts[1] == "instances" else PREFIX


def _effective(inst):
    """The values the rules look at, with the formula's derived defaults where the
    instance (merged, derived or not) leaves them null."""
    user = inst.get("user") or "jupyter"
    program = inst.get("program") or _get(inst, "supervisor:program") or "jupyter"
    config_file = inst.get("config_file") or f"/etc/jupyter-server/{program}.json"
    return {
        "user": user,
        "group": inst.get("group") or user,
        "home": _norm(inst.get("home") or f"/home/{user}"),
        "program": program,
        "config_file": _norm(config_file),
        "site": inst.get("site") or _get(inst, "nginx:site") or "jupyter",
    }


# Path keys by what the formula and root do with them.
USER_PATHS = ("root_dir", "home")  # owned by the Jupyter user
ROOT_PATHS = {  # root's: what root does with each
    "venv": "executes",
    "venv_dir": "executes",
    "venv_store": "executes",
    "python": "executes",
    "config_file": "reads as config",
    "supervisor:log_dir": "writes logs into",
    "state_dir": "keeps the formula's record in",
    "supervisor:conf_dir": "reads as config",
    "supervisor:socket": "controls supervisor through",
    "nginx:sites_available": "reads as config",
    "nginx:sites_enabled": "reads as config",
    "nginx:distro_default_site": "deletes",
    "nginx:tls_dir": "reads TLS keys from",
    "nginx:tls:certificate": "reads as nginx's certificate",
    "nginx:tls:certificate_key": "reads as nginx's private key",
    "nginx:tls:acme:ca_bundle": "trusts as a CA",
}
OTHER_PATHS = ("shell",)


def _path_values(inst):
    """{key: normalised path} of every path key set in the merged instance."""
    eff = _effective(inst)
    out = {}
    for key in USER_PATHS + tuple(ROOT_PATHS) + OTHER_PATHS:
        value = eff.get(key) if key in ("home", "config_file") else _get(inst, key)
        if isinstance(value, str) and value.startswith("/"):
            out[key] = _norm(value)
    return out


# --------------------------------------------------------------------------------------
# rule class 1: passwords


def _password_key(value):
    """Case, spaces and separators do not make a published password a new one."""
    return re.sub(r"[\s_.-]+", "", value).casefold()


PUBLISHED_KEYS = frozenset(_password_key(p) for p in PUBLISHED_PASSWORDS)


def _load_zxcvbn():
    try:
        from zxcvbn import zxcvbn  # pylint: disable=import-outside-toplevel

        return zxcvbn
    except ImportError:
        return None


def _check_password(inst, path, errors):
    password = inst.get("password")
    if not isinstance(password, str) or password == HIDDEN:
        return
    key = f"{path}:password"
    if _password_key(password) in PUBLISHED_KEYS:
        errors.append(f"{key}: it is published in the formula's own docs or examples; choose your own")
        return
    estimate = _load_zxcvbn()
    if estimate is None:
        errors.append(
            f"{key}: cannot rate its strength: install the zxcvbn package for Salt's Python, "
            "or give jupyter:hashed_password instead"
        )
        return
    names = _get(inst, "nginx:server_name") or []
    names = [names] if isinstance(names, str) else names
    hints = {inst.get("user") or "", _instance_name(path), "jupyter", *PUBLISHED_PASSWORDS}
    for host in names:
        hints |= {host, *host.split(".")}
    result = estimate(password[:72], user_inputs=sorted(h for h in hints if h and h != "_"))
    if result["score"] < MIN_STRENGTH:
        warning = (result.get("feedback") or {}).get("warning")
        errors.append(
            f"{key}: too easy to guess (strength {result['score']} of 4, at least {MIN_STRENGTH} "
            f"needed{': ' + warning.rstrip('.') if warning else ''}); choose a longer, less "
            "predictable passphrase"
        )


def _check_password_presence(inst, path, errors, require_password):
    if inst.get("password") and inst.get("hashed_password"):
        errors.append(f"{path}:hashed_password: give jupyter:password or jupyter:hashed_password, not both")
    elif require_password and not inst.get("password") and not inst.get("hashed_password"):
        errors.append(f"{path}:password: set jupyter:password or jupyter:hashed_password")


# --------------------------------------------------------------------------------------
# rule class 2: paths


def _system_dir_error(value):
    if value in SYSTEM_DIRS:
        return f"{value} is a system directory"
    held = sorted(d for d in SYSTEM_DIRS if _inside(d, value))
    if held:
        return f"{value} holds the system directory {held[0]}"
    return None


def _check_paths(inst, path, facts, errors):
    values = _path_values(inst)
    # a. no path key names a system directory or an ancestor of one
    for key, value in values.items():
        why = _system_dir_error(value)
        if why:
            errors.append(f"{path}:{key}: {why}; the formula creates, chowns or removes what it is given")
    # b. the files the formula writes go in a directory of their own
    writes = {"config_file": values.get("config_file")}
    tls = _get(inst, "nginx:tls") or {}
    for kind in ("certificate", "certificate_key"):
        if tls.get(f"{kind}_pem"):
            writes[f"nginx:tls:{kind}"] = values.get(f"nginx:tls:{kind}")
    for key, value in writes.items():
        if value and posixpath.dirname(value) in SYSTEM_DIRS and value not in SYSTEM_DIRS:
            errors.append(
                f"{path}:{key}: the formula would write {value} straight into the system "
                f"directory {posixpath.dirname(value)}; use a directory of its own"
            )
    # c. what the formula deletes stays in nginx's site directories
    default_site = values.get("nginx:distro_default_site")
    site_dirs = [d for d in (values.get("nginx:sites_enabled"), values.get("nginx:sites_available")) if d]
    if default_site and not any(posixpath.dirname(default_site) == d for d in site_dirs):
        errors.append(
            f"{path}:nginx:distro_default_site: the formula deletes it, so it must be a file "
            f"in {' or '.join(site_dirs) or 'nginx:sites_enabled'}"
        )
    # d. the shared Jupyter config directories
    config_file = values.get("config_file")
    if config_file:
        shared = list(SHARED_CONFIG_DIRS)
        python = values.get("python")
        if python:
            shared.append(posixpath.join(posixpath.dirname(posixpath.dirname(python)), "etc/jupyter"))
        venvs = [values[k] for k in ("venv", "venv_dir", "venv_store") if k in values]
        where = next((d for d in shared + venvs if _inside(config_file, d)), None)
        if where:
            errors.append(
                f"{path}:config_file: {where} is read by every Jupyter server on the host "
                "(or belongs to a venv); choose a directory of its own such as /etc/jupyter-server"
            )
    # e. what the Jupyter user writes
    for ukey in USER_PATHS:
        upath = values.get(ukey)
        if not upath:
            continue
        tree = next((t for t in ROOT_ONLY_TREES if _inside(upath, t)), None)
        if tree:
            errors.append(
                f"{path}:{ukey}: {upath} is inside {tree}, a tree the Jupyter user must not own "
                "anything in (root-only, shared or world-writable)"
            )
        clashes = []
        for rkey, does in ROOT_PATHS.items():
            rpath = values.get(rkey)
            if rpath and _overlap(upath, rpath):
                relation = "is" if upath == rpath else ("is inside" if _inside(upath, rpath) else "holds")
                clashes.append(f"{relation} jupyter:{rkey} ({rpath}, which root {does})")
        if clashes:
            errors.append(
                f"{path}:{ukey}: {upath} {'; '.join(clashes)}: the Jupyter user writes {ukey} "
                "and could replace what root relies on"
            )
    _check_path_facts(inst, path, values, facts, errors)


def _ancestors(value):
    while value != "/":
        value = posixpath.dirname(value)
        yield value


def _foreign_parent(value, paths, account):
    """An existing parent another account can rename entries in: owned by neither root
    nor the user, or world-writable without the sticky bit. None when all are safe."""
    own = {0} | ({account.get("uid")} if account else set())
    for parent in _ancestors(value):
        info = paths.get(parent)
        if not info or not info.get("exists"):
            continue
        mode = info.get("mode") or 0
        if info.get("uid") not in own:
            return f"{parent} (owned by {info.get('owner') or info.get('uid')})"
        if mode & 0o002 and not mode & 0o1000:
            return f"{parent} (world-writable)"
    return None


def _check_path_facts(inst, path, values, facts, errors):
    paths = facts.get("paths")
    if not isinstance(paths, dict):
        return
    user = _effective(inst)["user"]
    account = (facts.get("users") or {}).get(user)
    created = set(facts.get("created_directories") or ())
    for ukey in USER_PATHS:
        upath = values.get(ukey)
        if not upath:
            continue
        info = paths.get(upath) or {}
        real = info.get("realpath")
        if real and real != upath:
            errors.append(
                f"{path}:{ukey}: {upath} resolves to {real} through a symbolic link; the formula "
                "would chown what the link points at: give the real path"
            )
            continue
        parent = _foreign_parent(upath, paths, account)
        if parent:
            errors.append(
                f"{path}:{ukey}: {upath} is inside {parent}, which {user} does not own and "
                "another account can change (it could move the directory and put a link in its "
                "place): choose a directory under one root owns"
            )
            continue
        if not info.get("exists") or upath in created:
            continue
        owner_uid = info.get("uid")
        if account is not None and owner_uid == account.get("uid"):
            continue
        errors.append(
            f"{path}:{ukey}: {upath} exists and belongs to {info.get('owner') or owner_uid}, and the "
            f"formula did not create it; it would hand it to {user}: choose a new directory"
        )
    # root's paths whose real location is inside what the user writes
    for rkey in ROOT_PATHS:
        rpath = values.get(rkey)
        info = paths.get(rpath) if rpath else None
        real = (info or {}).get("realpath")
        if not real or real == rpath:
            continue
        for ukey in USER_PATHS:
            upath = values.get(ukey)
            if upath and _overlap(real, (paths.get(upath) or {}).get("realpath") or upath):
                errors.append(
                    f"{path}:{ukey}: {upath} holds the real location {real} of jupyter:{rkey} "
                    f"({rpath}); the Jupyter user could replace it"
                )


# --------------------------------------------------------------------------------------
# rule class 3: the Jupyter config passthrough


def _is_section(key, value):
    # traitlets' rule: a key starting with an upper case letter is a (nested) class section
    return isinstance(value, dict) and isinstance(key, str) and key[:1].isupper()


def _check_cookie(value, where, errors):
    if not isinstance(value, dict):
        errors.append(f"{where}: expected a mapping of cookie attributes")
        return
    for attr, val in value.items():
        low = str(attr).lower()
        if low in ("path", "domain"):
            errors.append(f"{where}: '{attr}' moves the cookie's scope (the formula sets the path from base_url)")
        elif low in ("secure", "httponly") and val is not True:
            errors.append(f"{where}: '{attr}' may only be true")
        elif low == "samesite" and str(val).lower() == "none":
            errors.append(f"{where}: samesite None sends the login cookie with other sites' requests")


def _check_tornado(value, where, errors):
    if not isinstance(value, dict):
        errors.append(f"{where}: expected a mapping of tornado settings")
        return
    for key, val in value.items():
        if key in REFUSED_TORNADO_SETTINGS:
            errors.append(f"{where}.{key}: refused ({REFUSED_TORNADO_SETTINGS[key]})")
        elif key in COOKIE_TRAITS:
            _check_cookie(val, f"{where}.{key}", errors)
        elif key == "headers":
            if not isinstance(val, dict):
                errors.append(f"{where}.headers: expected a mapping of header names to values")
                continue
            for header in val:
                low = str(header).lower()
                if low.startswith("access-control-") or low == "content-security-policy":
                    errors.append(
                        f"{where}.headers: {header} weakens the origin checks (cross-origin "
                        "access or framing); refused"
                    )
        elif key in SAFE_VALUES and val != SAFE_VALUES[key]:
            errors.append(f"{where}.{key}: may only be {SAFE_VALUES[key]!r}")


def _check_config(config, path, errors):
    if not isinstance(config, dict):
        return

    def walk(section, dotted):
        for key, value in section.items():
            if _is_section(key, value):
                walk(value, dotted + [key])
                continue
            name = ".".join(dotted + [str(key)])
            where = f"{path}:config: {name}"
            if not isinstance(key, str) or not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", key):
                errors.append(f"{where}: not a trait or class name (letters, digits and _)")
            elif key in OWNED_TRAITS:
                errors.append(f"{where} is set by the formula; use {OWNED_TRAITS[key]} (refused on every class)")
            elif key in WEAKENING_TRAITS:
                errors.append(
                    f"{where} weakens authentication, origin or XSRF checks: "
                    f"{WEAKENING_TRAITS[key]} (refused on every class)"
                )
            elif key in SAFE_VALUES and value != SAFE_VALUES[key]:
                errors.append(f"{where} may only be {SAFE_VALUES[key]!r} (anything else weakens a check)")
            elif key == "tornado_settings":
                _check_tornado(value, where, errors)
            elif key in COOKIE_TRAITS:
                _check_cookie(value, where, errors)

    walk(config, [])


# --------------------------------------------------------------------------------------
# rule class 4: exposure


def _is_loopback(text):
    try:
        addr = ipaddress.ip_address(text)
    except ValueError:
        return False
    mapped = getattr(addr, "ipv4_mapped", None)
    return addr.is_loopback or bool(mapped and mapped.is_loopback)


def _check_exposure(inst, path, errors):
    ip = _get(inst, "server:ip")
    if ip is None or _get(inst, "server:expose") is True:
        return
    try:
        ip = _ip(ip)
    except Invalid as exc:
        errors.append(f"{path}:server:ip: {exc}")
        return
    if not _is_loopback(ip):
        errors.append(
            f"{path}:server:ip: {ip} is not a loopback address: Jupyter would be reachable around "
            "nginx (its TLS and login rate limit); set jupyter:server:expose: true to mean it"
        )


# --------------------------------------------------------------------------------------
# rule class 5: accounts


def _check_accounts(inst, path, facts, errors):
    eff = _effective(inst)
    user, group = eff["user"], eff["group"]
    workers = set(NGINX_WORKERS) | {_get(inst, "nginx:user")} - {None}
    if user == "root":
        errors.append(f"{path}:user: the server must not run as root; name an unprivileged user")
    elif user == "nobody":
        errors.append(f"{path}:user: nobody is shared by unrelated services; name an account of its own")
    elif user in workers:
        errors.append(
            f"{path}:user: {user} is the nginx worker's account; Jupyter would take it over "
            "(and nginx could read the notebooks)"
        )
    if group in PRIVILEGED_GROUPS:
        errors.append(f"{path}:group: {group} is a privileged group; name a group of its own")
    users = facts.get("users")
    if not isinstance(users, dict) or user in ("root", "nobody"):
        return
    account = users.get(user)
    if account:
        uid = account.get("uid")
        sys_max = facts.get("sys_uid_max", SYS_UID_MAX)
        created = user in set(facts.get("created_accounts") or ())
        conf = (facts.get("paths") or {}).get(eff["config_file"]) or {}
        # an earlier formula version made the account: its config file is root:<its group>
        adopted = conf.get("exists") and conf.get("uid") == 0 and conf.get("gid") == account.get("gid")
        if uid == 0:
            errors.append(f"{path}:user: {user} has uid 0 (root in all but name)")
        elif (uid <= sys_max or uid == NOBODY_UID) and not (created or adopted):
            errors.append(
                f"{path}:user: {user} is an existing system account (uid {uid}) that the formula did "
                "not create; it would get a home and a login shell: name a new account"
            )
        privileged = sorted(set(account.get("groups") or ()) & PRIVILEGED_GROUPS)
        if privileged:
            errors.append(
                f"{path}:user: {user} is a member of the privileged group(s) {', '.join(privileged)}; "
                "every notebook would run with that power"
            )
    info = (facts.get("groups") or {}).get(group)
    if info and info.get("gid") == 0 and group not in PRIVILEGED_GROUPS:
        errors.append(f"{path}:group: {group} has gid 0 (the root group)")


# --------------------------------------------------------------------------------------
# rule class 6: lists


def _check_lists(inst, path, errors):
    if "packages" in inst and not inst.get("packages"):
        errors.append(f"{path}:packages: expected at least one pip requirement (e.g. jupyterlab)")
    names = _get(inst, "nginx:server_name", None)
    if isinstance(inst.get("nginx"), dict) and "server_name" in inst["nginx"] and not names:
        errors.append(f"{path}:nginx:server_name: expected at least one host name (_ matches any)")


# --------------------------------------------------------------------------------------
# rule class 7: TLS


def _load_crypto():
    try:
        from cryptography import x509  # pylint: disable=import-outside-toplevel
        from cryptography.hazmat.primitives import serialization  # pylint: disable=import-outside-toplevel

        return x509, serialization
    except ImportError:  # pragma: no cover - Salt ships cryptography
        return None


def _check_tls(inst, path, facts, errors):
    nginx = inst.get("nginx") or {}
    tls = nginx.get("tls")
    if not isinstance(tls, dict):
        return
    where = f"{path}:nginx:tls"
    if tls.get("listen") is not None and tls.get("listen") == nginx.get("listen"):
        errors.append(f"{where}:listen: must differ from jupyter:nginx:listen")
    acme = tls.get("acme")
    # a derived settings dict carries the formula's default paths (<tls_dir>/<site>.crt,
    # .key) next to PEMs or acme: those paths are not a second source
    base = posixpath.join(_norm(nginx.get("tls_dir") or "/etc/ssl/jupyter"), _effective(inst)["site"])
    defaults = {"certificate": f"{base}.crt", "certificate_key": f"{base}.key"}
    given = {
        kind: bool(tls.get(kind))
        and not ((tls.get(f"{kind}_pem") or acme) and _norm(tls.get(kind)) == defaults[kind])
        for kind in defaults
    }
    if acme:
        own = [k for k in defaults if given[k]] + [f"{k}_pem" for k in defaults if tls.get(f"{k}_pem")]
        if own:
            errors.append(f"{where}:acme: give acme or a certificate ({', '.join(own)}), not both")
        if not (isinstance(acme, dict) and acme.get("email")):
            errors.append(f"{where}:acme:email: required (the ACME account's contact)")
        names = nginx.get("server_name") or []
        names = [names] if isinstance(names, str) else names
        bad = [n for n in names if n == "_" or n.startswith("*.")]
        if bad:
            errors.append(
                f"{path}:nginx:server_name: acme needs the real host names of the site, "
                f"not {', '.join(bad)}"
            )
        if nginx.get("listen") != 80:
            errors.append(
                f"{path}:nginx:listen: acme's http-01 challenges always come to port 80, "
                f"and the site listens on {nginx.get('listen')}"
            )
        return
    for kind in defaults:
        pem = tls.get(f"{kind}_pem")
        if given[kind] and pem:
            errors.append(
                f"{where}:{kind}: give the path or {kind}_pem, not both (the PEM would overwrite "
                f"{_norm(tls[kind])})"
            )
        elif not tls.get(kind) and not pem:
            errors.append(f"{where}:{kind}: give a path, {kind}_pem contents or acme")
    cert_pem, key_pem = tls.get("certificate_pem"), tls.get("certificate_key_pem")
    if isinstance(cert_pem, str) and "PRIVATE KEY" in cert_pem:
        errors.append(
            f"{where}:certificate_pem: holds a private key, and the certificate file is "
            "world-readable; give the key as certificate_key_pem (written 0600)"
        )
        return
    files = facts.get("files") or {}
    cert_text = cert_pem or files.get(_norm(tls.get("certificate")))
    key_text = key_pem if key_pem != HIDDEN else None
    key_text = key_text or files.get(_norm(tls.get("certificate_key")))
    _check_tls_pair(cert_text, key_text, where, facts, errors, bool(cert_pem), bool(key_pem))


def _check_tls_pair(cert_text, key_text, where, facts, errors, cert_from_pillar, key_from_pillar):
    crypto = _load_crypto()
    if crypto is None or not isinstance(cert_text, str):
        return
    x509, serialization = crypto
    cert_key = f"{where}:certificate{'_pem' if cert_from_pillar else ''}"
    try:
        cert = x509.load_pem_x509_certificates(cert_text.encode())[0]
    except ValueError:
        errors.append(f"{cert_key}: not a PEM certificate that can be read")
        return
    now = facts.get("now") or datetime.datetime.now(datetime.timezone.utc)
    expiry = cert.not_valid_after_utc
    if expiry <= now:
        errors.append(f"{cert_key}: the certificate expired on {expiry:%Y-%m-%d %H:%M} UTC")
    if not isinstance(key_text, str):
        return
    key_key = f"{where}:certificate_key{'_pem' if key_from_pillar else ''}"
    try:
        key = serialization.load_pem_private_key(key_text.encode(), password=None)
    except TypeError:
        errors.append(f"{key_key}: the key is encrypted; nginx would ask for a passphrase at every start")
        return
    except (ValueError, Exception):  # pylint: disable=broad-except - unsupported key types too
        errors.append(f"{key_key}: not a PEM private key that can be read")
        return
    spki = serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    if cert.public_key().public_bytes(*spki) != key.public_key().public_bytes(*spki):
        errors.append(f"{key_key}: does not match the certificate's public key")


# --------------------------------------------------------------------------------------
# check_instance


def check_instance(inst, path=PREFIX, facts=None, require_password=True):
    """
    Check one fully merged instance (defaults < os-family map < pillar < the instance's
    own entry; derived or not) against the classes of danger, after normalisation.
    ``path`` is ``jupyter`` for a pillar without instances, else
    ``jupyter:instances:NAME``. ``facts`` (from ``gather_facts``, or synthetic) enables
    the rules about the host; a rule whose fact is missing is skipped.

    The classes: 1 passwords (published in the formula's docs, or a zxcvbn strength
    below 3 of 4), 2 paths (system directories, what the Jupyter user writes versus
    what root executes, reads or writes, the shared Jupyter config directories,
    symbolic links and foreign owners), 3 Jupyter config traits that weaken
    authentication, origin or XSRF checks or move what the formula owns (on every
    class), 4 exposure (loopback unless ``server:expose``), 5 accounts (root, nobody,
    the nginx worker, system accounts the formula did not create, privileged groups),
    6 empty lists, 7 TLS (sources, a key in the certificate, key match, expiry),
    8 base_url.

    Returns a list of errors, each naming the key and why; secrets are never shown.

    CLI Example:

    .. code-block:: bash

        salt '*' jupyter_pillar.check_instance '{"user": "root", "server": {"ip": "0.0.0.0"}}'
    """
    facts = facts or {}
    errors = []
    if not isinstance(inst, dict):
        return [f"{path}: expected a mapping, got {_shown(inst)}"]
    _check_password_presence(inst, path, errors, require_password)
    _check_password(inst, path, errors)
    _check_paths(inst, path, facts, errors)
    _check_config(inst.get("config"), path, errors)
    _check_exposure(inst, path, errors)
    _check_accounts(inst, path, facts, errors)
    _check_lists(inst, path, errors)
    _check_tls(inst, path, facts, errors)
    base_url = _get(inst, "server:base_url")
    if base_url is not None:
        try:
            _base_url(base_url)
        except Invalid as exc:
            errors.append(f"{path}:server:base_url: {exc}")
    nginx = inst.get("nginx") or {}
    tls = nginx.get("tls") if isinstance(nginx.get("tls"), dict) else {}
    port = _get(inst, "server:port")
    if port is not None and port in {nginx.get("listen"), tls.get("listen")}:
        errors.append(f"{path}:server:port: {port} is also a port nginx listens on")
    if nginx.get("ipv6") is not False and facts.get("has_ipv6") is False:
        errors.append(
            f"{path}:nginx:ipv6: this host has no IPv6 (nginx could not listen on [::]); "
            "set jupyter:nginx:ipv6: false"
        )
    return errors


# --------------------------------------------------------------------------------------
# check_instances


SERVER_LEVEL = (
    "listen", "default_server", "tls", "hsts_max_age", "extra_directives",
    "client_max_body_size", "login_rate_limit", "ipv6", "site",
)


def _server_block(inst):
    names = _get(inst, "nginx:server_name") or []
    names = [names] if isinstance(names, str) else names
    return (tuple(names), _get(inst, "nginx:listen"))


def _shown_block(block):
    return f"{' '.join(block[0]) or '?'}:{block[1]}"


def check_instances(instances, facts=None):
    """
    The rules between instances (``{name: merged instance}``): server ports unique and
    none a port nginx listens on; in one nginx server block (same server_name list and
    listen port) base_urls unique and not nested (a cookie for /a/ reaches /a/b/), a
    base_url of ``/`` alone, and the server-level nginx keys equal; a user shared only
    with different root_dirs (and one home, group and shell); no path one user writes
    equal to, inside or holding another user's or another instance's root-owned paths;
    config files, venv links and supervisor programs (hence log files) distinct.

    Returns a list of errors naming ``jupyter:instances:NAME:<key>``.

    CLI Example:

    .. code-block:: bash

        salt '*' jupyter_pillar.check_instances '{"a": {...}, "b": {...}}'
    """
    errors = []
    names = sorted(instances)
    paths = (facts or {}).get("paths") or {}

    def at(name, key):
        return f"{PREFIX}:instances:{name}:{key}"

    eff = {name: _effective(instances[name]) for name in names}
    values = {name: _path_values(instances[name]) for name in names}
    # ports
    nginx_ports = {}
    for name in names:
        nginx = instances[name].get("nginx") or {}
        tls = nginx.get("tls") if isinstance(nginx.get("tls"), dict) else {}
        for port in (nginx.get("listen"), tls.get("listen")):
            if port is not None:
                nginx_ports.setdefault(port, name)
    seen_ports = {}
    for name in names:
        port = _get(instances[name], "server:port")
        if port is None:
            continue
        if port in seen_ports:
            errors.append(f"{at(name, 'server:port')}: {port} is also the port of instance {seen_ports[port]}")
        elif port in nginx_ports:
            errors.append(f"{at(name, 'server:port')}: {port} is a port nginx listens on (instance {nginx_ports[port]})")
        seen_ports.setdefault(port, name)
    # nginx server blocks
    blocks = {}
    for name in names:
        blocks.setdefault(_server_block(instances[name]), []).append(name)
    for block, members in blocks.items():
        if len(members) < 2:
            continue
        first = members[0]
        urls = {}
        for name in members:
            url = _get(instances[name], "server:base_url") or "/"
            others = [m for m in members if m != name]
            if url == "/":
                errors.append(
                    f"{at(name, 'server:base_url')}: / takes the whole name {_shown_block(block)}, "
                    f"which instance(s) {', '.join(others)} share; give each its own base_url "
                    "or server_name"
                )
                continue
            for other, other_url in urls.items():
                if url == other_url:
                    errors.append(f"{at(name, 'server:base_url')}: {url} is also the base_url of instance {other} in {_shown_block(block)}")
                elif _inside(url, other_url) or _inside(other_url, url):
                    errors.append(
                        f"{at(name, 'server:base_url')}: {url} and instance {other}'s {other_url} are "
                        f"nested in {_shown_block(block)} (the outer one's login cookie reaches the inner one)"
                    )
            urls[name] = url
        for name in members[1:]:
            for key in SERVER_LEVEL:
                mine = eff[name]["site"] if key == "site" else _get(instances[name], f"nginx:{key}")
                theirs = eff[first]["site"] if key == "site" else _get(instances[first], f"nginx:{key}")
                if mine != theirs:
                    errors.append(
                        f"{at(name, 'nginx:' + key)}: differs from instance {first}'s, which shares the "
                        f"server block {_shown_block(block)}; instances in one server block must agree"
                    )
    # users
    by_user = {}
    for name in names:
        by_user.setdefault(eff[name]["user"], []).append(name)
    for user, members in by_user.items():
        first = members[0]
        for name in members[1:]:
            if values[name].get("root_dir") == values[first].get("root_dir"):
                errors.append(
                    f"{at(name, 'root_dir')}: instance {first} of the same user {user} has the same "
                    "root_dir; a shared user needs its own root_dir per instance"
                )
            for key in ("home", "group"):
                if eff[name][key] != eff[first][key]:
                    errors.append(f"{at(name, key)}: differs from instance {first}'s; one account {user} has one {key}")
            if instances[name].get("shell") != instances[first].get("shell"):
                errors.append(f"{at(name, 'shell')}: differs from instance {first}'s; one account {user} has one shell")
    # what one user writes versus the others' paths
    for name in names:
        for other in names:
            if other == name:
                continue
            for ukey in USER_PATHS:
                upath = values[name].get(ukey)
                if not upath:
                    continue
                if eff[name]["user"] != eff[other]["user"] and name < other:
                    for okey in USER_PATHS:
                        opath = values[other].get(okey)
                        if opath and _overlap(upath, opath):
                            errors.append(
                                f"{at(name, ukey)}: {upath} overlaps instance {other}'s {okey} ({opath}), "
                                f"which another user ({eff[other]['user']}) writes"
                            )
                for rkey, does in ROOT_PATHS.items():
                    rpath = values[other].get(rkey)
                    if not rpath:
                        continue
                    real = (paths.get(rpath) or {}).get("realpath") or rpath
                    if _overlap(upath, rpath) or _overlap(upath, real):
                        shown = rpath if real == rpath else f"{rpath}, really {real}"
                        errors.append(
                            f"{at(name, ukey)}: {upath} overlaps instance {other}'s {rkey} ({shown}), "
                            f"which root {does}"
                        )
    # names that must differ
    for label, key, get in (
        ("config file", "config_file", lambda n: eff[n]["config_file"]),
        ("venv", "venv", lambda n: values[n].get("venv")),
        ("supervisor program (and log files)", "supervisor:program", lambda n: eff[n]["program"]),
    ):
        seen = {}
        for name in names:
            value = get(name)
            if value is None:
                continue
            if value in seen:
                errors.append(f"{at(name, key)}: {value} is also the {label} of instance {seen[value]}")
            seen.setdefault(value, name)
    return errors


# --------------------------------------------------------------------------------------
# gather_facts (the one impure function)


def _sys_uid_max(path="/etc/login.defs"):
    found = {}
    try:
        with open(path, encoding="utf-8", errors="replace") as handle:
            for line in handle:
                parts = line.split()
                if len(parts) >= 2 and parts[0] in ("SYS_UID_MAX", "UID_MIN"):
                    try:
                        found[parts[0]] = int(parts[1])
                    except ValueError:
                        pass
    except OSError:
        pass
    if "SYS_UID_MAX" in found:
        return found["SYS_UID_MAX"]
    if "UID_MIN" in found:
        return found["UID_MIN"] - 1
    return SYS_UID_MAX


def _has_ipv6():
    """The kernel has IPv6 (/proc/net/if_inet6) and nginx could listen on [::]."""
    import socket  # pylint: disable=import-outside-toplevel

    if not os.path.exists("/proc/net/if_inet6"):
        return False
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as sock:
            sock.bind(("::", 0))
        return True
    except OSError:
        return False


def _path_fact(path):
    import grp  # pylint: disable=import-outside-toplevel
    import pwd  # pylint: disable=import-outside-toplevel

    info = {"exists": os.path.lexists(path), "realpath": os.path.realpath(path)}
    if info["exists"]:
        try:
            stat = os.stat(path)
        except OSError:  # a dangling link
            return info
        info.update(uid=stat.st_uid, gid=stat.st_gid, mode=stat.st_mode & 0o7777, is_dir=os.path.isdir(path))
        try:
            info["owner"] = pwd.getpwuid(stat.st_uid).pw_name
        except KeyError:
            info["owner"] = str(stat.st_uid)
        try:
            info["group"] = grp.getgrgid(stat.st_gid).gr_name
        except KeyError:
            info["group"] = str(stat.st_gid)
    return info


def _read_text(path, limit=1024 * 1024):
    try:
        with open(path, encoding="utf-8", errors="replace") as handle:
            return handle.read(limit)
    except OSError:
        return None


def gather_facts(instances):
    """
    Read what the host-dependent rules need, for ``instances`` (``{name: merged
    instance}``, or the whole ``jupyter.settings`` result, whose ``instances`` it
    takes). Returns a dict:

    - ``sys_uid_max``: SYS_UID_MAX of /etc/login.defs (else UID_MIN - 1, else 999);
    - ``users``: ``{name: {uid, gid, home, shell, groups}}`` for the existing accounts
      among the instances' users and nginx users (``groups``: names, primary included);
    - ``groups``: ``{name: {gid, members}}`` for the existing groups among the
      instances' groups;
    - ``created_accounts``, ``created_directories``: from the formula's records
      ``<state_dir>/accounts.json`` (a list) and ``<state_dir>/record.json`` (key
      ``directories``);
    - ``paths``: ``{path: {exists, realpath[, uid, gid, owner, group, mode, is_dir]}}``
      for every path value of every instance;
    - ``files``: ``{path: text}`` of the TLS certificate and key files given by path
      that exist;
    - ``has_ipv6``: the kernel has IPv6 and an address (``/proc/net/if_inet6``).

    CLI Example:

    .. code-block:: bash

        salt '*' jupyter_pillar.gather_facts '{"jupyter": {"user": "jupyter", "root_dir": "/srv/jupyter"}}'
    """
    import grp  # pylint: disable=import-outside-toplevel
    import pwd  # pylint: disable=import-outside-toplevel

    if isinstance(instances, dict) and isinstance(instances.get("instances"), dict) and "mode" in instances:
        state_dir = instances.get("state_dir")
        instances = instances["instances"]
    else:
        state_dir = None
    instances = {name: inst for name, inst in (instances or {}).items() if isinstance(inst, dict)}
    facts = {
        "sys_uid_max": _sys_uid_max(),
        "users": {},
        "groups": {},
        "paths": {},
        "files": {},
        "has_ipv6": _has_ipv6(),
    }
    all_groups = None
    accounts = set()
    groups = set()
    for inst in instances.values():
        eff = _effective(inst)
        accounts |= {eff["user"], _get(inst, "nginx:user") or ""}
        groups.add(eff["group"])
        state_dir = state_dir or inst.get("state_dir")
        values = _path_values(inst)
        for value in values.values():
            facts["paths"].setdefault(value, None)
        for key in USER_PATHS:  # who can rename entries on the way to them
            for parent in _ancestors(values.get(key) or "/"):
                facts["paths"].setdefault(parent, None)
        tls = _get(inst, "nginx:tls") or {}
        for kind in ("certificate", "certificate_key"):
            if tls.get(kind) and not tls.get(f"{kind}_pem"):
                text = _read_text(_norm(tls[kind]))
                if text is not None:
                    facts["files"][_norm(tls[kind])] = text
    for name in sorted(accounts - {""}):
        try:
            entry = pwd.getpwnam(name)
        except KeyError:
            continue
        if all_groups is None:
            all_groups = grp.getgrall()
        member_of = {g.gr_name for g in all_groups if name in g.gr_mem or g.gr_gid == entry.pw_gid}
        facts["users"][name] = {
            "uid": entry.pw_uid,
            "gid": entry.pw_gid,
            "home": entry.pw_dir,
            "shell": entry.pw_shell,
            "groups": sorted(member_of),
        }
    for name in sorted(groups):
        try:
            entry = grp.getgrnam(name)
        except KeyError:
            continue
        facts["groups"][name] = {"gid": entry.gr_gid, "members": list(entry.gr_mem)}
    for path in list(facts["paths"]):
        facts["paths"][path] = _path_fact(path)
    state_dir = state_dir or "/var/lib/jupyter-formula"

    def read_json(name, kind):
        try:
            value = json.loads(_read_text(posixpath.join(state_dir, name)) or "null")
        except ValueError:
            value = None
        return value if isinstance(value, kind) else kind()

    record = read_json("record.json", dict)
    # accounts.json: written by jupyter_account.present the moment it creates one
    facts["created_accounts"] = [a for a in read_json("accounts.json", list) if isinstance(a, str)]
    facts["created_directories"] = [d for d in record.get("directories") or [] if isinstance(d, str)]
    return facts
