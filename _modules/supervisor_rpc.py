"""
Manage the programs of a running supervisord through its XML-RPC interface.

This talks to supervisord over its unix socket, exactly as ``supervisorctl``
does, but gets data back instead of text to parse. It replaces Salt's
``supervisord`` execution module, which misreads supervisor 4 output
(``supervisorctl status`` exits 3 as soon as one program is stopped).

It uses ``xmlrpc.client`` plus a small transport that speaks HTTP over a unix
socket, and psutil (a dependency of Salt) to see which ports a process listens on.

Socket
    Every function takes ``socket``: the path of supervisord's unix socket
    (``[unix_http_server] file=``). Without it, the minion option
    ``supervisor_rpc.socket`` is used when set, else the first existing of
    ``/var/run/supervisor.sock``, ``/run/supervisor.sock``,
    ``/run/supervisor/supervisor.sock`` and
    ``/var/run/supervisor/supervisor.sock``.

Names
    Results are keyed by supervisor's own process name, the one
    ``supervisorctl status`` prints: ``NAME`` when the process has the name of
    its group (a ``[program:NAME]`` with ``numprocs = 1``), ``GROUP:PROCESS``
    otherwise (``[group:GROUP]`` members, ``numprocs > 1``).

    A ``name`` argument selects processes like this:

    - ``GROUP``, ``GROUP:`` and ``GROUP:*``: every process of the group (for
      a plain ``[program:NAME]`` that is the one process ``NAME``);
    - ``GROUP:PROCESS``: that process only.

    A name that matches nothing raises ``CommandExecutionError``.

Ready
    supervisord calls a process RUNNING once it has stayed up for its
    ``startsecs``. :py:func:`start` and :py:func:`restart` take ``ready_port``:
    a process that listens on that TCP port (itself or a child) counts as
    started at once, which is sooner for a server that opens its port at the
    end of its start-up. A crash after that is supervisord's to retry.

Failures (supervisord down, unknown program, a start or stop that did not get
where it should) raise ``CommandExecutionError`` with a message that says what
happened; never a made-up status.
"""

import functools
import http.client
import logging
import os
import socket as _socket_mod
import time
import xmlrpc.client

import psutil
from salt.exceptions import CommandExecutionError

log = logging.getLogger(__name__)

__virtualname__ = "supervisor_rpc"

DEFAULT_SOCKETS = (
    "/var/run/supervisor.sock",
    "/run/supervisor.sock",
    "/run/supervisor/supervisor.sock",
    "/var/run/supervisor/supervisor.sock",
)

# How long one XML-RPC call may take. Calls never ask supervisord to wait
# (``wait=False``): waiting is done here, by polling, under the caller's timeout.
RPC_TIMEOUT = 30
POLL_INTERVAL = 0.1
TAIL_BYTES = 2000
TAIL_LINES = 20

# supervisor.xmlrpc.Faults
_BAD_NAME = 10
_NO_FILE = 20
_NOT_EXECUTABLE = 21
_FAILED = 30
_ABNORMAL_TERMINATION = 40
_SPAWN_ERROR = 50
_ALREADY_STARTED = 60
_NOT_RUNNING = 70
_CANT_REREAD = 92

# supervisor.states.ProcessStates, by name
_RUNNING_STATES = ("RUNNING", "STARTING", "BACKOFF")
_STOPPED_STATES = ("STOPPED", "EXITED", "FATAL")


def __virtual__():
    if not hasattr(_socket_mod, "AF_UNIX"):
        return (False, "supervisor_rpc: this platform has no unix sockets")
    return __virtualname__


# --- transport --------------------------------------------------------------
# Written by hand on purpose (the only hand-written protocol code here): the
# standard library's xmlrpc.client only speaks TCP, supervisord listens on a
# unix socket. Everything else is plain xmlrpc.client.


