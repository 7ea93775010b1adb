"""
The account a Jupyter server runs as.

An account the formula creates is a system account with its own group, a home of mode
0750 and the shell of pillar, and it is written at once into the formula's root-only
record (``<state_dir>/accounts.json``), so that the validator can tell it from the
host's own accounts later and ``jupyter.clean`` removes only accounts it created.

An account that existed before (a person's login, say) is used as it is: never given a
new home, shell or group. The validator has already refused the accounts that must not
run Jupyter (root, system accounts of other services, members of privileged groups).

.. code-block:: yaml

    jupyter-package-user:
      jupyter_account.present:
        - name: jupyter
        - home: /home/jupyter
        - shell: /bin/bash
        - record: /var/lib/jupyter-formula/accounts.json
"""

import json
import os
import pwd

__virtualname__ = "jupyter_account"

HOME_MODE = 0o750  # other accounts (other instances' users) cannot look in


def __virtual__():
    return __virtualname__


def recorded(record):
    """Accounts the formula created, from its record (an empty list when there is none)."""
    try:
        with open(record, encoding="utf-8") as handle:
            accounts = json.load(handle)
        return [name for name in accounts if isinstance(name, str)] if isinstance(accounts, list) else []
    except (OSError, ValueError):
        return []


def _write(record, accounts):
    if not accounts:  # nothing left to remember: no file (jupyter.clean removes its dir)
        if os.path.exists(record):
            os.unlink(record)
        return
    os.makedirs(os.path.dirname(record), mode=0o700, exist_ok=True)
    tmp = f"{record}.tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as out:
        json.dump(sorted(set(accounts)), out)
    os.replace(tmp, record)


def _remember(record, name):
    _write(record, recorded(record) + [name])


def _made_by_earlier_version(name, config_file):
    """The formula before it kept a record made the account and gave it the group of
    the config file it wrote: adopt such an account."""
    try:
        return bool(config_file) and os.stat(config_file).st_gid == pwd.getpwnam(name).pw_gid
    except (OSError, KeyError):
        return False


def present(name, home, shell, record, group=None, config_file=None):
    """
    Create the account (and record it), or leave an existing one as it is.

    name, home, shell, group
        As for ``user.present``; ``group`` defaults to a group named like the user.

    record
        The formula's record of the accounts it created.

    config_file
        The instance's config file: an account that is its group owner was made by an
        earlier version of the formula and is adopted into the record.
    """
    ret = {"name": name, "result": True, "changes": {}, "comment": ""}
    try:
        pwd.getpwnam(name)
        exists = True
    except KeyError:
        exists = False
    ours = name in recorded(record)
    if exists and not ours and _made_by_earlier_version(name, config_file):
        if not __opts__["test"]:
            _remember(record, name)
        ours = True
    if exists and not ours:
        ret["comment"] = f"account {name} exists and is used as it is (the formula did not create it)"
        return ret

    group = group or name
    user_ret = __states__["user.present"](
        name=name,
        home=home,
        shell=shell,
        usergroup=group == name,
        system=True,
        createhome=True,
        **({} if group == name else {"gid": group}),
    )
    ret.update(result=user_ret["result"], changes=dict(user_ret["changes"]), comment=user_ret["comment"])
    if not user_ret["result"] or __opts__["test"]:
        return ret
    if not ours:
        _remember(record, name)
        ret["changes"]["recorded"] = record
    try:
        stat = os.stat(home)
        if stat.st_mode & 0o7777 != HOME_MODE:
            os.chmod(home, HOME_MODE)
            ret["changes"]["home_mode"] = f"{HOME_MODE:04o}"
    except OSError as exc:
        ret.update(result=False, comment=f"{ret['comment']}; cannot set the mode of {home}: {exc}")
    return ret


def absent(name, record, purge=False):
    """Remove the account if the formula created it (its record says so). ``purge``
    removes its home too (the formula made it; notebooks live in root_dir)."""
    ret = {"name": name, "result": True, "changes": {}, "comment": ""}
    if name not in recorded(record):
        ret["comment"] = f"account {name} was not created by the formula: left alone"
        return ret
    user_ret = __states__["user.absent"](name=name, purge=purge)
    ret.update(result=user_ret["result"], changes=dict(user_ret["changes"]), comment=user_ret["comment"])
    if user_ret["result"] and not __opts__["test"]:
        _write(record, [account for account in recorded(record) if account != name])
    return ret
