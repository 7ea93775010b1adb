"""
Keep a supervisord program running, stopped or gone, touching that program
only: never ``supervisorctl restart all``, never a restart of supervisord.

Uses the ``supervisor_rpc`` execution module (supervisord's XML-RPC API over
its unix socket). ``name`` is the program's group name, as in
``[program:NAME]`` (or ``[group:NAME]``).

.. code-block:: yaml

    jupyter-supervisor-program-running:
      supervisor_program.running:
        - name: jupyter
        - timeout: 60
        - watch:
          - file: jupyter-config-file

One restart per run: Salt calls ``mod_watch`` only when ``running`` itself
changed nothing (``call_chunk`` in salt/state.py), so a program that
``running`` updated or started is not restarted again for the same watch
(tests/functional/test_supervisor_watch.py proves it with salt-call). Use
``watch``, not ``listen``: Salt runs a listener's ``mod_watch`` at the end of
the run whatever the state itself did.

With ``ready_port``, a stale instance of the program (left running by a
supervisord that died hard, holding the port) is stopped before the program
is started; a port held by anything else is never touched. The rules are in
the ``supervisor_rpc`` module doc.
"""

import concurrent.futures
import contextvars
import os
import time

from salt.exceptions import CommandExecutionError

__virtualname__ = "supervisor_program"

SOCKET_GRACE = 10  # seconds a just-started supervisord gets to open its socket


def __virtual__():
    if "supervisor_rpc.status" in __salt__:
        return __virtualname__
    return (False, "supervisor_program: the supervisor_rpc module is not loaded")


def _rpc(fun, *args, **kwargs):
    return __salt__["supervisor_rpc." + fun](*args, **kwargs)


def _ret(name):
    return {"name": name, "changes": {}, "result": True, "comment": ""}


def _group(name):
    return str(name).strip().partition(":")[0]


def _test():
    return bool(__opts__.get("test"))


def _pids(status):
    return {proc: info["pid"] for proc, info in sorted(status.items())}


def _pending(diff, group):
    """What an update would do to this group: added, changed, removed or None."""
    for action in ("added", "changed", "removed"):
        if group in diff.get(action, ()):
            return action
    return None


def _status_or_none(name, socket):
    """
    status(name), or None when supervisord runs no such program (same
    selection rule as supervisor_rpc: GROUP, GROUP:, GROUP:* or GROUP:PROC).
    """
    group, _, proc = str(name).strip().partition(":")
    proc = None if proc in ("", "*") else proc
    found = {
        spec: info
        for spec, info in _rpc("status", socket=socket).items()
        if info["group"] == group and proc in (None, info["name"])
    }
    return found or None


# --- states -----------------------------------------------------------------


def _wait_until_reachable(socket, timeout):
    """
    supervisord just started by its service (systemd's Type=simple returns at
    once) may not have made its socket yet: give it a few seconds.
    """
    deadline = time.monotonic() + min(timeout, SOCKET_GRACE)
    while True:
        try:
            return _rpc("state", socket=socket)
        except CommandExecutionError:
            if _test() or time.monotonic() >= deadline:
                raise
            time.sleep(0.5)


