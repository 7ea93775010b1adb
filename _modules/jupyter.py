"""
Execution module of the jupyter formula.

- ``jupyter.settings``: the one source of truth for the formula's settings: defaults,
  the os-family map and pillar merged, validated, every default filled in.
- ``jupyter.hash_password`` / ``jupyter.check_password``: passwords in jupyter_server's
  own format (``argon2:$argon2id$...``), without the plaintext ever reaching a command
  line, a log or the disk.

The sls files of the formula call ``jupyter.settings`` at render time, so sync the
custom modules first (``saltutil.sync_all`` or ``state.apply jupyter sync_mods=all``).
"""

import copy
import hashlib
import json
import logging
import os
import subprocess

import salt.utils.data
import salt.utils.dictupdate
import salt.utils.yaml
from salt.exceptions import CommandExecutionError, SaltInvocationError

log = logging.getLogger(__name__)

__virtualname__ = "jupyter"

# jupyter_server.auth.security.passwd() hashes with these argon2 parameters.
ARGON2_PARAMS = {"memory_cost": 10240, "time_cost": 10, "parallelism": 8}
DEFAULT_VENV = "/opt/jupyter/venv"
HIDDEN = "<hidden>"

# Runs in the Jupyter virtualenv's Python when Salt's own Python has no argon2-cffi.
# The request (password included) arrives on stdin, never on the command line.
_ARGON2_HELPER = """
import json, sys
import argon2, argon2.exceptions
req = json.load(sys.stdin)
if req["op"] == "hash":
    out = argon2.PasswordHasher(**req["params"]).hash(req["password"])
else:
    try:
        out = argon2.PasswordHasher().verify(req["hashed"], req["password"])
    except (argon2.exceptions.Argon2Error, ValueError):  # wrong password, malformed hash
        out = False
json.dump(out, sys.stdout)
"""


def __virtual__():
    return __virtualname__


# ---------------------------------------------------------------------------
# settings