class _UnixHTTPConnection(http.client.HTTPConnection):
    def __init__(self, path, timeout):
        super().__init__("localhost", timeout=timeout)
        self._unix_path = path

    def connect(self):
        sock = _socket_mod.socket(_socket_mod.AF_UNIX, _socket_mod.SOCK_STREAM)
        sock.settimeout(self.timeout)
        try:
            sock.connect(self._unix_path)
        except OSError:
            sock.close()
            raise
        self.sock = sock


class _UnixTransport(xmlrpc.client.Transport):
    def __init__(self, path, timeout=RPC_TIMEOUT):
        super().__init__()
        self._unix_path = path
        self._timeout = timeout

    def make_connection(self, host):
        if self._connection and self._connection[0] == host:
            return self._connection[1]
        self._connection = host, _UnixHTTPConnection(self._unix_path, self._timeout)
        return self._connection[1]


# --- helpers ----------------------------------------------------------------


def _socket_path(socket=None):
    """
    The socket to talk to: the argument, the ``supervisor_rpc.socket`` option,
    or the first existing default path.
    """
    if socket:
        return str(socket)
    configured = __salt__["config.get"]("supervisor_rpc.socket")
    if configured:
        return str(configured)
    for path in DEFAULT_SOCKETS:
        if os.path.exists(path):
            return path
    raise CommandExecutionError(
        "supervisord is not reachable: no socket found at {} (is supervisord "
        "running? set the minion option supervisor_rpc.socket or pass "
        "socket=...)".format(", ".join(DEFAULT_SOCKETS))
    )


def _proxy(path):
    return xmlrpc.client.ServerProxy(
        "http://localhost/RPC2", transport=_UnixTransport(path)
    )


class _Supervisord:
    """
    One connection to supervisord. ``call`` turns "cannot talk to it" into a
    clear ``CommandExecutionError`` and lets ``xmlrpc.client.Fault`` (an answer
    from supervisord) through for the caller to judge.
    """

    def __init__(self, socket=None):
        self.path = _socket_path(socket)
        self._proxy = _proxy(self.path)

    def call(self, method, *args):
        log.debug("supervisor_rpc: %s%r on %s", method, args, self.path)
        try:
            return getattr(self._proxy.supervisor, method)(*args)
        except xmlrpc.client.Fault:
            raise
        except xmlrpc.client.ProtocolError as exc:
            raise CommandExecutionError(
                "supervisord on {} refused {}: HTTP {} {}".format(
                    self.path, method, exc.errcode, exc.errmsg
                )
            )
        except (OSError, http.client.HTTPException) as exc:
            reason = getattr(exc, "strerror", None) or str(exc) or type(exc).__name__
            raise CommandExecutionError(
                "supervisord is not reachable on its socket {}: {} (is "
                "supervisord running?)".format(self.path, reason)
            )

    def fault(self, exc, what, name=None):
        """The ``CommandExecutionError`` for a fault met doing ``what`` to ``name``."""
        if exc.faultCode == _BAD_NAME and name is not None:
            return self.unknown(name)
        return CommandExecutionError(
            "supervisord on {} could not {}: {}".format(self.path, what, exc.faultString)
        )

    def unknown(self, name):
        return CommandExecutionError(
            "supervisord on {} has no program or group named '{}'".format(
                self.path, name
            )
        )

    def infos(self):
        return self.call("getAllProcessInfo")

    def select(self, name):
        """The process infos that ``name`` means (see the module docstring)."""
        return _select(self.infos(), name, self)

    def tail(self, info, stream="stderr", length=TAIL_BYTES):
        """Last ``length`` bytes of a process log, as text."""
        spec = _namespec(info)
        if stream == "stderr" and not info.get("stderr_logfile"):
            # redirect_stderr=true: its stderr is in the stdout log
            stream = "stdout"
        method = (
            "tailProcessStderrLog" if stream == "stderr" else "tailProcessStdoutLog"
        )
        try:
            data = self.call(method, spec, 0, int(length))[0]
        except xmlrpc.client.Fault as exc:
            raise self.fault(exc, "read the {} log of {}".format(stream, spec), spec)
        return data