def running(name, socket=None, timeout=60, ready_port=None, wait=True):
    """
    Make sure the program runs with the configuration supervisord reads now.

    First a reread: if this program's group was added, changed or removed
    in the files, only that group is updated (a changed program restarts, its
    neighbours keep their pids). Then, if it is not RUNNING, it is started and
    the state waits until it has stayed up for its ``startsecs`` (or, with
    ``ready_port``, listens there). A program that ends FATAL or BACKOFF fails
    the state, with the tail of its stderr log in the comment.

    name
        The program (group) name, as in ``[program:NAME]``.

    socket
        supervisord's unix socket (default: see ``supervisor_rpc``).

    timeout
        Seconds to wait for each stop or start.

    ready_port
        The TCP port the program listens on once it is up: it counts as
        started as soon as it listens there, without waiting out its
        ``startsecs`` (``supervisor_rpc`` module doc). Also used on a watch.
        Before a start, a stale instance of this very program holding the
        port (orphaned when supervisord died hard) is stopped and reported in
        ``changes['stale']``; a port held by anything else is left alone and a
        start that fails names its holder.
    """
    ret = _ret(name)
    group = _group(name)
    before = {}
    try:
        _wait_until_reachable(socket, timeout)
        pending = _pending(_rpc("reread", socket=socket), group)
        if pending == "removed":
            ret["result"] = False
            ret["comment"] = (
                "{} is no longer in supervisord's configuration files (an update "
                "would remove it): nothing to keep running. Write its program "
                "file, or use supervisor_program.absent.".format(group)
            )
            return ret
        before = _status_or_none(name, socket)
        if before is None and pending != "added":
            if _test():
                ret["result"] = None
                ret["comment"] = (
                    "{} is not known to supervisord yet; it would be added and "
                    "started once its program file is in place".format(name)
                )
                return ret
            ret["result"] = False
            ret["comment"] = (
                "supervisord has no program or group named '{}' and none in "
                "its configuration files".format(name)
            )
            return ret
        before = before or {}
        if _test():
            _predict_running(ret, name, group, pending, before)
            waiting = sorted(p for p, i in before.items() if pending or i["state"] != "RUNNING")
            if ready_port and waiting:
                _predict_stale(ret, name, socket, ready_port, waiting)
            return ret

        if pending:
            _rpc("update", group, socket=socket, timeout=timeout)
            ret["changes"]["updated"] = pending
        current = _rpc("status", name, socket=socket)
        not_running = sorted(p for p, i in current.items() if i["state"] != "RUNNING")
        if not_running:
            # wait for each; a process supervisord was already starting (STARTING, e.g.
            # after an apply moments ago that returned once it listened) is no change of ours
            done = _rpc("start", name, timeout=timeout, socket=socket, ready_port=ready_port, wait=wait)
            _add_stale(ret, done)
            started = [
                p for p in not_running
                if pending or current[p]["state"] != "STARTING" or (done.get(p) or {}).get("stale")
            ]
            if started:
                ret["changes"]["started"] = started
    except CommandExecutionError as exc:
        comment = str(exc)
        if ret["changes"].get("updated"):
            comment = "{} group {}, then: {}".format(ret["changes"]["updated"], group, exc)
        return _failed(ret, comment, name, socket, before)

    _add_pids(ret, name, socket, before)
    if ret["changes"]:
        ret["comment"] = _running_comment(name, group, pending, ret["changes"], ready_port if wait else None)
    else:
        ret["comment"] = "{} is already running and up to date".format(name)
    return ret


def _add_stale(ret, done):
    """
    changes['stale'] from what supervisor_rpc.start/restart stopped:
    {'pid': N, 'stopped': True, 'user': ..., 'command': ...}; 'pid' is a
    sorted list when several processes held the port (a forking server).
    """
    records = [r for spec in sorted(done) for r in (done[spec] or {}).get("stale", ())]
    if not records:
        return
    pids = sorted(r["pid"] for r in records)
    ret["changes"]["stale"] = {
        "pid": pids[0] if len(pids) == 1 else pids,
        "stopped": True,
        "user": records[0]["user"],
        "command": records[0]["command"],
        "signal": records[0]["signal"],
    }


def _stale_text(stale, ready_port):
    pids = stale["pid"] if isinstance(stale["pid"], list) else [stale["pid"]]
    return (
        "stopped a stale instance (pid {}, user {}, SIG{}) left by an earlier supervisord "
        "on port {}".format(
            ", ".join(str(p) for p in pids), stale["user"], stale["signal"], ready_port
        )
    )


def _running_comment(name, group, pending, changes, ready_port):
    parts = []
    if changes.get("stale"):
        parts.append(_stale_text(changes["stale"], ready_port))
    if pending == "added":
        parts.append("added group {} to supervisord".format(group))
    elif pending == "changed":
        parts.append("updated group {} (its configuration changed)".format(group))
    if changes.get("started"):
        parts.append("started {}".format(", ".join(changes["started"])))
    now = "listening on port {}".format(ready_port) if ready_port else "RUNNING"
    return "{}: {}; now {}".format(name, ", ".join(parts), now)


def _predict_stale(ret, name, socket, ready_port, waiting):
    """
    test=True: who holds ready_port, and what a real run would do about it
    before starting the processes ``waiting``.
    """
    holders = _rpc("port_holders", name, ready_port, socket=socket)
    twins = [h for h in holders if h["stale"]]
    foreign = [h for h in holders if not h["stale"]]
    if twins:
        ret["result"] = None
        if "restarted" not in ret["changes"]:
            ret["changes"].setdefault("started", waiting)
        if ret["comment"].endswith("already running and up to date"):
            ret["comment"] = "{} would be started (now STARTING, its port taken)".format(
                ", ".join(waiting)
            )
        pids = sorted(h["pid"] for h in twins)
        ret["changes"]["stale"] = {
            "pid": pids[0] if len(pids) == 1 else pids,
            "stopped": True,
            "user": twins[0]["user"],
            "command": twins[0]["command"],
        }
        ret["comment"] += (
            "; first a stale instance of {} holding port {} would be stopped: {}".format(
                name, ready_port, ", ".join(_holder_text(h) for h in twins)
            )
        )
    if foreign:
        ret["comment"] += (
            "; port {} is held by {}, not an instance of {}: it would be left alone and "
            "the start would likely fail".format(
                ready_port, "; ".join(_holder_text(h) for h in foreign), name
            )
        )


