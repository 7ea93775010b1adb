#!py
"""The server's account, its notebook directory, the virtualenv and its pip packages."""

import os

from salt.exceptions import SaltInvocationError


def run():
    try:
        s = __salt__["jupyter.settings"]()
    except SaltInvocationError as exc:  # a bad pillar: fail before anything changes
        return {"jupyter-package-pillar": {"jupyter_config.invalid_pillar": [{"comment": str(exc)}]}}
    pip = s["pip"]
    # test=True on a fresh host: pip cannot look into a virtualenv that does not exist
    # yet (Salt fails the state); the venv state already predicts its creation.
    fresh_test = __opts__["test"] and not os.path.exists(s["venv"] + "/bin/pip")
    return {
        "jupyter-package-python": {"pkg.installed": [{"pkgs": s["python_packages"]}]},
        "jupyter-package-user": {
            "user.present": [
                {"name": s["user"]},
                {"home": s["home"]},
                {"shell": s["shell"]},
                {"usergroup": s["group"] == s["user"]},
                {"system": True},
                {"createhome": True},
            ]
        },
        "jupyter-package-root-dir": {
            "file.directory": [
                {"name": s["root_dir"]},
                {"user": s["user"]},
                {"group": s["group"]},
                {"mode": "0750"},
                {"makedirs": True},
                {"require": [{"user": "jupyter-package-user"}]},
            ]
        },
        # root owns the virtualenv: the server's user can run it, not change it
        "jupyter-package-venv": {
            "virtualenv.managed": [
                {"name": s["venv"]},
                {"venv_bin": s["python"]},
                {"require": [{"pkg": "jupyter-package-python"}]},
            ]
        },
        "jupyter-package-pip": {
            "pip.installed": [
                {"pkgs": s["packages"]},
                {"bin_env": s["venv"]},
                {"index_url": pip["index_url"]},
                {"extra_index_url": " ".join(pip["extra_index_urls"]) or None},
                {"trusted_host": " ".join(pip["trusted_hosts"]) or None},
                {"proxy": pip["proxy"]},
                {"require": [{"virtualenv": "jupyter-package-venv"}]},
            ]
            + ([{"onlyif": "false"}] if fresh_test else []),
        },
    }