def _namespec(info):
    """supervisorctl's name for a process: NAME, or GROUP:NAME."""
    if info["group"] == info["name"]:
        return info["name"]
    return "{}:{}".format(info["group"], info["name"])


def _split(name):
    """(group, process or None for the whole group)"""
    name = str(name).strip()
    group, sep, proc = name.partition(":")
    if not sep or proc in ("", "*"):
        return group, None
    return group, proc


def _group_name(name):
    return _split(name)[0]


def _select(infos, name, sv):
    group, proc = _split(name)
    chosen = [
        info
        for info in infos
        if info["group"] == group and (proc is None or info["name"] == proc)
    ]
    if not chosen:
        raise sv.unknown(name)
    return chosen


def _describe(info):
    running = info["statename"] == "RUNNING"
    return {
        "state": info["statename"],
        "pid": info["pid"] or None,
        "uptime": max(0, info["now"] - info["start"]) if running else 0,
        "exitstatus": info["exitstatus"],
        "group": info["group"],
        "name": info["name"],
        "description": info["description"],
        "spawnerr": info.get("spawnerr", ""),
        "stdout_logfile": info["stdout_logfile"],
        "stderr_logfile": info["stderr_logfile"],
    }


def _brief(info):
    return {"state": info["statename"], "pid": info["pid"] or None}


def _failure(sv, info, problem):
    """One process's failure: state, supervisord's reason, and its stderr tail."""
    spec = _namespec(info)
    text = "{}: {} (state {}".format(spec, problem, info["statename"])
    if info.get("description") and info["statename"] != "RUNNING":
        text += ": {}".format(info["description"])
    text += ")"
    logfile = info.get("stderr_logfile") or info.get("stdout_logfile")
    try:
        tail = sv.tail(info)
    except CommandExecutionError as exc:
        tail = "(could not read it: {})".format(exc)
    lines = tail.strip().splitlines()[-TAIL_LINES:]
    if lines:
        text += "\nlast lines of {}:\n{}".format(logfile, "\n".join(lines))
    else:
        text += "\nits log {} is empty".format(logfile or "(none)")
    return text


def _wait(sv, specs, timeout, step, goal):
    """
    Poll supervisord until ``step`` says every process in ``specs`` is done.

    ``step(info)`` returns True (done), False (not yet) or a string (failed,
    with that reason). Returns the final infos by spec; raises
    ``CommandExecutionError`` naming every failed process (or the ones that
    were not done when ``timeout`` ran out).
    """
    deadline = time.monotonic() + timeout
    while True:
        infos = {_namespec(i): i for i in sv.infos()}
        missing = [s for s in specs if s not in infos]
        if missing:
            raise CommandExecutionError(
                "supervisord on {} no longer knows {} (removed while waiting "
                "for {})".format(sv.path, ", ".join(missing), goal)
            )
        verdicts = {s: step(infos[s]) for s in specs}
        failed = [s for s, v in verdicts.items() if isinstance(v, str)]
        if failed:
            raise CommandExecutionError(
                "\n".join(_failure(sv, infos[s], verdicts[s]) for s in failed)
            )
        if all(v is True for v in verdicts.values()):
            return infos
        if time.monotonic() >= deadline:
            late = [s for s, v in verdicts.items() if v is not True]
            raise CommandExecutionError(
                "\n".join(
                    _failure(
                        sv, infos[s], "did not reach {} within {} s".format(goal, timeout)
                    )
                    for s in late
                )
            )
        time.sleep(POLL_INTERVAL)


def _ask(sv, method, spec, moot, asked):
    """
    Ask supervisord to start or stop one process, without waiting, and note
    it in ``asked``. A step verdict: False (keep polling; also when the fault
    ``moot`` says there is nothing to do) or the reason supervisord refused.
    """
    try:
        sv.call(method, spec, False)
    except xmlrpc.client.Fault as exc:
        if exc.faultCode == moot:
            return False
        if exc.faultCode == _BAD_NAME:
            raise sv.unknown(spec)
        return "supervisord could not {} it: {}".format(
            method[: -len("Process")], exc.faultString
        )
    asked.add(spec)
    return False


