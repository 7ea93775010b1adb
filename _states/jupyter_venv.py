"""
The venvs of Jupyter instances: built beside the live one, checked, then switched.

``jupyter_venv.built``
    The venv ``<venv_store>/<venv_id>`` that an instance's python, packages and pip
    options make exists and is complete. The live server keeps serving meanwhile.

``jupyter_venv.live``
    The instance's ``venv`` link points at that venv. When another venv serves now,
    a candidate server from the new venv must pass its checks first (see
    ``jupyter_venv.check``); then the link is switched atomically and the supervisor
    program, which watches this state, restarts once. A failed check changes nothing
    and is remembered: the next apply with the same pillar fails at once.

Both states read the instance's settings inside the state
(``jupyter.settings(reveal_secrets=True)``): pip index credentials are never state
arguments and appear in no comment or changes.

.. code-block:: yaml

    jupyter-venv-built:
      jupyter_venv.built:
        - name: /opt/jupyter/venvs/0123456789ab
        - instance: jupyter

    jupyter-venv-live:
      jupyter_venv.live:
        - name: /opt/jupyter/venv
        - instance: jupyter
        - require:
          - jupyter_venv: jupyter-venv-built
"""

import os
import shutil

from salt.exceptions import CommandExecutionError, SaltInvocationError

__virtualname__ = "jupyter_venv"


def __virtual__():
    if "jupyter_venv.build" not in __salt__:
        return (False, "the jupyter_venv states need the jupyter_venv execution module (sync _modules)")
    return __virtualname__


def _load(instance):
    """(all settings, this instance's settings), secrets revealed: they stay in here."""
    settings = __salt__["jupyter.settings"](reveal_secrets=True)
    return settings, __salt__["jupyter_venv.instance_settings"](instance, settings=settings)


def _fail(ret, comment):
    ret.update(result=False, comment=comment)
    return ret


def built(name, instance):
    """
    The complete venv ``name`` for the instance ``instance``: built with the instance's
    ``python``, ``packages`` and ``pip`` options when it is missing, or a leftover of
    an interrupted build (no manifest). A complete venv is never touched.

    name
        The instance's ``venv_dir`` (``<venv_store>/<venv_id>``), as
        ``jupyter.settings`` derives it.

    instance
        The instance name (``jupyter`` without ``instances`` in pillar).
    """
    ret = {"name": name, "result": True, "changes": {}, "comment": ""}
    try:
        settings, inst = _load(instance)
    except (CommandExecutionError, SaltInvocationError) as exc:
        return _fail(ret, str(exc))
    path = os.path.normpath(name)
    if path != os.path.normpath(inst["venv_dir"]):
        return _fail(ret, f"{name} is not the venv of instance {instance}: its settings name {inst['venv_dir']}")
    found = __salt__["jupyter_venv.manifest"](path)
    if found:
        ret["comment"] = f"{path} is built (since {found.get('built_at')})"
        return ret
    leftover = os.path.lexists(path)
    if leftover:
        # a live venv that lost its manifest must not be rebuilt under its server
        serving = [
            other
            for other, data in (settings.get("instances") or {}).items()
            if __salt__["jupyter_venv.link_target"](data["venv"])["target"] == path
        ]
        if serving:
            return _fail(
                ret,
                f"{path} is live (instances: {', '.join(sorted(serving))}) but has no manifest "
                f"{path}/.jupyter-venv.json: not rebuilding it under the running server",
            )
    packages = [__salt__["jupyter_venv.mask"](p) for p in inst["packages"]]
    changes = {
        "venv": {"old": "leftover without manifest" if leftover else None, "new": path},
        "packages": packages,
    }
    if __opts__["test"]:
        ret.update(result=None, changes=changes, comment=f"{path} would be built with {inst['python']}")
        return ret
    try:
        made = __salt__["jupyter_venv.build"](path, inst["python"], inst["packages"], pip=inst.get("pip"))
    except (CommandExecutionError, SaltInvocationError) as exc:
        # the message is masked by the module; the half-built dir is gone
        return _fail(ret, f"Building {path} failed; the live venv is untouched.\n{exc}")
    changes["python"] = made["python"]["version"]
    ret.update(changes=changes, comment=f"{path} built in {made['build_seconds']} s")
    return ret


