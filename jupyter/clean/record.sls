#!py
"""The reverse of jupyter.record: the record of what was deployed, then the directories
the formula created when they are empty. Notebook directories are never removed, and
the record keeps just them (and the parents the formula made for them), so that a later
deploy knows they are the formula's; once they are gone too, the record goes. The record of created accounts stays while those
accounts do."""

from salt.exceptions import SaltInvocationError


def run():
    try:
        s = __salt__["jupyter.settings"](require_password=False)
    except SaltInvocationError:
        return {"include": ["jupyter.invalid_pillar"]}
    # notebook directories that are gone (removed by hand) are forgotten
    notebooks = {inst["root_dir"] for inst in s["deployed"].values()
                 if __salt__["file.directory_exists"](inst["root_dir"])}
    before = [{"sls": f"jupyter.clean.{part}"} for part in ("nginx", "supervisor", "config", "package")]
    created = s["record"]["data"]["directories"]
    kept = [d for d in created if any(nb == d or nb.startswith(d + "/") for nb in notebooks)]
    if kept:
        record = {"file.serialize": [
            {"name": s["record"]["file"]}, {"dataset": {"version": 1, "directories": kept}},
            {"serializer": "json"}, {"user": "root"}, {"mode": "0600"}, {"require": before},
        ]}
    else:
        record = {"file.absent": [{"name": s["record"]["file"]}, {"require": before}]}
    states = {"jupyter-clean-record": record}
    directories = [d for d in created if d not in kept]
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