def _holder_text(holder):
    return "pid {} (user {}): {}".format(
        holder["pid"], holder["user"] or "unknown", holder["command"] or "(command unknown)"
    )


def _predict_running(ret, name, group, pending, before):
    ret["result"] = None
    not_running = sorted(p for p, i in before.items() if i["state"] not in ("RUNNING", "STARTING"))
    if pending == "added":
        ret["changes"] = {"updated": "added", "started": [name]}
        ret["comment"] = "group {} would be added to supervisord and {} started".format(
            group, name
        )
    elif pending == "changed":
        ret["changes"] = {"updated": "changed", "started": sorted(before)}
        ret["comment"] = (
            "group {} would be updated (its configuration changed): stopped, "
            "removed, added again and started; pids {} would change".format(
                group, _pids(before)
            )
        )
    elif not_running:
        ret["changes"] = {"started": not_running}
        ret["comment"] = "{} would be started (now {})".format(
            ", ".join(not_running),
            ", ".join(before[p]["state"] for p in not_running),
        )
    else:
        ret["result"] = True
        ret["comment"] = "{} is already running and up to date".format(name)
    return ret


def _failed(ret, comment, name, socket, before):
    """The state's answer to an error: False (None under test=True)."""
    ret["result"] = None if _test() else False
    ret["comment"] = comment
    _add_pids(ret, name, socket, before)
    return ret


def _add_pids(ret, name, socket, before):
    """changes['pid'] = {'old': ..., 'new': ...} when anything changed."""
    if not ret["changes"] or _test():
        return
    try:
        after = _status_or_none(name, socket) or {}
    except CommandExecutionError:
        after = {}
    ret["changes"]["pid"] = {"old": _pids(before or {}), "new": _pids(after)}


def dead(name, socket=None, timeout=60):
    """
    Make sure the program is not running: stop it and wait until it is
    STOPPED. A stop that does not finish within ``timeout`` fails the state.
    A program supervisord does not know is not running: success, no changes.

    name
        The program (group) name, as in ``[program:NAME]``.
    """
    ret = _ret(name)
    before = {}
    try:
        before = _status_or_none(name, socket)
        if before is None:
            ret["comment"] = "{} is not known to supervisord: not running".format(name)
            return ret
        running_ = sorted(
            p for p, i in before.items() if i["state"] not in ("STOPPED", "EXITED", "FATAL")
        )
        if not running_:
            ret["comment"] = "{} is already stopped".format(name)
            return ret
        if _test():
            ret["result"] = None
            ret["changes"] = {"stopped": running_}
            ret["comment"] = "{} would be stopped (pids {})".format(
                ", ".join(running_), _pids(before)
            )
            return ret
        ret["changes"]["stopped"] = running_
        _rpc("stop", name, timeout=timeout, socket=socket)
    except CommandExecutionError as exc:
        return _failed(ret, str(exc), name, socket, before)
    _add_pids(ret, name, socket, before)
    ret["comment"] = "stopped {}".format(", ".join(running_))
    return ret


def absent(name, conf_file=None, socket=None, timeout=60):
    """
    Make supervisord forget the program: remove ``conf_file`` (its program
    file) when given, then reread and update this group only (stop, remove).
    Succeeds when supervisord runs no such group and its configuration files
    no longer define it.

    name
        The program (group) name, as in ``[program:NAME]``.

    conf_file
        The program file to delete, e.g. ``/etc/supervisor/conf.d/NAME.conf``.
        Without it the file must already be gone.
    """
    ret = _ret(name)
    group = _group(name)
    test = _test()
    if conf_file and os.path.exists(conf_file):
        ret["changes"]["conf_file"] = {"removed": conf_file}
        if not test:
            try:
                os.remove(conf_file)
            except OSError as exc:
                ret["result"] = False
                ret["comment"] = "cannot remove {}: {}".format(conf_file, exc)
                ret["changes"] = {}
                return ret
    try:
        before = _status_or_none(group, socket)
        pending = _pending(_rpc("reread", socket=socket), group)
        if test and "conf_file" in ret["changes"]:
            # in a real run the file is gone before the reread
            to_remove = before is not None
        elif pending == "removed":
            to_remove = True
        elif pending is None and before is None:
            to_remove = False
        else:
            ret["result"] = None if test else False
            ret["comment"] = _absent_comment(
                ret,
                "group {} is still defined in supervisord's configuration files; "
                "give its program file as conf_file or remove it first".format(group),
            )
            return ret
        if not to_remove:
            ret["result"] = None if test and ret["changes"] else True
            ret["comment"] = _absent_comment(
                ret, "{} is not known to supervisord".format(group)
            )
            return ret
        if test:
            ret["result"] = None
            ret["changes"]["removed"] = group
            ret["comment"] = _absent_comment(
                ret,
                "group {} would be stopped and removed from supervisord (pids "
                "{})".format(group, _pids(before or {})),
            )
            return ret
        _rpc("update", group, socket=socket, timeout=timeout)
        ret["changes"]["removed"] = group
        ret["changes"]["pid"] = {"old": _pids(before or {}), "new": {}}
        ret["comment"] = _absent_comment(
            ret, "stopped group {} and removed it from supervisord".format(group)
        )
    except CommandExecutionError as exc:
        ret["result"] = None if test else False
        ret["comment"] = _absent_comment(ret, str(exc))
    return ret


