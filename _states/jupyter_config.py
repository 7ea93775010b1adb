"""
The jupyter_server config file, with the password hash in it.

One state owns the whole file, so that no two states fight over it: it writes the
traitlets given in ``config`` as JSON (never templated Python) and adds
``PasswordIdentityProvider.hashed_password``. The hash is kept as long as it still
matches the pillar password (a new hash string logs every user out), made anew with
argon2 when the password changed, or taken as is when pillar gives a hash.

The plaintext is read inside this state (``jupyter.settings`` with its secrets, for the
instance named), so it never travels in the state's arguments (which Salt shows, logs
and caches); neither it nor the hash appears in ``changes`` or ``comment``.
"""

import copy
import grp
import json
import os
import pwd
import tempfile

__virtualname__ = "jupyter_config"

HASH_TRAIT = ("PasswordIdentityProvider", "hashed_password")


def __virtual__():
    if "jupyter.hash_password" not in __salt__:
        return (False, "jupyter_config needs the jupyter execution module (sync _modules)")
    return __virtualname__


def _read_json(path):
    try:
        with open(path, encoding="utf-8") as handle:
            return json.load(handle)
    except (OSError, ValueError):
        return None


def _existing_hash(current):
    try:
        return current[HASH_TRAIT[0]][HASH_TRAIT[1]]
    except (KeyError, TypeError):
        return None


def _secrets(instance):
    """The instance's password or given hash, from the settings with their secrets."""
    inst = __salt__["jupyter.settings"](reveal_secrets=True)["instances"][instance]
    return inst.get("password") or None, inst.get("hashed_password") or None


def _changed_traits(old, new):
    """Names like ``ServerApp.port`` whose values differ (the hash left out)."""
    old = old if isinstance(old, dict) else {}
    names = set()
    for cls in set(old) | set(new):
        old_traits = old.get(cls) if isinstance(old.get(cls), dict) else {}
        new_traits = new.get(cls) or {}
        for trait in set(old_traits) | set(new_traits):
            if (cls, trait) != HASH_TRAIT and old_traits.get(trait) != new_traits.get(trait):
                names.add(f"{cls}.{trait}")
    return sorted(names)


def _wanted_owner(user, group):
    uid = pwd.getpwnam(user).pw_uid if user else -1
    gid = grp.getgrnam(group).gr_gid if group else -1
    return uid, gid


def _write_atomically(path, text, uid, gid, mode):
    """Permissions are set before the rename, so the file is never readable by others."""
    directory = os.path.dirname(path)
    handle, tmp = tempfile.mkstemp(dir=directory, prefix=".jupyter_config.")
    try:
        os.fchmod(handle, mode)
        os.fchown(handle, uid, gid)
        with os.fdopen(handle, "w", encoding="utf-8") as out:
            out.write(text)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def managed(
    name,
    config=None,
    instance="jupyter",
    python=None,
    user="root",
    group=None,
    mode="0640",
):
    """
    Manage the whole jupyter_server JSON config at ``name``.

    config
        Traitlets as ``{Class: {trait: value}}``.

    instance
        The instance (``jupyter.settings`` ``instances``) whose password or ready
        argon2 hash goes in. The plaintext is hashed on the minion; an existing hash
        that still matches it is kept byte for byte.

    python
        The Jupyter virtualenv's Python, used for argon2 when Salt's Python has no
        argon2-cffi.

    user, group, mode
        Owner and mode of the file: by default readable by root and the server's group
        only.

    .. code-block:: yaml

        /etc/jupyter-server/jupyter.json:
          jupyter_config.managed:
            - config: {ServerApp: {port: 8888}}
            - group: jupyter
    """
    ret = {"name": name, "result": True, "changes": {}, "comment": ""}
    mode = int(str(mode), 8)
    try:
        uid, gid = _wanted_owner(user, group)
    except KeyError as exc:
        if __opts__["test"]:
            uid = gid = None
        else:
            ret.update(result=False, comment=f"Unknown owner for {name}: {exc}")
            return ret

    current = _read_json(name)
    old_hash = _existing_hash(current)
    password, given_hash = _secrets(instance)
    if not given_hash and not password:
        ret.update(result=False, comment=f"instance {instance} has neither a password nor a hashed_password")
        return ret

    if given_hash:
        new_hash = given_hash
    elif old_hash and __salt__["jupyter.check_password"](old_hash, password, python=python):
        new_hash = old_hash
    elif __opts__["test"]:
        new_hash = None  # a new hash would be made; don't spend the time in test mode
    else:
        new_hash = __salt__["jupyter.hash_password"](password, python=python)

    wanted = copy.deepcopy(config or {})
    wanted.setdefault(HASH_TRAIT[0], {})[HASH_TRAIT[1]] = new_hash
    password_changes = new_hash != old_hash
    traits = _changed_traits(current, wanted)

    try:
        stat = os.stat(name)
        perms_ok = (stat.st_mode & 0o7777) == mode and (uid, gid) in ((stat.st_uid, stat.st_gid), (None, None))
    except OSError:
        perms_ok = False
    text = json.dumps(wanted, indent=2, sort_keys=True) + "\n"
    if not password_changes and not traits and perms_ok and current == wanted:
        ret["comment"] = f"{name} is in the correct state (password hash kept)"
        return ret

    changes = {}
    if current is None:
        changes["config"] = "created"
    if traits:
        changes["settings"] = traits
    if password_changes:
        changes["password"] = "new hash" if old_hash else "set"
    if not perms_ok:
        changes["mode"] = f"{mode:04o} {user}:{group}"

    if __opts__["test"]:
        ret.update(result=None, changes=changes, comment=f"{name} would be updated")
        return ret

    _write_atomically(name, text, uid, gid, mode)
    ret.update(changes=changes, comment=f"{name} updated")
    return ret


def warning(name, comment):
    """
    Succeed with ``comment`` as a warning: what the formula renders where it cannot do
    what pillar asks and must say so rather than pretend (limits on a host that cannot
    enforce them).
    """
    return {"name": name, "result": True, "changes": {}, "comment": comment, "warnings": [comment]}


def invalid_pillar(name, comment):
    """
    Fail with ``comment``, also under ``test=True``: what an sls renders instead of
    its states when ``jupyter.settings`` refuses the pillar, so that the run stops
    before anything changes, with a message that names the bad keys.
    """
    return {"name": name, "result": False, "changes": {}, "comment": comment}
