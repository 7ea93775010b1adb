#!py
"""supervisord, and the Jupyter program under it."""

from salt.exceptions import SaltInvocationError


def run():
    try:
        s = __salt__["jupyter.settings"]()
    except SaltInvocationError as exc:  # a bad pillar: fail before anything changes
        return {"jupyter-supervisor-pillar": {"jupyter_config.invalid_pillar": [{"comment": str(exc)}]}}
    sup = s["supervisor"]
    program_file = sup["conf_dir"] + "/" + sup["program"] + sup["conf_ext"]
    return {
        "include": ["jupyter.package", "jupyter.config"],
        "jupyter-supervisor-package": {"pkg.installed": [{"name": sup["package"]}]},
        "jupyter-supervisor-service": {
            "jupyter_service.running": [
                {"name": sup["service"]},
                {"enable": True},
                {"require": [{"pkg": "jupyter-supervisor-package"}]},
            ]
        },
        "jupyter-supervisor-log-dir": {
            "file.directory": [{"name": sup["log_dir"]}, {"mode": "0750"}, {"makedirs": True}]
        },
        "jupyter-supervisor-program-file": {
            "file.managed": [
                {"name": program_file},
                {"source": "salt://jupyter/files/supervisor-program.conf.jinja"},
                {"template": "jinja"},
                {"context": {"s": s}},
                {"mode": "0644"},
                {"require": [{"pkg": "jupyter-supervisor-package"}]},
            ]
        },
        # A changed program file: `running` rereads and updates this program"s group only.
        # Packages or config changed: mod_watch restarts this program only, once.
        "jupyter-supervisor-program": {
            "supervisor_program.running": [
                {"name": sup["program"]},
                {"socket": sup["socket"]},
                {"timeout": sup["startsecs"] + 60},
                # Jupyter opens its port last: up then, not only after startsecs
                {"ready_port": s["server"]["port"]},
                {
                    "require": [
                        {"jupyter_service": "jupyter-supervisor-service"},
                        {"file": "jupyter-supervisor-log-dir"},
                        {"file": "jupyter-package-root-dir"},
                    ]
                },
                {
                    "watch": [
                        {"file": "jupyter-supervisor-program-file"},
                        {"pip": "jupyter-package-pip"},
                        {"virtualenv": "jupyter-package-venv"},
                        {"jupyter_config": "jupyter-config-file"},
                    ]
                },
            ]
        },
    }