def _plain(value):
    """A plain copy of pillar data (Salt 3008 wraps pillar in masking containers)."""
    if isinstance(value, dict):
        return {key: _plain(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_plain(item) for item in value]
    return value


def _pillar(key, default=None):
    # __pillar__ rather than pillar.get, which Salt 3008 redacts outside renderers
    return _plain(salt.utils.data.traverse_dict_and_list(__pillar__, key, default, ":"))


def _formula_yaml(name, saltenv):
    text = __salt__["cp.get_file_str"](f"salt://jupyter/{name}", saltenv=saltenv)
    if not text:
        raise CommandExecutionError(
            f"salt://jupyter/{name} not found in saltenv '{saltenv}': "
            "is the formula in file_roots?"
        )
    return salt.utils.yaml.safe_load(text) or {}


def settings(pillar=None, saltenv=None, os_family=None, require_password=True):
    """
    Return the formula's settings for this minion: ``jupyter/defaults.yaml``, the
    os-family values of ``jupyter/osfamilymap.yaml`` and pillar ``jupyter`` merged (in
    that order), validated, with every default filled in. The shape is the pillar's
    own (``settings['server']['port']``). Secrets are shown as ``<hidden>``.

    Raises an error naming every bad pillar key, so that a bad pillar stops a state
    run at render time, before anything on the host changes.

    pillar
        Use this dict instead of the minion's pillar ``jupyter`` (for trying values).

    os_family
        Use this os family instead of the minion's ``os_family`` grain.

    require_password
        False accepts a pillar without password (what ``jupyter.clean`` needs).

    CLI Example:

    .. code-block:: bash

        salt '*' jupyter.settings
        salt '*' jupyter.settings pillar='{"server": {"port": 9999}}'
    """
    saltenv = saltenv or __opts__.get("saltenv") or "base"
    if pillar is None:
        pillar = _pillar("jupyter", {})
    if not isinstance(pillar, dict):
        raise SaltInvocationError(
            f"Invalid pillar: jupyter: expected a mapping, got {type(pillar).__name__}"
        )
    os_family = os_family or __grains__.get("os_family", "Debian")
    osmap = _formula_yaml("osfamilymap.yaml", saltenv)
    if os_family not in osmap:
        raise CommandExecutionError(
            f"os family '{os_family}' is not supported (known: {', '.join(sorted(osmap))})"
        )
    merged = copy.deepcopy(_formula_yaml("defaults.yaml", saltenv)["jupyter"])
    merged = salt.utils.dictupdate.merge(merged, copy.deepcopy(osmap[os_family]))
    merged = salt.utils.dictupdate.merge(merged, copy.deepcopy(pillar))
    checked = __salt__["jupyter_pillar.validate"](merged, require_password=require_password)
    errors, result = checked["errors"], checked["settings"]
    if errors:
        raise SaltInvocationError(
            "Invalid pillar (nothing was changed):\n"
            + "\n".join(f"  - {err}" for err in errors)
        )
    result["os_family"] = os_family
    return result


# ---------------------------------------------------------------------------
# passwords


def _have_argon2():
    try:
        import argon2  # pylint: disable=unused-import,import-outside-toplevel

        return True
    except ImportError:
        return False


def _venv_python(python):
    if python:
        return python
    venv = _pillar("jupyter:venv") or DEFAULT_VENV
    return os.path.join(venv, "bin", "python")


def _argon2_in(python, request):
    """Run the argon2 helper in another Python, the request on stdin."""
    if not os.access(python, os.X_OK):
        raise CommandExecutionError(
            f"Salt's Python has no argon2-cffi and {python} does not exist: "
            "install argon2-cffi for Salt or create the Jupyter virtualenv first"
        )
    # subprocess rather than cmd.run: nothing of the exchange may reach Salt's logs.
    proc = subprocess.run(
        [python, "-c", _ARGON2_HELPER],
        input=json.dumps(request),
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    if proc.returncode != 0:
        last = (proc.stderr.strip().splitlines() or ["no output"])[-1]
        raise CommandExecutionError(f"argon2 helper in {python} failed: {last}")
    return json.loads(proc.stdout)


def hash_password(password, algorithm="argon2", python=None):
    """
    Hash a password the way ``jupyter_server.auth.passwd`` does, for
    ``PasswordIdentityProvider.hashed_password``: ``argon2:$argon2id$v=19$...``.
    ``algorithm`` may also name a hashlib algorithm (legacy ``algo:salt:hexdigest``).

    Uses Salt's own argon2-cffi when it has it, else the Jupyter virtualenv's Python
    (``python``, default ``<jupyter:venv>/bin/python``), which gets the password on
    stdin: it never appears on a command line or in a log.

    CLI Example:

    .. code-block:: bash

        salt-call jupyter.hash_password 's3cret'
    """
    if not isinstance(password, str) or not password:
        raise SaltInvocationError("password must be a non-empty string")
    if algorithm == "argon2":
        if _have_argon2():
            import argon2  # pylint: disable=import-outside-toplevel

            digest = argon2.PasswordHasher(**ARGON2_PARAMS).hash(password)
        else:
            digest = _argon2_in(
                _venv_python(python),
                {"op": "hash", "password": password, "params": ARGON2_PARAMS},
            )
        return f"argon2:{digest}"
    try:
        hasher = hashlib.new(algorithm)
    except ValueError as exc:
        raise SaltInvocationError(f"unknown hash algorithm '{algorithm}'") from exc
    salt = os.urandom(6).hex()  # jupyter_server: 12 hex digits of salt
    hasher.update(password.encode("utf-8") + salt.encode("ascii"))
    return f"{algorithm}:{salt}:{hasher.hexdigest()}"


def check_password(hashed, password, python=None):
    """
    True when ``password`` matches ``hashed``, with the answers of
    ``jupyter_server.auth.passwd_check``: argon2 hashes and the legacy
    ``algo:salt:hexdigest`` form. A malformed hash gives False.

    CLI Example:

    .. code-block:: bash

        salt-call jupyter.check_password 'argon2:$argon2id$v=19$...' 's3cret'
    """
    if not isinstance(hashed, str) or not isinstance(password, str):
        return False
    if hashed.startswith("argon2:"):
        if _have_argon2():
            import argon2  # pylint: disable=import-outside-toplevel
            import argon2.exceptions  # pylint: disable=import-outside-toplevel

            try:
                return argon2.PasswordHasher().verify(hashed[7:], password)
            except (argon2.exceptions.Argon2Error, ValueError):  # wrong password, malformed hash
                return False
        return bool(
            _argon2_in(
                _venv_python(python),
                {"op": "check", "hashed": hashed[7:], "password": password},
            )
        )
    try:
        algorithm, salt, digest = hashed.split(":", 2)
        hasher = hashlib.new(algorithm)
    except ValueError:
        return False
    if not digest:
        return False
    hasher.update(password.encode("utf-8") + salt.encode("ascii"))
    return hasher.hexdigest() == digest