def _absent_comment(ret, text):
    removed = (ret["changes"].get("conf_file") or {}).get("removed")
    if not removed:
        return text
    verb = "would remove" if _test() else "removed"
    return "{} {}; {}".format(verb, removed, text)


def mod_watch(name, sfun=None, socket=None, timeout=60, ready_port=None, wait=True, **kwargs):
    """
    Called by Salt when a state that ``running`` watches changed and
    ``running`` itself changed nothing: restart the program (Salt does not
    call it when ``running`` updated or started the program in this run).
    With ``ready_port``, a stale instance holding it is stopped before the
    start, as in ``running``. For ``dead`` and ``absent`` a watch does
    nothing.
    """
    ret = _ret(name)
    if sfun not in (None, "running"):
        ret["comment"] = "supervisor_program.{} does nothing on a watch".format(sfun)
        return ret
    before = {}
    try:
        before = _rpc("status", name, socket=socket)
        if _test():
            ret["result"] = None
            ret["changes"] = {"restarted": sorted(before)}
            ret["comment"] = "{} would be restarted (pids {})".format(name, _pids(before))
            if ready_port:
                _predict_stale(ret, name, socket, ready_port, sorted(before))
            return ret
        done = _rpc("restart", name, timeout=timeout, socket=socket, ready_port=ready_port, wait=wait)
        ret["changes"]["restarted"] = sorted(before)
        _add_stale(ret, done)
    except CommandExecutionError as exc:
        return _failed(ret, str(exc), name, socket, before)
    _add_pids(ret, name, socket, before)
    ret["comment"] = "restarted {}".format(name)
    if ret["changes"].get("stale"):
        ret["comment"] += "; " + _stale_text(ret["changes"]["stale"], ready_port)
    return ret


def ready(name, programs, socket=None, timeout=60):
    """
    Wait for several programs together until each is up: RUNNING, or listening
    on its port (what :py:func:`running` waits for one program at a time). The
    programs' own states start them with ``wait: False``, so that they start side
    by side. A program that ends FATAL or BACKOFF fails the state, with the tail of
    its stderr log (a program found stopped is started once more, as its own
    state would). Reports no changes: the programs' own states do.

    name
        A label for the group of programs.

    programs
        ``{program: ready_port}`` (``None``: wait for RUNNING).

    .. code-block:: yaml

        jupyter-supervisor-ready:
          supervisor_program.ready:
            - programs: {jupyter-alice: 8901, jupyter-bob: 8902}
            - require:
              - supervisor_program: jupyter-supervisor-program-alice
              - supervisor_program: jupyter-supervisor-program-bob
    """
    ret = _ret(name)
    if _test():
        ret["comment"] = "would wait until {} are up".format(", ".join(sorted(programs)))
        return ret

    def wait_for(program):
        try:
            _rpc("start", program, timeout=timeout, socket=socket, ready_port=programs[program])
            return None
        except CommandExecutionError as exc:
            return str(exc)

    # one thread each: Jupyter servers take about as long to import as to start. Salt's
    # loader dunders (__salt__ ...) live in context variables, which a new thread does
    # not inherit: each runs in a copy of this one's context.
    with concurrent.futures.ThreadPoolExecutor(max_workers=max(1, len(programs))) as pool:
        futures = {p: pool.submit(contextvars.copy_context().run, wait_for, p) for p in sorted(programs)}
        problems = {program: future.result() for program, future in futures.items()}
    failed = {program: why for program, why in problems.items() if why}
    if failed:
        ret["result"] = False
        ret["comment"] = "\n".join("{}: {}".format(program, why) for program, why in sorted(failed.items()))
        return ret
    ret["comment"] = "up: " + ", ".join(
        "{} (port {})".format(p, programs[p]) if programs[p] else p for p in sorted(programs)
    )
    return ret
