#!py
"""The reverse of jupyter.package: the venvs and their links; the accounts only with
clean:user, and only those the formula created. Notebooks (root_dir) stay."""

from salt.exceptions import SaltInvocationError


def run():
    try:
        s = __salt__["jupyter.settings"](require_password=False)
    except SaltInvocationError:
        return {"include": ["jupyter.invalid_pillar"]}
    deployed = s["deployed"]
    states = {
        "jupyter-clean-package-venvs": {
            "jupyter_venv.absent": [
                {"name": s["venv_store"]},
                {"links": sorted({inst["venv"] for inst in deployed.values()})},
                {"require": [{"sls": "jupyter.clean.supervisor"}]},
            ]
        }
    }
    if s["clean"]["user"]:
        for user in sorted({inst["user"] for inst in deployed.values()}):
            mine = [inst for inst in deployed.values() if inst["user"] == user]
            home, roots = mine[0].get("home"), [inst["root_dir"] for inst in mine]
            states[f"jupyter-clean-package-user-{user}"] = {
                "jupyter_account.absent": [
                    {"name": user},
                    {"record": f"{s['state_dir']}/accounts.json"},
                    # the home goes with the account, unless notebooks live in it
                    {"purge": bool(home) and not any(r == home or r.startswith(home + "/") for r in roots)},
                    {"require": [{"sls": "jupyter.clean.supervisor"}]},
                ]
            }
    return states
