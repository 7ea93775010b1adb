#!py
"""The jupyter_server config: pillar settings, proxy settings and the password hash."""

from salt.exceptions import SaltInvocationError


def server_config(s):
    """Traitlets for a server behind nginx; pillar `config` merged over them."""
    server = s["server"]
    behind_tls = bool(s["nginx"]["tls"])
    config = {
        "ServerApp": {
            "ip": server["ip"],
            "port": server["port"],
            "port_retries": 0,  # a busy port must fail, not move where nginx cannot find it
            "base_url": server["base_url"],
            "root_dir": s["root_dir"],
            "open_browser": False,
            "allow_remote_access": True,  # requests arrive through nginx with the public Host
            "trust_xheaders": True,  # client address and scheme from nginx"s X- headers
            "allow_root": False,
        },
        "IdentityProvider": {"token": ""},  # password login only
        "PasswordIdentityProvider": {
            "password_required": True,
            "allow_password_change": False,  # the password belongs to pillar
        },
    }
    if behind_tls:
        config["IdentityProvider"]["cookie_options"] = {"secure": True, "samesite": "Lax"}
        # the _xsrf cookie too (jupyter_server's own default for it is the path only)
        config["ServerApp"]["tornado_settings"] = {
            "xsrf_cookie_kwargs": {"path": server["base_url"], "secure": True}
        }
    for cls, traits in s["config"].items():
        config.setdefault(cls, {}).update(traits)
    return config


def run():
    try:
        s = __salt__["jupyter.settings"]()
    except SaltInvocationError as exc:  # a bad pillar: fail before anything changes
        return {"jupyter-config-pillar": {"jupyter_config.invalid_pillar": [{"comment": str(exc)}]}}
    config_dir = s["config_file"].rsplit("/", 1)[0]
    return {
        "include": ["jupyter.package"],
        "jupyter-config-dir": {
            "file.directory": [{"name": config_dir}, {"mode": "0755"}, {"makedirs": True}]
        },
        "jupyter-config-file": {
            "jupyter_config.managed": [
                {"name": s["config_file"]},
                {"config": server_config(s)},
                {"python": s["venv"] + "/bin/python"},
                {"user": "root"},
                {"group": s["group"]},
                {"mode": "0640"},
                {
                    "require": [
                        {"file": "jupyter-config-dir"},
                        {"sls": "jupyter.package"},
                    ]
                },
            ]
        },
    }