def _listening(pid, port):
    """Whether process ``pid`` or one of its children listens on TCP ``port``."""
    try:
        proc = psutil.Process(pid)
        procs = [proc] + proc.children(recursive=True)
        for one in procs:
            # net_connections: psutil >= 6; connections: older releases
            conns = getattr(one, "net_connections", None) or one.connections
            if any(
                c.status == psutil.CONN_LISTEN and c.laddr and c.laddr[1] == port
                for c in conns(kind="tcp")
            ):
                return True
    except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
        pass
    return False


def _start(sv, targets, timeout, ready_port=None):
    """
    Start the processes ``targets`` (infos) and wait until each is RUNNING,
    which supervisord grants once a process has stayed up for its startsecs,
    or, with ``ready_port``, until it listens on that port.

    A process we started that leaves STARTING for anything but RUNNING
    (BACKOFF, EXITED, FATAL) has failed, as for ``supervisorctl start``. A
    process supervisord was already starting (autostart after an update, a
    retry in BACKOFF) is left to finish: it fails when it ends FATAL.
    """
    specs = [_namespec(i) for i in targets]
    started = set()

    def step(info):
        spec = _namespec(info)
        state = info["statename"]
        if state == "RUNNING":
            return True
        if state == "STARTING":
            return bool(ready_port and info["pid"] and _listening(info["pid"], ready_port))
        if state == "BACKOFF":
            return "start failed" if spec in started else False
        if state == "STOPPING":
            return False  # start it once it has stopped
        if spec in started or state == "UNKNOWN":
            return "start failed"
        # STOPPED, EXITED, FATAL: start it
        return _ask(sv, "startProcess", spec, _ALREADY_STARTED, started)

    return _wait(sv, specs, timeout, step, "RUNNING")


def _stop(sv, targets, timeout):
    """Stop the processes ``targets`` (infos) and wait until none runs."""
    specs = [_namespec(i) for i in targets]
    asked = set()

    def step(info):
        spec = _namespec(info)
        state = info["statename"]
        if state in _STOPPED_STATES:
            return True
        if state in ("STOPPING", "UNKNOWN") or spec in asked:
            return False
        # NOT_RUNNING: it stopped on its own; the next poll says so
        return _ask(sv, "stopProcess", spec, _NOT_RUNNING, asked)

    return _wait(sv, specs, timeout, step, "STOPPED")


def _act(name, socket, timeout, *steps):
    """
    Run ``steps`` (``_stop``, ``_start``) in turn on the processes ``name``
    selects; returns {spec: {"old": {state, pid}, "new": {state, pid}}}.
    """
    sv = _Supervisord(socket)
    targets = sv.select(name)
    before = {_namespec(i): i for i in targets}
    for step in steps:
        infos = step(sv, targets, timeout)
        targets = [infos[spec] for spec in before]
    return {
        spec: {"old": _brief(before[spec]), "new": _brief(info)}
        for spec, info in zip(before, targets)
    }


# --- public functions -------------------------------------------------------


def status(name=None, socket=None):
    """
    Status of supervisord's processes, as data.

    Returns a dict keyed by process name (``NAME`` for a program with one
    process, ``GROUP:PROCESS`` otherwise) whose values hold ``state``
    (``RUNNING``, ``STOPPED``, ``STARTING``, ``BACKOFF``, ``STOPPING``,
    ``EXITED``, ``FATAL``, ``UNKNOWN``), ``pid`` (None when not running),
    ``uptime`` (seconds, 0 when not running), ``exitstatus``, ``group``,
    ``name``, ``description`` (what ``supervisorctl status`` prints),
    ``spawnerr``, ``stdout_logfile`` and ``stderr_logfile``.

    name
        Only these processes: ``PROGRAM``, ``GROUP:``, ``GROUP:*`` or
        ``GROUP:PROCESS``. Unknown names raise an error.

    socket
        Path of supervisord's unix socket (default: see the module doc).

    CLI Example:

    .. code-block:: bash

        salt '*' supervisor_rpc.status
        salt '*' supervisor_rpc.status jupyter
        salt '*' supervisor_rpc.status 'workers:*' socket=/run/supervisor.sock
    """
    sv = _Supervisord(socket)
    infos = sv.infos() if name is None else sv.select(name)
    return {_namespec(info): _describe(info) for info in infos}


