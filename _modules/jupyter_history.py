"""
The venv history of the Jupyter instances, and rollback: ``jupyter.history`` and
``jupyter.rollback``.

These functions share the ``jupyter`` virtualname with ``_modules/jupyter.py``: Salt's
loader finds them by the file name's partial match. The machinery (links, history
records, markers) is ``jupyter_venv``; this file is what an admin calls.
"""

import logging
import os

from salt.exceptions import CommandExecutionError, SaltInvocationError

log = logging.getLogger(__name__)

__virtualname__ = "jupyter"


def __virtual__():
    # Never (False, reason) here: the loader would mark the whole ``jupyter``
    # virtualname missing, and jupyter.settings with it.
    return __virtualname__


def _venv(function):
    try:
        return __salt__[f"jupyter_venv.{function}"]
    except KeyError as exc:
        raise CommandExecutionError(
            f"jupyter_venv.{function} is not available: sync the formula's modules (saltutil.sync_modules)"
        ) from exc


def _settings():
    """jupyter.settings, or None when the pillar does not validate (rollback must work then too)."""
    try:
        # no password needed to look at venvs
        return __salt__["jupyter.settings"](require_password=False)
    except (CommandExecutionError, SaltInvocationError, KeyError) as exc:
        log.warning("jupyter venv history: no settings (%s); using what the history recorded", exc)
        return None


def _store(settings, venv_store):
    if venv_store:
        return venv_store
    if settings and settings.get("venv_store"):
        return settings["venv_store"]
    return "/opt/jupyter/venvs"


def _instances(settings, store):
    """{instance: {"link", "program": {...}, "entries"}} from history and settings."""
    found = {}
    for name, data in _venv("read_history")(store).items():
        found[name] = {"link": data.get("link"), "program": data.get("program") or {}, "entries": data["entries"]}
    for name, inst in ((settings or {}).get("instances") or {}).items():
        entry = found.setdefault(name, {"link": inst.get("venv"), "program": {}, "entries": []})
        entry["link"] = inst.get("venv") or entry["link"]
        # the settings of today win over what the last switch recorded
        entry["program"] = {
            "name": inst.get("program"),
            "socket": (inst.get("supervisor") or {}).get("socket"),
            "port": (inst.get("server") or {}).get("port"),
            "timeout": ((inst.get("upgrade") or settings.get("upgrade") or {}).get("timeout"))
            or entry["program"].get("timeout"),
        }
    return found


def _describe(path, live, entry, full):
    found = _venv("manifest")(path) or {}
    item = {
        "venv": path,
        "live": path == live,
        "live_since": entry.get("live_since") if entry else None,
        "made_live_by": entry.get("by") if entry else None,
        "exists": os.path.isdir(path),
        "packages": found.get("packages"),
        "python": (found.get("python") or {}).get("version"),
        "built_at": found.get("built_at"),
        "rolled_back": _venv("rolled_back")(path),
    }
    if found.get("legacy") or (entry or {}).get("legacy"):
        item["note"] = (entry or {}).get("note") or "a venv of the formula's previous version: not a rollback target"
    if full:
        item["installed"] = found.get("freeze")
    return item


def history(instance=None, full=False, venv_store=None):
    """
    The venvs each instance's link pointed at, oldest first, with their package sets,
    and which one is live.

    instance
        Only this instance.

    full
        Also the ``pip freeze`` of each venv (``installed``).

    venv_store
        Where the venvs are (default: ``venv_store`` of ``jupyter.settings``, else
        ``/opt/jupyter/venvs``).

    Returns ``{instance: {"link", "live", "program", "venvs": [{"venv", "live",
    "live_since", "made_live_by", "exists", "packages", "python", "built_at",
    "rolled_back", ...}]}}``.

    CLI Example:

    .. code-block:: bash

        salt-call jupyter.history
        salt-call jupyter.history instance=alice full=True
    """
    settings = _settings()
    store = _store(settings, venv_store)
    found = _instances(settings, store)
    if instance is not None:
        if instance not in found:
            raise SaltInvocationError(f"no instance named '{instance}' (known: {', '.join(sorted(found)) or 'none'})")
        found = {instance: found[instance]}
    result = {}
    for name, data in sorted(found.items()):
        at = _venv("link_target")(data["link"]) if data["link"] else {"kind": "absent", "target": None}
        live = at["target"]
        venvs = [_describe(e["venv"], live, e, full) for e in data["entries"]]
        if at["kind"] == "dir":
            # deployed by the formula's previous version: a venv directory, not a link yet
            live = data["link"]
            venvs.append({"venv": live, "live": True, "exists": True, "note": (
                "a venv directory of the formula's previous version: moved into the store at the "
                "next switch, and not a rollback target after that")})
        elif live and live not in [v["venv"] for v in venvs]:
            venvs.append(_describe(live, live, None, full))
        result[name] = {"link": data["link"], "live": live, "program": data["program"].get("name"), "venvs": venvs}
    return result


