#!py
"""What a previous run deployed and this pillar no longer names (the formula's record
says which): instances' programs, configs, logs and venv links; slices no instance runs
in any more (removed, or its limits dropped), stopped after their program moved out.
Notebooks and the other instances stay. nginx locations go with the sites
(jupyter.nginx)."""

import glob

from salt.exceptions import SaltInvocationError


def run():
    try:
        s = __salt__["jupyter.settings"]()
    except SaltInvocationError:
        return {"include": ["jupyter.invalid_pillar"]}
    # done once every removal succeeded: the record (jupyter.record) forgets them then
    done = {"test.nop": [{"require": []}]}
    states = {"jupyter-removed": done}
    for program, gone in s["removed"].items():
        program_state = f"jupyter-removed-program-{program}"
        states[program_state] = {
            "supervisor_program.absent": [
                {"name": program},
                {"conf_file": gone["program_file"]},
                {"socket": s["supervisor"]["socket"]},
            ]
        }
        paths = [gone["config_file"], gone["venv"]]
        for log in gone["log_files"]:  # with supervisor's rotated backups (.1, .2, ...)
            paths += [log] + sorted(glob.glob(f"{glob.escape(log)}.[0-9]*"))
        for path in paths:
            states[f"jupyter-removed-{path}"] = {
                "file.absent": [{"name": path}, {"require": [{"supervisor_program": program_state}]}]
            }
            done["test.nop"][0]["require"].append({"file": f"jupyter-removed-{path}"})
    programs = {inst["program"]: inst["sid"] for inst in s["instances"].values()}
    units = []
    for unit, program in s["stale_slices"].items():
        # once its program is gone, or restarted outside it (this run's program state)
        moved = ({"supervisor_program": f"jupyter-removed-program-{program}"} if program in s["removed"]
                 else {"supervisor_program": f"jupyter-supervisor-program{programs[program]}"})
        states[f"jupyter-removed-stop-{unit}"] = {"cmd.run": [
            {"name": f"systemctl stop {unit}"}, {"onlyif": f"systemctl -q is-active {unit}"},
            {"require": [moved]},
        ]}
        states[f"jupyter-removed-{unit}"] = {"file.absent": [
            {"name": f"/etc/systemd/system/{unit}"}, {"require": [{"cmd": f"jupyter-removed-stop-{unit}"}]},
        ]}
        units.append({"file": f"jupyter-removed-{unit}"})
        done["test.nop"][0]["require"].append({"file": f"jupyter-removed-{unit}"})
    in_use = any((inst["limits_enforcement"] or {}).get("slice") for inst in s["instances"].values())
    if units and not in_use:
        # the instances' parent slice, with no child left: stopped, so that systemd lets
        # go of both (an active parent keeps a stopped child loaded)
        states["jupyter-removed-stop-jupyter.slice"] = {"cmd.run": [
            {"name": "systemctl stop jupyter.slice"}, {"onlyif": "systemctl -q is-active jupyter.slice"},
            {"require": [{"cmd": f"jupyter-removed-stop-{unit}"} for unit in s["stale_slices"]]},
            {"require_in": [{"cmd": "jupyter-removed-systemd-reload"}]},
        ]}
    if units:
        states["include"] = ["jupyter.supervisor"]
        states["jupyter-removed-systemd-reload"] = {"cmd.run": [
            {"name": "systemctl daemon-reload"}, {"onchanges": units},
        ]}
    return states
