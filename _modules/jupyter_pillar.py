"""
Validation of the jupyter formula's pillar.

Every value that reaches a config file (nginx site, supervisor program, jupyter_server
config) is checked here first, so that a bad pillar stops the run at render time,
before anything on the host changes, with a message that names the key.

Written by hand: the schema libraries at hand (jsonschema, voluptuous) give messages
about schema paths rather than pillar keys, and none suggests the key a typo meant.
"""

import difflib
import ipaddress
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

# Traitlets the formula derives from its own keys: set them there, not under config.
OWNED_TRAITS = {
    ("ServerApp", "ip"): "jupyter:server:ip",
    ("ServerApp", "port"): "jupyter:server:port",
    ("ServerApp", "base_url"): "jupyter:server:base_url",
    ("ServerApp", "root_dir"): "jupyter:root_dir",
    ("ServerApp", "password"): "jupyter:password",
    ("PasswordIdentityProvider", "hashed_password"): "jupyter:password or jupyter:hashed_password",
    ("IdentityProvider", "token"): "(the formula disables token login)",
}

# jupyter_core's system config path: every Jupyter server on the host reads these.
SHARED_CONFIG_DIRS = ("/etc/jupyter", "/usr/local/etc/jupyter", "/usr/etc/jupyter")

ARGON2_HASH = re.compile(
    r"argon2:\$argon2id\$v=19\$m=\d+,t=\d+,p=\d+\$[A-Za-z0-9+/]+\$[A-Za-z0-9+/]+"
)
LEGACY_HASH = re.compile(r"(sha1|sha256|sha512|md5):[0-9a-f]*:[0-9a-f]+")


def __virtual__():
    if not HAS_PACKAGING:
        return (False, "jupyter_pillar needs the packaging library")
    return __virtualname__


class Invalid(Exception):
    """A value does not fit; the message says what was expected."""


def _shown(value):
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


# --- leaf checkers: each takes a value and returns it (normalised) or raises Invalid


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


def _path(value):
    if (
        not isinstance(value, str)
        or not re.fullmatch(r"/[A-Za-z0-9._@+/-]*", value)
        or posixpath.normpath(value) != value
        or "/../" in value + "/"
    ):
        raise Invalid(
            "expected an absolute, normalised path of letters, digits and ._@+-/ "
            f"(no spaces, quotes, ';', braces or '..'), got {_shown(value)}"
        )
    return value


def _ip(value):
    try:
        return str(ipaddress.ip_address(value))
    except ValueError:
        raise Invalid(f"expected an IP address, got {_shown(value)}") from None


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
    if not isinstance(value, dict):
        raise Invalid(f"expected a mapping of traitlets classes, got {_shown(value)}")
    for cls, traits in value.items():
        if not isinstance(cls, str) or not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", cls):
            raise Invalid(f"{_shown(cls)} is not a traitlets class name")
        if not isinstance(traits, dict):
            raise Invalid(f"{cls}: expected a mapping of trait names to values")
        for trait in traits:
            owner = OWNED_TRAITS.get((cls, trait))
            if owner:
                raise Invalid(f"{cls}.{trait} is set by the formula; use {owner}")
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
    "config_file": _nullable(_string(r"/[A-Za-z0-9._@+/-]*\.json", "an absolute path ending in .json")),
    "server": {
        "ip": _ip,
        "port": PORT,
        "base_url": _string(
            r"/([A-Za-z0-9._~-]+/)*",
            "a URL path that starts and ends with '/' (letters, digits, ._~-)",
        ),
    },
    "config": _traitlets,
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
}

TLS_DEFAULTS = {
    "certificate": None,
    "certificate_key": None,
    "certificate_pem": None,
    "certificate_key_pem": None,
    "listen": 443,
    "redirect_http": True,
}


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


def _cross_checks(data, errors, require_password):
    """Rules that tie several keys together."""
    if data.get("user") == "root":
        errors.append(f"{PREFIX}:user: the server must not run as root; name an unprivileged user")
    if require_password and not data.get("password") and not data.get("hashed_password"):
        errors.append(f"{PREFIX}:password: set jupyter:password or jupyter:hashed_password")
    if data.get("password") and data.get("hashed_password"):
        errors.append(
            f"{PREFIX}:hashed_password: give jupyter:password or jupyter:hashed_password, not both"
        )
    config_dir = posixpath.dirname(data.get("config_file") or "/")
    if config_dir in SHARED_CONFIG_DIRS or config_dir == posixpath.join(data.get("venv") or "", "etc/jupyter"):
        errors.append(
            f"{PREFIX}:config_file: {config_dir} is read by every Jupyter server on the host "
            "(a private file there breaks them); choose another directory"
        )
    nginx = data.get("nginx") or {}
    port = (data.get("server") or {}).get("port")
    tls = nginx.get("tls")
    nginx_ports = {nginx.get("listen")} | ({tls.get("listen")} if isinstance(tls, dict) else set())
    if port in nginx_ports:
        errors.append(f"{PREFIX}:server:port: {port} is also a port nginx listens on")
    if isinstance(tls, dict):
        if tls.get("listen") == nginx.get("listen"):
            errors.append(f"{PREFIX}:nginx:tls:listen: must differ from jupyter:nginx:listen")
        for kind in ("certificate", "certificate_key"):
            if bool(tls.get(kind)) == bool(tls.get(f"{kind}_pem")) and not tls.get(kind):
                errors.append(f"{PREFIX}:nginx:tls:{kind}: give a path or {kind}_pem contents")


def _fill_derived(data):
    """Defaults that depend on other keys."""
    data["group"] = data.get("group") or data["user"]
    data["home"] = data.get("home") or f"/home/{data['user']}"
    data["config_file"] = data.get("config_file") or f"/etc/jupyter-server/{data['supervisor']['program']}.json"
    data["password_source"] = "password" if data.get("password") else "hashed_password"
    for secret in ("password", "hashed_password"):
        if data.get(secret):
            data[secret] = HIDDEN
    nginx = data["nginx"]
    tls = nginx.get("tls")
    if tls:
        tls = nginx["tls"] = {**TLS_DEFAULTS, **tls}
        base = posixpath.join(nginx["tls_dir"], nginx["site"])
        tls["manage_files"] = bool(tls["certificate_pem"] or tls["certificate_key_pem"])
        tls["certificate"] = tls["certificate"] or f"{base}.crt"
        tls["certificate_key"] = tls["certificate_key"] or f"{base}.key"
        tls["certificate_key_pem"] = HIDDEN if tls["certificate_key_pem"] else None
    data["jupyter_bin"] = posixpath.join(data["venv"], "bin", f"jupyter-{data['app']}")


def validate(data, require_password=True):
    """
    Validate a merged ``jupyter`` settings mapping (defaults, os-family map and pillar
    merged, as ``jupyter.settings`` makes it). Returns ``{"settings": ..., "errors":
    [...]}``: the normalised settings with derived defaults filled in, and one message
    per bad key, each naming the pillar key and what was expected.

    CLI Example:

    .. code-block:: bash

        salt '*' jupyter_pillar.validate '{"user": "root"}'
    """
    errors = []
    if isinstance((data.get("nginx") or {}).get("tls"), dict):
        data["nginx"]["tls"] = {**TLS_DEFAULTS, **data["nginx"]["tls"]}
    checked = _walk(SCHEMA, data, PREFIX, errors)
    if not errors:
        _cross_checks(checked, errors, require_password)
    if not errors:
        _fill_derived(checked)
    return {"settings": checked, "errors": errors}