def reread(socket=None):
    """
    Make supervisord read its configuration again and say which process
    groups differ from what runs. Nothing is started, stopped, added or
    removed (that is :py:func:`update`).

    Returns ``{"added": [...], "changed": [...], "removed": [...]}`` (group
    names, sorted).

    CLI Example:

    .. code-block:: bash

        salt '*' supervisor_rpc.reread
    """
    sv = _Supervisord(socket)
    return _reread(sv)


def _reread(sv):
    try:
        added, changed, removed = sv.call("reloadConfig")[0]
    except xmlrpc.client.Fault as exc:
        if exc.faultCode == _CANT_REREAD:
            raise CommandExecutionError(
                "supervisord on {} cannot read its configuration: {}".format(
                    sv.path, exc.faultString
                )
            )
        raise sv.fault(exc, "reread its configuration")
    return {
        "added": sorted(added),
        "changed": sorted(changed),
        "removed": sorted(removed),
    }


def update(name, socket=None, timeout=60):
    """
    Apply the configuration supervisord reads now to one process group only,
    as ``supervisorctl update NAME`` does: a removed group is stopped and
    removed, a changed group is stopped, removed and added again (so it
    restarts if it autostarts), an added group is added. Other groups are
    never touched.

    name
        The group: ``PROGRAM``, ``GROUP``, ``GROUP:`` or ``GROUP:*``.

    timeout
        Seconds to wait for the group's processes to stop.

    Returns what was done, in the shape of :py:func:`reread`, restricted to
    this group: e.g. ``{"added": [], "changed": ["jupyter"], "removed": []}``;
    all empty when the group was already up to date. A group neither running
    nor configured raises an error.

    CLI Example:

    .. code-block:: bash

        salt '*' supervisor_rpc.update jupyter
    """
    sv = _Supervisord(socket)
    group = _group_name(name)
    diff = _reread(sv)
    done = {"added": [], "changed": [], "removed": []}
    if group in diff["removed"] or group in diff["changed"]:
        members = sv.select(group + ":*")
        try:
            _stop(sv, members, timeout)
        except CommandExecutionError as exc:
            raise CommandExecutionError(
                "not updating group {}: it did not stop\n{}".format(group, exc)
            )
        _group_call(sv, "removeProcessGroup", group)
        if group in diff["changed"]:
            _group_call(sv, "addProcessGroup", group)
            done["changed"].append(group)
        else:
            done["removed"].append(group)
    elif group in diff["added"]:
        _group_call(sv, "addProcessGroup", group)
        done["added"].append(group)
    elif not any(info["group"] == group for info in sv.infos()):
        raise sv.unknown(group)
    return done


def _group_call(sv, method, group):
    try:
        sv.call(method, group)
    except xmlrpc.client.Fault as exc:
        raise sv.fault(exc, "{} {}".format(method, group), group)


