#!py
"""supervisord, and each Jupyter program under it (in its instance's slice or cgroup
when pillar gives limits)."""

from salt.exceptions import SaltInvocationError

SYSTEMD_DIR = "/etc/systemd/system"
LIMITS_RUNNER = "/usr/local/libexec/jupyter-formula/jupyter-limits-runner"


def run():
    try:
        s = __salt__["jupyter.settings"]()
    except SaltInvocationError:
        return {"include": ["jupyter.invalid_pillar"]}
    sup = s["supervisor"]
    states = {
        "include": ["jupyter.package", "jupyter.config"],
        "jupyter-supervisor-package": {"pkg.installed": [{"name": sup["package"]}]},
        "jupyter-supervisor-service": {
            "jupyter_service.running": [
                {"name": sup["service"]},
                {"enable": True},
                {"require": [{"pkg": "jupyter-supervisor-package"}]},
            ]
        },
    }
    reload_units = []  # unit files whose change needs a daemon-reload
    if s["systemd"]:
        # supervisord killed hard must not leave Jupyter running as an orphan on its port
        states["jupyter-supervisor-dropin"] = {
            "file.managed": [
                {"name": f"{SYSTEMD_DIR}/{sup['service']}.service.d/jupyter-formula.conf"},
                {"source": "salt://jupyter/files/supervisor-service-dropin.conf"},
                {"mode": "0644"},
                {"makedirs": True},
            ]
        }
        reload_units.append({"file": "jupyter-supervisor-dropin"})
    for log_dir in sorted({inst["supervisor"]["log_dir"] for inst in s["instances"].values()}):
        states[f"jupyter-supervisor-log-dir-{log_dir}"] = {
            "file.directory": [{"name": log_dir}, {"mode": "0750"}, {"makedirs": True}]
        }
    enforcement = {name: inst["limits_enforcement"] or {} for name, inst in s["instances"].items()}
    if any(e.get("cgroup") for e in enforcement.values()):
        states["jupyter-supervisor-limits-runner"] = {
            "file.managed": [
                {"name": LIMITS_RUNNER},
                {"source": "salt://jupyter/files/jupyter-limits-runner.sh"},
                {"mode": "0755"},
                {"makedirs": True},
            ]
        }
    for name, inst in sorted(s["instances"].items()):
        sid, enforced = inst["sid"], enforcement[name]
        program_requires = [{"pkg": "jupyter-supervisor-package"}]
        if enforced.get("slice"):
            states[f"jupyter-supervisor-slice{sid}"] = {
                "file.managed": [
                    {"name": f"{SYSTEMD_DIR}/{enforced['slice']}"},
                    {"source": "salt://jupyter/files/instance.slice.jinja"},
                    {"template": "jinja"},
                    {"context": {"inst": inst}},
                    {"mode": "0644"},
                ]
            }
            reload_units.append({"file": f"jupyter-supervisor-slice{sid}"})
            program_requires.append({"file": f"jupyter-supervisor-slice{sid}"})
        elif enforced.get("cgroup"):
            program_requires.append({"file": "jupyter-supervisor-limits-runner"})
        elif enforced.get("warning"):
            states[f"jupyter-supervisor-limits{sid}"] = {
                "jupyter_config.warning": [{"comment": f"{inst['program']}: {enforced['warning']}"}]
            }
        states[f"jupyter-supervisor-program-file{sid}"] = {
            "file.managed": [
                {"name": inst["program_file"]},
                {"source": "salt://jupyter/files/supervisor-program.conf.jinja"},
                {"template": "jinja"},
                {"context": {"inst": inst, "limits_runner": LIMITS_RUNNER}},
                {"mode": "0640"},  # root reads it; its environment is nobody else's business
                {"require": program_requires},
            ]
        }
        # A changed program file: `running` rereads and updates this program's group only.
        # Venv switched or config changed: mod_watch restarts this program only, once.
        states[f"jupyter-supervisor-program{sid}"] = {
            "supervisor_program.running": [
                {"name": inst["program"]},
                {"socket": sup["socket"]},
                {"timeout": inst["supervisor"]["startsecs"] + 60},
                # Jupyter opens its port last: up then, not only after startsecs
                {"ready_port": inst["server"]["port"]},
                # several instances start side by side: jupyter-supervisor-ready waits
                {"wait": s["mode"] == "single"},
                {
                    "require": [
                        {"jupyter_service": "jupyter-supervisor-service"},
                        {"file": f"jupyter-supervisor-log-dir-{inst['supervisor']['log_dir']}"},
                        {"file": f"jupyter-package-root-dir{sid}"},
                    ]
                    + ([{"cmd": "jupyter-supervisor-systemd-reload"}] if reload_units else [])
                },
                {
                    "watch": [
                        {"file": f"jupyter-supervisor-program-file{sid}"},
                        {"jupyter_venv": f"jupyter-package-venv{sid}"},
                        {"jupyter_config": f"jupyter-config-file{sid}"},
                    ]
                },
            ]
        }
    if s["mode"] == "instances":
        states["jupyter-supervisor-ready"] = {"supervisor_program.ready": [
            {"programs": {inst["program"]: inst["server"]["port"] for inst in s["instances"].values()}},
            {"socket": sup["socket"]},
            {"timeout": max(inst["supervisor"]["startsecs"] for inst in s["instances"].values()) + 60},
            {"require": [{"supervisor_program": f"jupyter-supervisor-program{inst['sid']}"}
                         for inst in s["instances"].values()]},
        ]}
    if reload_units:
        states["jupyter-supervisor-systemd-reload"] = {
            "cmd.run": [{"name": "systemctl daemon-reload"}, {"onchanges": reload_units}]
        }
        # supervisord starts with the drop-in in force
        states["jupyter-supervisor-service"]["jupyter_service.running"][-1]["require"].append(
            {"cmd": "jupyter-supervisor-systemd-reload"}
        )
    return states
