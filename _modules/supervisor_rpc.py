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
    a process counts as started once it (itself or a child) listens on that
    TCP port, and not before, whatever supervisord says: sooner than RUNNING
    for a server that is quick to open its port, later for one still
    importing after its ``startsecs`` (eight Jupyter servers starting at once
    on two cores). A crash after that is supervisord's to retry.

Stale instances
    A program whose supervisord died hard (SIGKILL, OOM killer) lives on,
    orphaned, holding its port; the next supervisord cannot start it there.
    With ``ready_port``, :py:func:`start` and :py:func:`restart` look at who
    holds that port before starting a process that is not RUNNING, and again
    after a start failed. A holder is a stale instance of the program (a
    "twin") only when all of these hold:

    - it is not the process supervisord runs for the program now (nor one of
      its children);
    - its environment has ``SUPERVISOR_PROCESS_NAME`` and
      ``SUPERVISOR_GROUP_NAME`` of this program, and ``SUPERVISOR_SERVER_URL``
      naming this supervisord's socket (or the program's ``serverurl``);
    - its command line is the program's configured command, or the part of it
      after the last ``--`` (wrappers that exec the real command, such as
      ``systemd-run --scope ... -- setpriv ... -- jupyter-lab ...``); for a
      script, as the kernel shows it: the ``#!`` interpreter, then the script.

    A twin is stopped as supervisord stops a program (its process group: the
    program's ``stopsignal``, ``stopwaitsecs``, then SIGKILL) and the program
    is started; the result names it under ``stale``. Any other holder is never
    touched: a start that then fails says who holds the port (pid, user,
    command). :py:func:`port_holders` shows the verdict without acting.

Failures (supervisord down, unknown program, a start or stop that did not get
where it should) raise ``CommandExecutionError`` with a message that says what
happened; never a made-up status.
"""

import http.client
import logging
import os
import shlex
import shutil
import signal
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
# after SIGKILL, and for the port to be free once its holder is gone
KILL_GRACE = 10
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


# --- stale instances (see the module doc) ------------------------------------


def _gone(proc):
    """Whether a psutil process has ended (a zombie holds no port any more)."""
    try:
        # is_running() is False too when the pid now names another process
        return not proc.is_running() or proc.status() == psutil.STATUS_ZOMBIE
    except (psutil.NoSuchProcess, psutil.ZombieProcess):
        return True
    except psutil.AccessDenied:
        return False


def _tree(pid):
    """pid and its descendants; empty for no pid or a process that is gone."""
    if not pid:
        return set()
    try:
        proc = psutil.Process(pid)
        return {pid} | {child.pid for child in proc.children(recursive=True)}
    except (psutil.NoSuchProcess, psutil.ZombieProcess):
        return set()


def _listeners(port):
    """pids listening on TCP ``port`` (any address, v4 or v6); None: not visible."""
    return {
        conn.pid
        for conn in psutil.net_connections(kind="tcp")
        if conn.status == psutil.CONN_LISTEN and conn.laddr and conn.laddr[1] == port
    }


def _shebang(filename):
    """The interpreter argv of a ``#!`` script, as the kernel builds it, or None."""
    try:
        with open(filename, "rb") as f:
            line = f.readline(256)
    except OSError:
        return None
    if not line.startswith(b"#!"):
        return None
    # the kernel: interpreter up to the first blank, the rest is ONE argument
    interp, _, arg = line[2:].strip().decode(errors="replace").partition(" ")
    interp, arg = interp.strip(), arg.strip()
    if not interp:
        return None
    return [interp, arg] if arg else [interp]


def _exec_views(argv, path):
    """
    The command lines that exec of ``argv`` leaves in /proc: argv itself and,
    for a script, its interpreter (``#!``) followed by the script's file name.
    ``path`` is the PATH the program name is looked up in.
    """
    views = [argv]
    filename = argv[0] if "/" in argv[0] else shutil.which(argv[0], path=path)
    interp = _shebang(filename) if filename and os.path.isabs(filename) else None
    if interp:
        views.append(interp + [filename] + argv[1:])
        if os.path.basename(interp[0]) == "env" and len(interp) == 2:
            # `#!/usr/bin/env python3`: env execs python3 in its turn
            views.append([interp[1], filename] + argv[1:])
    return views


def _command_views(command, path):
    """Command lines a process started for ``command`` can have (module doc)."""
    try:
        argv = shlex.split(command)
    except ValueError:
        return []
    if not argv:
        return []
    forms = [argv]
    if "--" in argv:
        after = argv[len(argv) - argv[::-1].index("--"):]
        if after:
            forms.append(after)
    return [view for form in forms for view in _exec_views(form, path)]


def _server_urls(sv, config):
    """The SUPERVISOR_SERVER_URL values that name this supervisord."""
    urls = {"unix://" + sv.path, "unix://" + os.path.realpath(sv.path)}
    if config.get("serverurl") not in (None, "", "none", "auto"):
        urls.add(config["serverurl"])
    return urls


def _same_server(url, urls):
    if url in urls:
        return True
    # /var/run/supervisor.sock and /run/supervisor.sock are one socket
    return bool(url and url.startswith("unix://")) and "unix://" + os.path.realpath(
        url[len("unix://"):]
    ) in urls


def _twin_verdict(sv, holder, config):
    """None when ``holder`` is a stale instance of ``config``'s process, else why not."""
    env = holder["environ"]
    if env is None:
        return "its environment cannot be read"
    spec = _namespec(config)
    for key, wanted in (
        ("SUPERVISOR_PROCESS_NAME", config["name"]),
        ("SUPERVISOR_GROUP_NAME", config["group"]),
    ):
        if env.get(key) != wanted:
            return "its {} is {!r}, not {!r} ({})".format(key, env.get(key), wanted, spec)
    url = env.get("SUPERVISOR_SERVER_URL")
    if not _same_server(url, _server_urls(sv, config)):
        return "its SUPERVISOR_SERVER_URL {!r} is not this supervisord ({})".format(
            url, sv.path
        )
    if holder["cmdline"] not in _command_views(config["command"], env.get("PATH")):
        return "its command line is not {}'s command {!r}".format(spec, config["command"])
    return None


def _holder(pid):
    """What is known of a listening process: pid, user, command line, environment."""
    found = {"pid": pid, "user": None, "cmdline": None, "environ": None}
    if pid is None:
        return found
    try:
        proc = psutil.Process(pid)
        found["proc"] = proc
        with proc.oneshot():
            found["user"] = proc.username()
            found["cmdline"] = proc.cmdline()
            found["environ"] = proc.environ()
    except (psutil.NoSuchProcess, psutil.ZombieProcess):
        return None
    except psutil.AccessDenied:
        pass
    return found


def _holder_text(holder):
    if holder["pid"] is None:
        return "a process this user cannot see"
    return "pid {} (user {}): {}".format(
        holder["pid"],
        holder["user"] or "unknown",
        shlex.join(holder["cmdline"]) if holder["cmdline"] else "(command unknown)",
    )


def _configs(sv, infos):
    """The configuration (``getAllConfigInfo``) of each of ``infos``, by spec."""
    try:
        every = sv.call("getAllConfigInfo")
    except xmlrpc.client.Fault as exc:
        raise sv.fault(exc, "report its program configuration")
    wanted = {_namespec(i) for i in infos}
    return {_namespec(c): c for c in every if _namespec(c) in wanted}


def _port_holders(sv, infos, port):
    """
    Who listens on ``port`` besides the processes ``infos`` (and their
    children): ``[{pid, user, cmdline, environ, twin_of, why}]``; ``twin_of``
    is the spec of the process it is a stale instance of, else None and
    ``why`` says why not.
    """
    specs = {_namespec(i) for i in infos}
    ours = set()
    for info in sv.infos():  # fresh pids: the ones in ``infos`` may be old
        if _namespec(info) in specs:
            ours |= _tree(info["pid"])
    pids = _listeners(port) - ours
    if not pids:
        return []
    configs = _configs(sv, infos)
    holders = []
    for pid in sorted(pids, key=lambda p: (p is None, p)):
        holder = _holder(pid)
        if holder is None:  # ended meanwhile
            continue
        holder["twin_of"], reasons = None, []
        for spec, config in sorted(configs.items()):
            why = _twin_verdict(sv, holder, config) if pid is not None else "unknown pid"
            if why is None:
                holder["twin_of"] = spec
                break
            reasons.append(why)
        holder["why"] = None if holder["twin_of"] else "; ".join(reasons)
        holders.append(holder)
    return holders


def _signal_group(proc, sig):
    """
    Signal the twin's process group, as supervisord does with stopasgroup:
    supervisord made each program a group leader (setpgrp), so the group is
    the program and its children. A process that is not a group leader is
    signalled alone: its group is not ours to judge. Nothing is sent once the
    twin is gone (its pid may name another process by then).
    """
    if _gone(proc):
        return
    pid = proc.pid
    try:
        if os.getpgid(pid) == pid:
            os.killpg(pid, sig)
        else:
            os.kill(pid, sig)
    except ProcessLookupError:
        pass


def _wait_gone(procs, timeout):
    deadline = time.monotonic() + timeout
    while True:
        alive = [p for p in procs if not _gone(p)]
        if not alive or time.monotonic() >= deadline:
            return alive
        time.sleep(POLL_INTERVAL)


def _stop_twins(sv, twins, port, configs):
    """
    Stop stale instances as supervisord would stop their program: stopsignal
    to the process group, up to stopwaitsecs, then SIGKILL; then wait until
    none of them listens on ``port``. Returns what was stopped.
    """
    stopped = []
    for twin in twins:
        config = configs[twin["twin_of"]]
        proc = twin["proc"]
        sig = signal.Signals(int(config.get("stopsignal") or signal.SIGTERM))
        log.warning(
            "supervisor_rpc: stopping a stale instance of %s holding port %s: %s",
            twin["twin_of"], port, _holder_text(twin),
        )
        _signal_group(proc, sig)
        used = sig.name[3:]
        if _wait_gone([proc], int(config.get("stopwaitsecs") or 10)):
            _signal_group(proc, signal.SIGKILL)
            used = "KILL"
            if _wait_gone([proc], KILL_GRACE):
                raise CommandExecutionError(
                    "could not stop the stale instance of {} on port {}, {}: it "
                    "survived SIGKILL".format(twin["twin_of"], port, _holder_text(twin))
                )
        stopped.append(
            {
                "pid": twin["pid"],
                "user": twin["user"],
                "command": shlex.join(twin["cmdline"]),
                "signal": used,
                "stopped": True,
                "process": twin["twin_of"],
            }
        )
    pids = {t["pid"] for t in twins}
    deadline = time.monotonic() + KILL_GRACE
    while _listeners(port) & pids:
        if time.monotonic() >= deadline:
            raise CommandExecutionError(
                "port {} is still held after stopping the stale instance(s) {} of "
                "{}".format(port, sorted(pids), ", ".join(sorted(configs)))
            )
        time.sleep(POLL_INTERVAL)
    return stopped


def _heal(sv, infos, port, stale):
    """
    Stop every stale instance of ``infos``' processes that holds ``port``
    (added to ``stale``, by spec). Returns the holders left alone.
    """
    holders = _port_holders(sv, infos, port)
    twins = [h for h in holders if h["twin_of"]]
    if twins:
        for record in _stop_twins(sv, twins, port, _configs(sv, infos)):
            stale.setdefault(record.pop("process"), []).append(record)
    return [h for h in holders if not h["twin_of"]]


def _foreign_text(port, foreign):
    return "port {} is held by {}, not an instance of this program: left alone".format(
        port,
        "; ".join(
            "{} ({})".format(_holder_text(h), h["why"]) for h in foreign
        ),
    )


# --- start and stop ------------------------------------------------------------


def _start(sv, targets, timeout, ready_port=None, stale=None, wait=True):
    """
    Start the processes ``targets`` (infos) and wait until each is RUNNING,
    which supervisord grants once a process has stayed up for its startsecs,
    or, with ``ready_port``, until it listens on that port (whatever
    supervisord says: sooner or later than RUNNING).

    A process we started that leaves STARTING for anything but RUNNING
    (BACKOFF, EXITED, FATAL) has failed, as for ``supervisorctl start``. A
    process supervisord was already starting (autostart after an update, a
    retry in BACKOFF) is left to finish: it fails when it ends FATAL.

    With ``ready_port``, stale instances holding it are stopped first, and
    once more after a failed start (see the module doc); ``stale`` collects
    them by spec.

    ``wait=False``: done once each process is STARTING (a caller waits for them all
    together later, e.g. several programs starting at once).
    """
    specs = [_namespec(i) for i in targets]
    started = set()
    healed_after_failure = set()
    stale = {} if stale is None else stale
    if ready_port:
        waiting = [i for i in targets if i["statename"] != "RUNNING"]
        if waiting:
            _heal(sv, waiting, ready_port, stale)

    def failed(info):
        """The reason a start failed, or False when a stale instance was removed."""
        spec = _namespec(info)
        if not ready_port:
            return "start failed"
        if spec not in healed_after_failure:
            healed_after_failure.add(spec)
            before = len(stale.get(spec, ()))
            foreign = _heal(sv, [info], ready_port, stale)
            if len(stale.get(spec, ())) > before:
                started.discard(spec)  # start it again, now that the port is free
                return False
        else:
            foreign = [h for h in _port_holders(sv, [info], ready_port) if not h["twin_of"]]
        if foreign:
            return "start failed: " + _foreign_text(ready_port, foreign)
        return "start failed"

    def up(info):
        # RUNNING only says it outlived its startsecs: a server importing on a busy host
        # can take longer than that to open its port
        if ready_port:
            return bool(info["pid"]) and _listening(info["pid"], ready_port)
        return info["statename"] == "RUNNING"

    def step(info):
        spec = _namespec(info)
        state = info["statename"]
        if state in ("RUNNING", "STARTING"):
            return not wait or up(info)
        if state == "BACKOFF":
            return failed(info) if spec in started else False
        if state == "STOPPING":
            return False  # start it once it has stopped
        if spec in started or state == "UNKNOWN":
            return failed(info)
        # STOPPED, EXITED, FATAL: start it
        return _ask(sv, "startProcess", spec, _ALREADY_STARTED, started)

    goal = "listening on port {}".format(ready_port) if ready_port and wait else "RUNNING"
    return _wait(sv, specs, timeout, step, goal)


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


def _act(name, socket, timeout, stop=False, start=False, ready_port=None, wait=True):
    """
    Stop and/or start the processes ``name`` selects; returns
    {spec: {"old": {state, pid}, "new": {state, pid}}}, plus "stale": [...]
    for a process whose stale instances were stopped.
    """
    sv = _Supervisord(socket)
    targets = sv.select(name)
    before = {_namespec(i): i for i in targets}
    stale = {}
    if stop:
        infos = _stop(sv, targets, timeout)
        targets = [infos[spec] for spec in before]
    if start:
        infos = _start(sv, targets, timeout, ready_port, stale, wait)
        targets = [infos[spec] for spec in before]
    result = {
        spec: {"old": _brief(before[spec]), "new": _brief(info)}
        for spec, info in zip(before, targets)
    }
    for spec, records in stale.items():
        result[spec]["stale"] = records
    return result


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


def start(name, timeout=60, socket=None, ready_port=None, wait=True):
    """
    Start a program (or every process of a group) and wait until it is
    RUNNING, i.e. has stayed up for its ``startsecs``. Processes already
    RUNNING are left alone.

    name
        ``PROGRAM``, ``GROUP:``, ``GROUP:*`` or ``GROUP:PROCESS``.

    timeout
        Seconds to wait for RUNNING (or ``ready_port``).

    ready_port
        A TCP port: a process counts as started once it listens there, even
        while supervisord still says STARTING, and not before, even when
        supervisord already says RUNNING; a process already RUNNING is
        waited for too (it may not listen yet). A stale instance of the
        program holding the port is stopped first (see the module doc).

    wait
        False: return as soon as each process is STARTING (to wait for several
        programs together afterwards, with ``start`` again).

    Returns ``{process: {"old": {"state", "pid"}, "new": {"state", "pid"}}}``
    for every selected process, with ``"stale": [{"pid", "user", "command",
    "signal", "stopped"}]`` for a process whose stale instances were stopped.
    If one does not get to RUNNING (it ends in BACKOFF, EXITED or FATAL, or
    the timeout runs out) raises ``CommandExecutionError`` with its state,
    the tail of its stderr log, and who else holds ``ready_port``.

    CLI Example:

    .. code-block:: bash

        salt '*' supervisor_rpc.start jupyter
        salt '*' supervisor_rpc.start 'workers:*' timeout=120
        salt '*' supervisor_rpc.start jupyter ready_port=8888
    """
    return _act(name, socket, timeout, start=True, ready_port=ready_port, wait=wait)


def port_holders(name, port, socket=None):
    """
    Who listens on TCP ``port`` besides the processes ``name`` selects (and
    their children), and whether each is a stale instance of one of them (the
    rules are in the module doc). Nothing is stopped: this is what
    :py:func:`start` with ``ready_port`` would find.

    name
        ``PROGRAM``, ``GROUP:``, ``GROUP:*`` or ``GROUP:PROCESS``.

    port
        The TCP port (the program's ``ready_port``).

    Returns a list, empty when nobody else listens there, of ``{"pid",
    "user", "command", "stale", "process", "reason"}``: ``stale`` is True for
    a stale instance of process ``process``; otherwise ``reason`` says why the
    holder is not one (``pid`` is None for a process this user cannot see).

    CLI Example:

    .. code-block:: bash

        salt '*' supervisor_rpc.port_holders jupyter 8888
    """
    try:
        port = int(port)
    except (TypeError, ValueError):
        raise CommandExecutionError("port must be a TCP port number, not {!r}".format(port))
    sv = _Supervisord(socket)
    return [
        {
            "pid": h["pid"],
            "user": h["user"],
            "command": shlex.join(h["cmdline"]) if h["cmdline"] else None,
            "stale": bool(h["twin_of"]),
            "process": h["twin_of"],
            "reason": h["why"],
        }
        for h in _port_holders(sv, sv.select(name), port)
    ]


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
    return _act(name, socket, timeout, stop=True)


def restart(name, timeout=60, socket=None, ready_port=None, wait=True):
    """
    Stop, then start a program (or every process of a group), waiting for
    each step as :py:func:`stop` and :py:func:`start` do (``timeout``,
    ``ready_port`` and ``wait`` apply as there; ``timeout`` to each step). A stopped
    program is simply started. Only the named processes
    are touched; supervisord itself is never restarted.

    Returns ``{process: {"old": {"state", "pid"}, "new": {"state", "pid"}}}``
    (old: before the stop, new: after the start; ``stale`` as for
    :py:func:`start`).

    CLI Example:

    .. code-block:: bash

        salt '*' supervisor_rpc.restart jupyter
    """
    return _act(name, socket, timeout, stop=True, start=True, ready_port=ready_port, wait=wait)


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