def start(name, timeout=60, socket=None, ready_port=None):
    """
    Start a program (or every process of a group) and wait until it is
    RUNNING, i.e. has stayed up for its ``startsecs``. Processes already
    RUNNING are left alone.

    name
        ``PROGRAM``, ``GROUP:``, ``GROUP:*`` or ``GROUP:PROCESS``.

    timeout
        Seconds to wait for RUNNING.

    ready_port
        A TCP port: a process listening on it counts as started even while
        supervisord still says STARTING (see the module doc).

    Returns ``{process: {"old": {"state", "pid"}, "new": {"state", "pid"}}}``
    for every selected process. If one does not get to RUNNING (it ends in
    BACKOFF, EXITED or FATAL, or the timeout runs out) raises
    ``CommandExecutionError`` with its state and the tail of its stderr log.

    CLI Example:

    .. code-block:: bash

        salt '*' supervisor_rpc.start jupyter
        salt '*' supervisor_rpc.start 'workers:*' timeout=120
        salt '*' supervisor_rpc.start jupyter ready_port=8888
    """
    return _act(name, socket, timeout, functools.partial(_start, ready_port=ready_port))


def stop(name, timeout=60, socket=None):
    """
    Stop a program (or every process of a group) and wait until it is no
    longer running. Processes already stopped are left alone.

    name
        ``PROGRAM``, ``GROUP:``, ``GROUP:*`` or ``GROUP:PROCESS``.

    timeout
        Seconds to wait. supervisord itself sends SIGKILL after the program's
        ``stopwaitsecs``; a process still STOPPING when ``timeout`` runs out is
        reported as a failed stop.

    Returns ``{process: {"old": {"state", "pid"}, "new": {"state", "pid"}}}``;
    raises ``CommandExecutionError`` (state and stderr tail) when a stop fails.

    CLI Example:

    .. code-block:: bash

        salt '*' supervisor_rpc.stop jupyter
    """
    return _act(name, socket, timeout, _stop)


def restart(name, timeout=60, socket=None, ready_port=None):
    """
    Stop, then start a program (or every process of a group), waiting for
    each step as :py:func:`stop` and :py:func:`start` do (``timeout`` and
    ``ready_port`` apply as there; ``timeout`` to each step). A stopped
    program is simply started. Only the named processes
    are touched; supervisord itself is never restarted.

    Returns ``{process: {"old": {"state", "pid"}, "new": {"state", "pid"}}}``
    (old: before the stop, new: after the start).

    CLI Example:

    .. code-block:: bash

        salt '*' supervisor_rpc.restart jupyter
    """
    return _act(name, socket, timeout, _stop, functools.partial(_start, ready_port=ready_port))


def tail(name, stream="stderr", length=2000, socket=None):
    """
    The last ``length`` bytes of a program's stdout or stderr log, as text.
    For a program with ``redirect_stderr = true`` the stderr stream is read
    from its stdout log (where its stderr goes). A group with several
    processes gives each one's tail under a ``==> NAME <==`` header.

    stream
        ``stderr`` (default) or ``stdout``.

    CLI Example:

    .. code-block:: bash

        salt '*' supervisor_rpc.tail jupyter
        salt '*' supervisor_rpc.tail jupyter stream=stdout length=10000
    """
    if stream not in ("stdout", "stderr"):
        raise CommandExecutionError(
            "stream must be 'stdout' or 'stderr', not {!r}".format(stream)
        )
    sv = _Supervisord(socket)
    targets = sv.select(name)
    if len(targets) == 1:
        return sv.tail(targets[0], stream, length)
    return "".join(
        "==> {} <==\n{}\n".format(_namespec(i), sv.tail(i, stream, length))
        for i in targets
    )


def state(socket=None):
    """
    supervisord's own state and version.

    Returns ``{"state": "RUNNING", "version": "4.2.5", "api_version": "3.0",
    "identification": "supervisor", "pid": 1234, "socket": PATH}``.

    CLI Example:

    .. code-block:: bash

        salt '*' supervisor_rpc.state
    """
    sv = _Supervisord(socket)
    try:
        daemon = sv.call("getState")
        return {
            "state": daemon["statename"],
            "version": sv.call("getSupervisorVersion"),
            "api_version": sv.call("getAPIVersion"),
            "identification": sv.call("getIdentification"),
            "pid": sv.call("getPID"),
            "socket": sv.path,
        }
    except xmlrpc.client.Fault as exc:
        raise sv.fault(exc, "report its state")
