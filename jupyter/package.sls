#!py
"""The servers' accounts, their notebook directories and their virtualenvs: each venv
built once for what is in it (instances with the same packages share it), then made
live for each instance after a candidate server from it passed its checks."""

from salt.exceptions import SaltInvocationError


def run():
    try:
        s = __salt__["jupyter.settings"]()
    except SaltInvocationError:
        return {"include": ["jupyter.invalid_pillar"]}
    states = {
        "include": ["jupyter.config"],
        "jupyter-package-python": {"pkg.installed": [{"pkgs": s["python_packages"]}]},
    }
    account_of = {}  # user -> the state that makes the account (instances may share one)
    for name, inst in sorted(s["instances"].items()):
        user, sid = inst["user"], inst["sid"]
        if user not in account_of:
            account_of[user] = f"jupyter-package-user{sid}"
            states[account_of[user]] = {
                "jupyter_account.present": [
                    {"name": user},
                    {"home": inst["home"]},
                    {"shell": inst["shell"]},
                    {"group": inst["group"]},
                    {"config_file": inst["config_file"]},
                    {"record": f"{s['state_dir']}/accounts.json"},
                ]
            }
        # the parent of the notebooks: made if missing (root, 0755: each user reaches
        # only their own directory), never changed when it exists
        parent = inst["root_dir"].rsplit("/", 1)[0] or "/"
        states.setdefault(f"jupyter-package-root-parent-{parent}", {
            "file.directory": [{"name": parent}, {"makedirs": True}]
        })
        states[f"jupyter-package-root-dir{sid}"] = {
            "file.directory": [
                {"name": inst["root_dir"]},
                {"user": user},
                {"group": inst["group"]},
                {"mode": "0750"},
                {"makedirs": True},
                {"require": [{"jupyter_account": account_of[user]}, {"file": f"jupyter-package-root-parent-{parent}"}]},
            ]
        }
    for venv_id, venv in sorted(s["venvs"].items()):
        states[f"jupyter-package-venv-{venv_id}"] = {
            "jupyter_venv.built": [
                {"name": venv["dir"]},
                {"instance": venv["instances"][0]},
                {"require": [{"pkg": "jupyter-package-python"}]},
            ]
        }
    for name, inst in sorted(s["instances"].items()):
        sid = inst["sid"]
        # the switch: the program watches it and restarts once
        states[f"jupyter-package-venv{sid}"] = {
            "jupyter_venv.live": [
                {"name": inst["venv"]},
                {"instance": name},
                {
                    "require": [
                        {"jupyter_venv": f"jupyter-package-venv-{inst['venv_id']}"},
                        {"jupyter_config": f"jupyter-config-file{sid}"},
                        {"file": f"jupyter-package-root-dir{sid}"},
                    ]
                },
            ]
        }
    return states
