#!py
"""The reverse of jupyter.supervisor (and of jupyter.removed): every program the formula
runs or ran, its program file, logs, slice or limits runner, supervisor's drop-in;
supervisor itself only with clean:packages."""

import glob

from salt.exceptions import SaltInvocationError

SYSTEMD_DIR = "/etc/systemd/system"
LIMITS_RUNNER = "/usr/local/libexec/jupyter-formula/jupyter-limits-runner"


def run():
    try:
        s = __salt__["jupyter.settings"](require_password=False)
    except SaltInvocationError:
        return {"include": ["jupyter.invalid_pillar"]}
    sup = s["supervisor"]
    deployed = s["deployed"]
    states, files = {}, [
        f"{SYSTEMD_DIR}/{sup['service']}.service.d/jupyter-formula.conf",
        LIMITS_RUNNER,
    ]
    programs, stops = [], []

    def stop(unit, after):
        states[f"jupyter-clean-supervisor-stop-{unit}"] = {"cmd.run": [
            {"name": f"systemctl stop {unit}"}, {"onlyif": f"systemctl -q is-active {unit}"},
            {"require": after},
        ]}
        stops.append({"cmd": f"jupyter-clean-supervisor-stop-{unit}"})
        files.append(f"{SYSTEMD_DIR}/{unit}")

    for program, inst in sorted(deployed.items()):
        sid = f"jupyter-clean-supervisor-program-{program}"
        programs.append({"supervisor_program": sid})
        states[sid] = {
            "supervisor_program.absent": [
                {"name": program},
                {"conf_file": inst["program_file"]},
                {"socket": sup["socket"]},
                {"onlyif": f"test -S {sup['socket']}"},
            ]
        }
        for log in inst["log_files"]:
            files += [log] + sorted(glob.glob(f"{glob.escape(log)}.[0-9]*"))
        unit = (inst.get("limits_enforcement") or {}).get("slice")
        if unit:
            stop(unit, [{"supervisor_program": sid}])
        # the program file too, when supervisord was not running to take it away
        files.append(inst["program_file"])
    for unit in s["stale_slices"]:  # left by an earlier run (limits dropped)
        stop(unit, programs)
    if stops:
        # the instances' parent slice: an active parent keeps its stopped children loaded
        states["jupyter-clean-supervisor-stop-jupyter.slice"] = {"cmd.run": [
            {"name": "systemctl stop jupyter.slice"}, {"onlyif": "systemctl -q is-active jupyter.slice"},
            {"require": list(stops)},
        ]}
        stops.append({"cmd": "jupyter-clean-supervisor-stop-jupyter.slice"})
    for path in files:
        states[f"jupyter-clean-supervisor-{path}"] = {
            "file.absent": [{"name": path}, {"require": programs + stops}]
        }
    units = [{"file": f"jupyter-clean-supervisor-{p}"} for p in files if p.startswith(SYSTEMD_DIR)]
    states["jupyter-clean-supervisor-systemd-reload"] = {
        "cmd.run": [{"name": "systemctl daemon-reload"}, {"onlyif": "test -d /run/systemd/system"},
                    {"onchanges": units}]
    }
    for log_dir in sorted({inst["supervisor"]["log_dir"] for inst in s["instances"].values()}):
        states[f"jupyter-clean-supervisor-log-dir-{log_dir}"] = {
            "cmd.run": [
                {"name": f"rmdir {log_dir}"},
                {"onlyif": f'test -d {log_dir} && test -z "$(ls -A {log_dir})"'},
                {"require": [{"file": f"jupyter-clean-supervisor-{p}"} for p in files]},
            ]
        }
    if s["clean"]["packages"]:
        states["jupyter-clean-supervisor-package"] = {
            "pkg.purged": [{"name": sup["package"]}, {"require": programs}]
        }
    return states