def _failure(check, venv, link, old):
    failed = check["failed"]
    comment = check["checks"].get(failed, {}).get("comment", "")
    if check.get("remembered"):
        head = (
            f"Candidate {venv} failed the '{failed}' check at {check.get('at')} with these "
            f"packages and this config, and is not checked again until they change "
            f"(or remove {check.get('marker')}): {comment}"
        )
    else:
        head = f"Candidate {venv} failed the '{failed}' check: {comment}"
    text = f"{head}\n{link} still points at {old}; the running server was not touched."
    if check.get("log_tail"):
        text += f"\nLast lines of the candidate's log:\n{check['log_tail']}"
    return text


def live(name, instance):
    """
    The link ``name`` (the instance's ``venv``) points at the instance's venv.

    - Already so: nothing to do.
    - Nothing at ``name`` (first install): the link is made; nothing serves yet, so
      there is nothing to check.
    - Another venv serves: a candidate server from the new venv must pass the
      checks of ``jupyter_venv.check`` (status, extensions, login, kernel); then the
      link is replaced atomically, the switch is recorded in the instance's history and
      venvs beyond ``upgrade:keep`` that nothing references are pruned. A venv
      directory left at ``name`` by the formula's previous version is moved into the
      store first (it cannot be rolled back to).
    - The check fails: nothing changes; the state fails naming the check, with the
      candidate's log tail. The failure is remembered in the candidate, and the next
      apply with the same packages and config fails at once.
    - The venv was left by ``jupyter.rollback``: the state fails until pillar names
      other packages (or the marker is removed).

    Make the supervisor program ``watch`` this state: a switch restarts it once.

    name
        The instance's ``venv`` path.

    instance
        The instance name.
    """
    ret = {"name": name, "result": True, "changes": {}, "comment": ""}
    try:
        settings, inst = _load(instance)
    except (CommandExecutionError, SaltInvocationError) as exc:
        return _fail(ret, str(exc))
    link = os.path.normpath(name)
    if link != os.path.normpath(inst["venv"]):
        return _fail(ret, f"{name} is not the venv link of instance {instance}: its settings name {inst['venv']}")
    venv = os.path.normpath(inst["venv_dir"])
    store = inst["venv_store"]
    program = {
        "name": inst.get("program"),
        "socket": (inst.get("supervisor") or {}).get("socket"),
        "port": (inst.get("server") or {}).get("port"),
        "timeout": inst["upgrade"]["timeout"],
    }
    salt = __salt__
    now = salt["jupyter_venv.link_target"](link)

    if now["kind"] == "link" and now["target"] == venv:
        history = salt["jupyter_venv.read_history"](store, instance).get(instance)
        if not __opts__["test"] and (not history or history["entries"][-1]["venv"] != venv):
            salt["jupyter_venv.record"](instance, link, venv, store, by="apply", program=program)
        ret["comment"] = f"{link} points at {venv}"
        return ret
    if now["kind"] == "other":
        return _fail(ret, f"{link} is neither a symlink nor a venv directory: not replacing it")

    blocked = salt["jupyter_venv.rolled_back"](venv)
    if blocked:
        return _fail(ret, blocked)
    old = now["target"] if now["kind"] == "link" else f"{link} (a venv directory)"
    first = now["kind"] == "absent" or (now["kind"] == "link" and not now["exists"])
    changes = {"venv": {"old": None if now["kind"] == "absent" else old, "new": venv}}
    if not salt["jupyter_venv.manifest"](venv):
        if __opts__["test"]:
            ret.update(result=None, changes=changes, comment=f"{link} would point at {venv} once it is built and checked")
            return ret
        return _fail(ret, f"{venv} is not built: jupyter_venv.built must run before jupyter_venv.live")

    if first:
        if __opts__["test"]:
            ret.update(result=None, changes=changes, comment=f"{link} would be made, pointing at {venv}")
            return ret
        salt["jupyter_venv.switch"](link, venv)
        salt["jupyter_venv.record"](instance, link, venv, store, by="apply", program=program)
        ret.update(changes=changes, comment=f"{link} made, pointing at {venv}")
        return ret

    known = salt["jupyter_venv.failed_check"](instance, venv)
    if known:
        return _fail(
            ret,
            _failure(
                {"failed": known.get("check"), "remembered": True, "at": known.get("at"),
                 "marker": known.get("marker"), "log_tail": known.get("log_tail"),
                 "checks": {known.get("check"): {"comment": known.get("comment", "")}}},
                venv, link, old,
            ),
        )
    if __opts__["test"]:
        ret.update(
            result=None,
            changes=changes,
            comment=f"A candidate server from {venv} would be checked, then {link} switched to it "
            f"(program {program['name']} restarts once)",
        )
        return ret

    try:
        check = salt["jupyter_venv.check"](instance, venv, old=link)
    except (CommandExecutionError, SaltInvocationError) as exc:
        return _fail(ret, f"The candidate check of {venv} could not run: {exc}\n{link} still points at {old}.")
    if not check["result"]:
        return _fail(ret, _failure(check, venv, link, old))

    switched = salt["jupyter_venv.switch"](link, venv)
    salt["jupyter_venv.record"](
        instance, link, venv, store, by="apply", legacy=switched["legacy"], program=program
    )
    if switched["legacy"]:
        changes["legacy"] = f"{link} was a venv directory, moved to {switched['legacy']} (not a rollback target)"
    protect = [os.path.normpath(data["venv_dir"]) for data in (settings.get("instances") or {}).values()]
    conf_dirs = sorted(
        {os.path.dirname(data["program_file"]) for data in (settings.get("instances") or {}).values()
         if data.get("program_file")}
    ) or None
    try:
        pruned = salt["jupyter_venv.prune"](store, inst["upgrade"]["keep"], protect=protect, conf_dirs=conf_dirs)
    except (CommandExecutionError, SaltInvocationError, OSError) as exc:
        pruned = []
        ret["warnings"] = [f"pruning {store} failed: {exc}"]
    if pruned:
        changes["pruned"] = pruned
    timings = ", ".join(
        f"{n} {c['seconds']} s" for n, c in [*check["checks"].items(), *((k, {"seconds": v}) for k, v in (check.get("overhead") or {}).items())]
    )
    comment = f"{link} switched from {old} to {venv}; the candidate passed its checks ({timings})"
    if check.get("dropped_extensions"):
        comment += f"; server extensions no longer installed: {', '.join(check['dropped_extensions'])}"
    ret.update(changes=changes, comment=comment)
    return ret


def absent(name, links=()):
    """
    What ``jupyter.clean`` takes away: each instance's venv link (or the real directory
    an earlier version of the formula made there), then the whole store ``name`` (every
    venv, the history and the failure markers).

    name
        The venv store (``venv_store``).

    links
        The instances' ``venv`` paths.
    """
    ret = {"name": name, "result": True, "changes": {}, "comment": ""}
    gone = [path for path in [*links, name] if os.path.lexists(path)]
    if not gone:
        ret["comment"] = "no venv of the formula is left"
        return ret
    if __opts__["test"]:
        ret.update(result=None, changes={"removed": gone}, comment="would remove " + ", ".join(gone))
        return ret
    for path in gone:
        if os.path.islink(path) or os.path.isfile(path):
            os.unlink(path)
        else:
            shutil.rmtree(path)
    ret.update(changes={"removed": gone}, comment="removed " + ", ".join(gone))
    return ret
