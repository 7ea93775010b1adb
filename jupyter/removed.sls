#!py
"""Instances a previous run deployed and this pillar no longer names (the formula's
record says which): their program, config, logs and slice go; their notebooks and the
other instances stay. Their nginx locations go with the sites (jupyter.nginx)."""

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
        paths = [gone["config_file"]]
        for log in gone["log_files"]:  # with supervisor's rotated backups (.1, .2, ...)
            paths += [log] + sorted(glob.glob(f"{glob.escape(log)}.[0-9]*"))
        if (gone.get("limits_enforcement") or {}).get("slice"):
            paths.append(f"/etc/systemd/system/{gone['limits_enforcement']['slice']}")
        for path in paths:
            states[f"jupyter-removed-{path}"] = {
                "file.absent": [{"name": path}, {"require": [{"supervisor_program": program_state}]}]
            }
            done["test.nop"][0]["require"].append({"file": f"jupyter-removed-{path}"})
    return states