def _previous(entries, live):
    """The venv to go back to: the newest before the live one that can serve again."""
    candidates = [e for e in entries if e.get("venv") != live]
    for entry in reversed(candidates):
        path = entry.get("venv")
        if entry.get("legacy") or not path:
            continue
        found = _venv("manifest")(path)
        if not found or found.get("legacy") or _venv("rolled_back")(path):
            continue
        return path
    return None


def rollback(instance=None, venv_store=None):
    """
    Switch instances back to the venv that was live before the current one, and
    restart each one's supervisor program (``supervisor_rpc.restart``, ready once it
    listens on its port). The venv left behind is marked: an apply with the pillar that
    names it fails with a message saying so, instead of upgrading again, until pillar
    names other packages (or the marker is removed).

    instance
        Only this instance; default: every instance that has an earlier venv.
        Instances sharing a venv each switch and restart on their own.

    venv_store
        Where the venvs are (default: ``venv_store`` of ``jupyter.settings``, else
        ``/opt/jupyter/venvs``). Works with a pillar that does not validate, from what
        the last switch recorded.

    Returns ``{instance: {"old": venv, "new": venv, "program": name, "restart":
    supervisor_rpc.restart's answer}}``; instances without an earlier venv, when no
    instance is named, as ``{"skipped": why}``.

    CLI Example:

    .. code-block:: bash

        salt-call jupyter.rollback
        salt-call jupyter.rollback instance=alice
    """
    settings = _settings()
    store = _store(settings, venv_store)
    found = _instances(settings, store)
    if instance is not None and instance not in found:
        raise SaltInvocationError(f"no instance named '{instance}' has a venv history (known: {', '.join(sorted(found)) or 'none'})")
    names = [instance] if instance is not None else sorted(found)
    plan, result = {}, {}
    for name in names:
        data = found[name]
        live = _venv("link_target")(data["link"])["target"] if data["link"] else None
        back = _previous(data["entries"], live) if live else None
        if back is None:
            why = f"instance {name}: no earlier venv to roll back to from {live or data['link']}"
            if instance is not None:
                raise CommandExecutionError(why + " (see jupyter.history)")
            result[name] = {"skipped": why}
            continue
        plan[name] = (data, live, back)
    if not plan:
        raise CommandExecutionError("nothing to roll back: " + "; ".join(r["skipped"] for r in result.values()))

    errors = []
    for name, (data, live, back) in plan.items():
        _venv("switch")(data["link"], back)
        _venv("mark_rolled_back")(live, name, back)
        _venv("record")(name, data["link"], back, store, by="jupyter.rollback", program=data["program"] or None)
        program = data["program"]
        done = {"old": live, "new": back, "program": program.get("name")}
        if program.get("name"):
            try:
                done["restart"] = __salt__["supervisor_rpc.restart"](
                    program["name"],
                    timeout=program.get("timeout") or 180,
                    socket=program.get("socket"),
                    ready_port=program.get("port"),
                )
            except CommandExecutionError as exc:
                errors.append(f"instance {name}: {data['link']} points at {back} again, but restarting {program['name']} failed: {exc}")
        else:
            errors.append(f"instance {name}: {data['link']} points at {back} again; restart its program yourself (none recorded)")
        result[name] = done
    if errors:
        raise CommandExecutionError("\n".join(errors), info=result)
    return result
