#!py
"""The reverse of jupyter.record: the record of what was deployed, then the directories
the formula created when they are empty (notebook directories are never removed). The
record of created accounts stays while those accounts do."""

from salt.exceptions import SaltInvocationError


def run():
    try:
        s = __salt__["jupyter.settings"](require_password=False)
    except SaltInvocationError:
        return {"include": ["jupyter.invalid_pillar"]}
    notebooks = {inst["root_dir"] for inst in s["deployed"].values()}
    before = [{"sls": f"jupyter.clean.{part}"} for part in ("nginx", "supervisor", "config", "package")]
    states = {
        "jupyter-clean-record": {
            "file.absent": [{"name": s["record"]["file"]}, {"require": before}]
        }
    }
    directories = [d for d in s["record"]["data"]["directories"] if d not in notebooks]
    # deepest first, each after the one before: a parent is empty once its children are gone
    previous = {"file": "jupyter-clean-record"}
    for directory in sorted(set(directories) | {s["state_dir"]}, key=len, reverse=True):
        sid = f"jupyter-clean-record-dir-{directory}"
        states[sid] = {
            "cmd.run": [
                {"name": f"rmdir {directory}"},
                {"onlyif": f'test -d {directory} && test -z "$(ls -A {directory})"'},
                {"require": [previous]},
            ]
        }
        previous = {"cmd": sid}
    return states
