"""
A service that runs, and reloads when what it watches changes, on any host.

On a host whose PID 1 is systemd this is Salt's own ``service.running`` (enable,
reload on watch). Where PID 1 is not systemd (containers, WSL, build machines) Salt's
``service`` states answer "Running in OFFLINE mode. Nothing to do" and start nothing,
while the execution functions ``service.status``/``start``/``reload`` still work
through the distribution's init scripts: there this state uses those, so that nginx
and supervisord end up running and reloaded on every kind of host.
"""

import time

try:
    import psutil  # a dependency of Salt itself
except ImportError:  # pragma: no cover
    psutil = None

__virtualname__ = "jupyter_service"


def __virtual__():
    return __virtualname__


def _offline():
    return "service.offline" in __salt__ and bool(__salt__["service.offline"]())


def _orphaned_workers(name):
    """The worker processes of NAME's master that died hard (SIGKILL, OOM killer): they
    live on, reparented, and keep the listening sockets, so that a new master cannot
    bind. systemd kills a unit's whole cgroup; an init script does not. Only processes
    titled "NAME: ..." (nginx's workers and cache processes) whose parent is not a live
    "NAME: master process" are taken: never another program's."""
    if psutil is None:
        return []
    orphans = []
    for proc in psutil.process_iter(["pid", "cmdline", "ppid"]):
        title = " ".join(proc.info["cmdline"] or [])
        if not title.startswith(f"{name}: ") or title.startswith(f"{name}: master process"):
            continue
        try:
            parent = " ".join(psutil.Process(proc.info["ppid"]).cmdline())
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            parent = ""
        if not parent.startswith(f"{name}: master process"):
            orphans.append(proc)
    return orphans


def _stop(procs, timeout=5):
    for proc in procs:
        try:
            proc.terminate()
        except psutil.NoSuchProcess:
            pass
    _, alive = psutil.wait_procs(procs, timeout=timeout)
    for proc in alive:
        try:
            proc.kill()
        except psutil.NoSuchProcess:
            pass
    psutil.wait_procs(alive, timeout=timeout)
    time.sleep(0.1)  # the kernel closes their sockets as they are reaped


def running(name, enable=True, reload=False):
    """
    Ensure the service is running (and enabled at boot where systemd manages it).

    .. code-block:: yaml

        nginx:
          jupyter_service.running:
            - reload: True
            - watch:
              - file: /etc/nginx/sites-available/jupyter.conf
    """
    if not _offline():
        return __states__["service.running"](name=name, enable=enable, reload=reload)
    ret = {"name": name, "result": True, "changes": {}, "comment": ""}
    if __salt__["service.status"](name):
        ret["comment"] = f"{name} is running (init script; PID 1 is not systemd)"
        return ret
    orphans = _orphaned_workers(name)
    healed = f"; first stopped {len(orphans)} orphaned process(es) of its dead master" if orphans else ""
    if __opts__["test"]:
        ret.update(result=None, comment=f"{name} would be started{healed}")
        return ret
    if orphans:
        _stop(orphans)
    __salt__["service.start"](name)
    if not __salt__["service.status"](name):
        ret.update(result=False, comment=f"{name} did not start (init script){healed}")
        return ret
    ret.update(changes={name: "started"}, comment=f"Started {name} (init script){healed}")
    if orphans:
        ret["changes"]["orphans_stopped"] = sorted(proc.pid for proc in orphans)
    return ret


def mod_watch(name, sfun=None, enable=True, reload=False, **kwargs):
    """Reload (or restart, when ``reload`` is False) after a watched state changed."""
    if not _offline():
        return __states__["service.mod_watch"](
            name=name, sfun="running", enable=enable, reload=reload, **kwargs
        )
    ret = {"name": name, "result": True, "changes": {}, "comment": ""}
    verb = "reload" if reload else "restart"
    if __opts__["test"]:
        ret.update(result=None, comment=f"{name} would {verb}")
        return ret
    if not __salt__[f"service.{verb}"](name):
        ret.update(result=False, comment=f"{verb} of {name} failed (init script)")
        return ret
    ret.update(changes={name: f"{verb}ed"}, comment=f"{name}: {verb}ed (init script)")
    return ret
