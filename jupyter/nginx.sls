#!py
"""nginx in front of Jupyter: the site (websockets, optional TLS), validated, then reloaded."""

from salt.exceptions import SaltInvocationError


def tls_files(s):
    """Certificate and key from pillar contents: contents_pillar keeps them out of state data."""
    tls = s["nginx"]["tls"]
    if not tls or not tls["manage_files"]:
        return {}
    states = {}
    for kind, mode in (("certificate", "0644"), ("certificate_key", "0600")):
        if not tls[f"{kind}_pem"]:  # this one is a path to a file managed elsewhere
            continue
        states[f"jupyter-nginx-tls-{kind.replace('_', '-')}"] = {
            "file.managed": [
                {"name": tls[kind]},
                {"contents_pillar": f"jupyter:nginx:tls:{kind}_pem"},
                {"mode": mode},
                {"user": "root"},
                {"group": "root"},
                {"makedirs": True},
                {"show_changes": False},
            ]
        }
    return states


def run():
    try:
        s = __salt__["jupyter.settings"]()
    except SaltInvocationError as exc:  # a bad pillar: fail before anything changes
        return {"jupyter-nginx-pillar": {"jupyter_config.invalid_pillar": [{"comment": str(exc)}]}}
    n = s["nginx"]
    site = f"{n['sites_available']}/{n['site']}.conf"
    tls_states = tls_files(s)
    tls_requisites = [{"file": sid} for sid in tls_states]
    checker = "/usr/local/sbin/jupyter-nginx-check-site"
    states = {
        "jupyter-nginx-package": {"pkg.installed": [{"name": n["package"]}]},
        "jupyter-nginx-site-checker": {
            "file.managed": [
                {"name": checker},
                {"source": "salt://jupyter/files/nginx-check-site.sh.jinja"},
                {"template": "jinja"},
                {"context": {"modules_include": n["modules_include"]}},
                {"mode": "0755"},
            ]
        },
        **tls_states,
        # check_cmd: the candidate is tested alone before it replaces the live site
        "jupyter-nginx-site": {
            "file.managed": [
                {"name": site},
                {"source": "salt://jupyter/files/nginx-site.conf.jinja"},
                {"template": "jinja"},
                {"context": {"s": s}},
                {"mode": "0644"},
                {"check_cmd": checker},
                {"require": [{"pkg": "jupyter-nginx-package"}, {"file": "jupyter-nginx-site-checker"}]
                 + tls_requisites},
            ]
        },
    }
    watched = [{"file": "jupyter-nginx-site"}] + tls_requisites
    if n["sites_enabled"]:
        states["jupyter-nginx-site-enabled"] = {
            "file.symlink": [
                {"name": f"{n['sites_enabled']}/{n['site']}.conf"},
                {"target": site},
                {"require": [{"file": "jupyter-nginx-site"}]},
            ]
        }
        watched.append({"file": "jupyter-nginx-site-enabled"})
    if n["default_server"] and n["distro_default_site"]:
        # the distribution's catch-all site would claim default_server too
        states["jupyter-nginx-distro-default-site"] = {
            "file.absent": [
                {"name": n["distro_default_site"]},
                {"require": [{"pkg": "jupyter-nginx-package"}]},
            ]
        }
        watched.append({"file": "jupyter-nginx-distro-default-site"})
    states["jupyter-nginx-config-test"] = {
        "cmd.run": [{"name": "nginx -t"}, {"onchanges": watched}]
    }
    # reload, never restart: open websockets and other sites keep their connections
    states["jupyter-nginx-service"] = {
        "jupyter_service.running": [
            {"name": n["service"]},
            {"enable": True},
            {"reload": True},
            {"require": [{"pkg": "jupyter-nginx-package"}, {"cmd": "jupyter-nginx-config-test"}]},
            {"watch": watched},
        ]
    }
    return states
