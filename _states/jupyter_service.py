"""
A service that runs, and reloads when what it watches changes, on any host.

On a host whose PID 1 is systemd this is Salt's own ``service.running`` (enable,
reload on watch). Where PID 1 is not systemd (containers, WSL, build machines) Salt's
``service`` states answer "Running in OFFLINE mode. Nothing to do" and start nothing,
while the execution functions ``service.status``/``start``/``reload`` still work
through the distribution's init scripts: there this state uses those, so that nginx
and supervisord end up running and reloaded on every kind of host.
"""

__virtualname__ = "jupyter_service"


def __virtual__():
    return __virtualname__


def _offline():
    return "service.offline" in __salt__ and bool(__salt__["service.offline"]())


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
    if __opts__["test"]:
        ret.update(result=None, comment=f"{name} would be started")
        return ret
    __salt__["service.start"](name)
    if not __salt__["service.status"](name):
        ret.update(result=False, comment=f"{name} did not start (init script)")
        return ret
    ret.update(changes={name: "started"}, comment=f"Started {name} (init script)")
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
