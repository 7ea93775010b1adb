#!py
"""Each server's jupyter_server config (jupyter.settings derives it: server_config) and
the password hash, in one JSON file per instance that one state owns."""

from salt.exceptions import SaltInvocationError


def run():
    try:
        s = __salt__["jupyter.settings"]()
    except SaltInvocationError:
        return {"include": ["jupyter.invalid_pillar"]}
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
                {"config": inst["server_config"]},
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
