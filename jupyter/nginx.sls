#!py
"""nginx in front of the Jupyter servers: the sites (websockets, optional TLS), tested in
the full configuration before they are kept, then a reload (never a restart)."""

from salt.exceptions import SaltInvocationError


def run():
    try:
        s = __salt__["jupyter.settings"]()
    except SaltInvocationError:
        return {"include": ["jupyter.invalid_pillar"]}
    n = s["nginx"]
    return {
        "jupyter-nginx-package": {"pkg.installed": [{"name": n["package"]}]},
        # every site file, link and TLS file, one transaction: kept only when `nginx -t`
        # passes on the whole configuration; `nginx -t` on every run
        "jupyter-nginx-site": {
            "jupyter_nginx.sites": [{"name": "nginx"}, {"require": [{"pkg": "jupyter-nginx-package"}]}]
        },
        # reload, never restart: open websockets and other sites keep their connections
        "jupyter-nginx-service": {
            "jupyter_service.running": [
                {"name": n["service"]},
                {"enable": True},
                {"reload": True},
                {"require": [{"jupyter_nginx": "jupyter-nginx-site"}]},
                {"watch": [{"jupyter_nginx": "jupyter-nginx-site"}]},
            ]
        },
    }
