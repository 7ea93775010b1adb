#!py
"""The reverse of jupyter.package: the venvs and their links; the accounts only with
clean:user, and only those the formula created. Notebooks (root_dir) stay."""

import json

from salt.exceptions import SaltInvocationError


def _created_accounts(record):
    try:
        with open(record, encoding="utf-8") as handle:
            return set(json.load(handle))
    except (OSError, ValueError, TypeError):
        return set()


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
    accounts = f"{s['state_dir']}/accounts.json"
    if s["clean"]["user"]:
        # every account the formula created, also those of instances removed long ago
        for user in sorted(_created_accounts(accounts)):
            mine = [inst for inst in deployed.values() if inst["user"] == user]
            home, roots = (mine[0].get("home") if mine else None), [inst["root_dir"] for inst in mine]
            for root_dir in roots:
                # the notebooks stay, out of reach of whoever gets the account's uid later
                states[f"jupyter-clean-package-notebooks-{root_dir}"] = {"file.directory": [
                    {"name": root_dir}, {"user": "root"}, {"group": "root"}, {"mode": "0700"},
                    {"onlyif": f"test -d {root_dir}"},
                    {"require_in": [{"jupyter_account": f"jupyter-clean-package-user-{user}"}]},
                ]}
            states[f"jupyter-clean-package-user-{user}"] = {
                "jupyter_account.absent": [
                    {"name": user},
                    {"record": accounts},
                    # the home goes with the account, unless notebooks live in it
                    {"purge": bool(home) and not any(r == home or r.startswith(home + "/") for r in roots)},
                    {"require": [{"sls": "jupyter.clean.supervisor"}]},
                ]
            }
    return states
