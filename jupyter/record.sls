#!py
"""The formula's root-only record of what it deployed (instances, sites, directories it
created): what the next run removes when pillar no longer names it, and what
jupyter.clean removes. Written last, only when every part applied."""

from salt.exceptions import SaltInvocationError


def run():
    try:
        s = __salt__["jupyter.settings"]()
    except SaltInvocationError:
        return {"include": ["jupyter.invalid_pillar"]}
    record = s["record"]
    return {
        "include": ["jupyter.package", "jupyter.config", "jupyter.supervisor", "jupyter.nginx", "jupyter.removed"],
        "jupyter-record-dir": {
            "file.directory": [{"name": s["state_dir"]}, {"user": "root"}, {"mode": "0700"}, {"makedirs": True}]
        },
        "jupyter-record": {
            "file.serialize": [
                {"name": record["file"]},
                {"dataset": record["data"]},
                {"serializer": "json"},
                {"user": "root"},
                {"mode": "0600"},
                {"show_changes": False},
                {
                    "require": [
                        {"file": "jupyter-record-dir"},
                        {"sls": "jupyter.package"},
                        {"sls": "jupyter.config"},
                        {"sls": "jupyter.supervisor"},
                        {"sls": "jupyter.nginx"},
                        {"test": "jupyter-removed"},
                    ]
                },
            ]
        },
    }
