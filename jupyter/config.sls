#!py
"""Each server's jupyter_server config: pillar settings, proxy settings and the password
hash, in one JSON file per instance that one state owns."""

import copy

from salt.exceptions import SaltInvocationError

# settings the formula owns that pillar may extend: deep-merged, the formula's keys win
EXTENDABLE = (("IdentityProvider", "cookie_options"), ("ServerApp", "tornado_settings"))


def _merge(base, extra):
    out = dict(base)
    for key, value in extra.items():
        out[key] = _merge(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


def server_config(inst, single):
    """Traitlets for a server behind nginx; pillar `config` merged over them."""
    server = inst["server"]
    behind_tls = bool(inst["nginx"]["tls"])
    config = {
        "ServerApp": {
            "ip": server["ip"],
            "port": server["port"],
            "port_retries": 0,  # a busy port must fail, not move where nginx cannot find it
            "base_url": server["base_url"],
            "root_dir": inst["root_dir"],
            "open_browser": False,
            "allow_remote_access": True,  # requests arrive through nginx with the public Host
            "trust_xheaders": True,  # client address and scheme from nginx's X- headers
            "allow_root": False,
        },
        "IdentityProvider": {"token": ""},  # password login only
        "PasswordIdentityProvider": {
            "password_required": True,
            "allow_password_change": False,  # the password belongs to pillar
        },
    }
    if not single:
        # instances under one host name: each its own login cookie, not the host's one
        config["IdentityProvider"]["cookie_name"] = f"jupyter-{inst['name']}"
    if behind_tls:
        config["IdentityProvider"]["cookie_options"] = {"secure": True, "samesite": "Lax"}
        # the _xsrf cookie too (jupyter_server's own default for it is the path only)
        config["ServerApp"]["tornado_settings"] = {
            "xsrf_cookie_kwargs": {"path": server["base_url"], "secure": True}
        }
    extra = copy.deepcopy(inst["config"])
    for cls, trait in EXTENDABLE:
        given = (extra.get(cls) or {}).pop(trait, None)
        if given:
            config.setdefault(cls, {})[trait] = _merge(given, config.get(cls, {}).get(trait) or {})
    for cls, traits in extra.items():
        config.setdefault(cls, {}).update(traits)
    return config


def run():
    try:
        s = __salt__["jupyter.settings"]()
    except SaltInvocationError:
        return {"include": ["jupyter.invalid_pillar"]}
    single = s["mode"] == "single"
    states = {"include": ["jupyter.package"]}
    for name, inst in sorted(s["instances"].items()):
        sid = inst["sid"]
        config_dir = inst["config_file"].rsplit("/", 1)[0]
        states.setdefault(f"jupyter-config-dir-{config_dir}", {
            "file.directory": [{"name": config_dir}, {"mode": "0755"}, {"makedirs": True}]
        })
        states[f"jupyter-config-file{sid}"] = {
            "jupyter_config.managed": [
                {"name": inst["config_file"]},
                {"config": server_config(inst, single)},
                {"instance": name},
                # argon2 in this venv's Python when Salt's own has none
                {"python": inst["venv_dir"] + "/bin/python"},
                {"user": "root"},
                {"group": inst["group"]},
                {"mode": "0640"},
                {
                    "require": [
                        {"file": f"jupyter-config-dir-{config_dir}"},
                        {"jupyter_venv": f"jupyter-package-venv-{inst['venv_id']}"},
                        {"file": f"jupyter-package-root-dir{sid}"},
                    ]
                },
            ]
        }
    return states
