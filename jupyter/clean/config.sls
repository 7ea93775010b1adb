#!py
"""The reverse of jupyter.config: every instance's config file (now or in an earlier run),
then their directories when empty."""

from salt.exceptions import SaltInvocationError


def run():
    try:
        s = __salt__["jupyter.settings"](require_password=False)
    except SaltInvocationError:
        return {"include": ["jupyter.invalid_pillar"]}
    deployed = s["deployed"]
    files = sorted({inst["config_file"] for inst in deployed.values()})
    states = {}
    for path in files:
        states[f"jupyter-clean-config-{path}"] = {"file.absent": [{"name": path}]}
    for directory in sorted({path.rsplit("/", 1)[0] for path in files}):
        states[f"jupyter-clean-config-dir-{directory}"] = {
            "cmd.run": [
                {"name": f"rmdir {directory}"},
                {"onlyif": f'test -d {directory} && test -z "$(ls -A {directory})"'},
                {"require": [{"file": f"jupyter-clean-config-{path}"} for path in files]},
            ]
        }
    return states
