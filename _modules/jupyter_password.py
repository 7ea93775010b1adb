"""
Passwords in jupyter_server's own format, for the jupyter formula.

- ``jupyter.hash_password``: ``argon2:$argon2id$v=19$...`` as
  ``jupyter_server.auth.passwd`` makes it.
- ``jupyter.check_password``: the answer of ``jupyter_server.auth.passwd_check``.

The plaintext never reaches a command line, a log or the disk: with argon2-cffi in
Salt's own Python (deploy.sh installs it) the work happens in-process; otherwise the
Jupyter virtualenv's Python does it and gets the request on stdin.

These functions share the ``jupyter`` namespace with ``jupyter.settings`` (Salt's loader
merges modules of one virtualname); this file has the password job only.
"""

import hashlib
import json
import os
import subprocess

from salt.exceptions import CommandExecutionError, SaltInvocationError

__virtualname__ = "jupyter"

# jupyter_server.auth.security.passwd() hashes with these argon2 parameters;
# deploy.sh imports this module for its first generated password.
ARGON2_PARAMS = {"memory_cost": 10240, "time_cost": 10, "parallelism": 8}

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


def _have_argon2():
    try:
        import argon2  # pylint: disable=unused-import,import-outside-toplevel

        return True
    except ImportError:
        return False


def _argon2_in(python, request):
    """Run the argon2 helper in another Python, the request on stdin."""
    if not python or not os.access(python, os.X_OK):
        raise CommandExecutionError(
            f"Salt's Python has no argon2-cffi and {python} does not exist: "
            "install argon2-cffi for Salt or create the Jupyter virtualenv first"
        )
    # subprocess rather than cmd.run: nothing of the exchange may reach Salt's logs.
    # -I: isolated (no script directory, no PYTHON* variables, no user site);
    # cwd /: nothing of the caller's directory can shadow a module.
    proc = subprocess.run(
        [python, "-I", "-c", _ARGON2_HELPER],
        input=json.dumps(request),
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        cwd="/",
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

    Uses Salt's own argon2-cffi when it has it, else ``python`` (a Jupyter
    virtualenv's interpreter, which has argon2-cffi), which gets the password on
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
            digest = _argon2_in(python, {"op": "hash", "password": password, "params": ARGON2_PARAMS})
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
        return bool(_argon2_in(python, {"op": "check", "hashed": hashed[7:], "password": password}))
    try:
        algorithm, salt, digest = hashed.split(":", 2)
        hasher = hashlib.new(algorithm)
    except ValueError:
        return False
    if not digest:
        return False
    hasher.update(password.encode("utf-8") + salt.encode("ascii"))
    return hasher.hexdigest() == digest
