#!py
"""The reverse of jupyter.acme: every certbot lineage the formula made (its renew_hook runs
the formula's deploy hook: certbot delete --cert-name), the certificate and key copies
that hook wrote, the hook, the webroot and CA file, and the environment of certbot's
renewals (systemd drop-in or cron file). certbot itself, its timer and every other
lineage stay. After jupyter.clean.nginx: no site reads the copies any more."""

import os
import posixpath

from salt.exceptions import SaltInvocationError


def run():
    try:
        __salt__["jupyter.settings"](require_password=False)
    except SaltInvocationError:
        return {"include": ["jupyter.invalid_pillar"]}
    where = __salt__["jupyter_acme.layout"]()
    owned = __salt__["jupyter_acme.lineages"]()
    after_nginx = [{"sls": "jupyter.clean.nginx"}]
    states = {"include": ["jupyter.clean.nginx"]}
    gone = []
    for lineage in sorted(owned):
        sid = f"jupyter-clean-acme-lineage-{lineage}"
        states[sid] = {"jupyter_acme.absent": [{"name": lineage}, {"keep_used": False}, {"require": after_nginx}]}
        gone.append({"jupyter_acme": sid})
    # the TLS directories the copies were in, when nothing else is left in them
    for directory in sorted({posixpath.dirname(p) for entry in owned.values() for p in entry["copies"]}):
        states[f"jupyter-clean-acme-dir-{directory}"] = {"cmd.run": [
            {"name": f"rmdir {directory}"},
            {"onlyif": f'test -d {directory} && test -z "$(ls -A {directory})"'},
            {"require": gone},
        ]}
    for path in (where["cron_file"], where["hook"], where["home"]):
        states[f"jupyter-clean-acme-{path}"] = {"file.absent": [{"name": path}, {"require": gone + after_nginx}]}
    if os.path.lexists(where["systemd_dropin"]):
        states["jupyter-clean-acme-dropin"] = {"file.absent": [{"name": where["systemd_dropin"]}]}
        dropin_dir = posixpath.dirname(where["systemd_dropin"])
        states["jupyter-clean-acme-dropin-dir"] = {"cmd.run": [
            {"name": f"rmdir {dropin_dir}"},
            {"onlyif": f'test -d {dropin_dir} && test -z "$(ls -A {dropin_dir})"'},
            {"require": [{"file": "jupyter-clean-acme-dropin"}]},
        ]}
        states["jupyter-clean-acme-daemon-reload"] = {"cmd.run": [
            {"name": "systemctl daemon-reload"},
            {"onlyif": "test -d /run/systemd/system"},
            {"onchanges": [{"file": "jupyter-clean-acme-dropin"}]},
        ]}
    return states
