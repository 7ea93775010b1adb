#!py
"""The guard: when jupyter.settings refuses the pillar, every sls of the formula renders
nothing but an include of this file, and this one failing state names every bad key.
Nothing else runs, so nothing on the host changes."""

from salt.exceptions import SaltInvocationError


def run():
    for require_password in (True, False):  # jupyter.clean includes it when a password is no matter
        try:
            __salt__["jupyter.settings"](require_password=require_password)
        except SaltInvocationError as exc:
            return {"jupyter-pillar-invalid": {"jupyter_config.invalid_pillar": [{"comment": str(exc)}]}}
    return {}
