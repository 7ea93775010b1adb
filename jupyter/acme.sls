#!py
"""ACME certificates for the sites with jupyter:nginx:tls:acme: Debian's certbot with the
webroot method through the formula's nginx, one certificate (a certbot lineage named
after the site) per site, covering every server_name.

In one apply, before the sites state: nginx serves the challenge path (a challenge-only
site while no certificate exists), certbot obtains the certificate, its deploy hook
copies it to the site's TLS paths; then jupyter.nginx puts the site on TLS. Renewal is
certbot's own schedule (its systemd timer, or a cron entry where PID 1 is not systemd)
with the environment the ACME server needs; its deploy hook tests nginx and reloads it.
Lineages the formula made for sites that no longer use ACME are deleted."""

import hashlib
import os

from salt.exceptions import SaltInvocationError

CRON = {"RedHat": {"package": "cronie", "service": "crond"}}
CRON_DEFAULT = {"package": "cron", "service": "cron"}


def _ca_bundle_contents(where, bundles):
    """The system's CAs and every acme:ca_bundle: REQUESTS_CA_BUNDLE replaces the system's
    store, and certbot's renewals of other lineages must keep trusting public CAs."""
    parts = []
    system = next((path for path in where["system_ca_files"] if os.path.exists(path)), None)
    for path in ([system] if system else []) + bundles:
        with open(path, encoding="utf-8") as handle:
            parts.append(f"# {path}\n{handle.read().strip()}\n")
    return "".join(parts)


def _environment(where, sites):
    """What certbot's renewals need in their environment: the CA file, and the directories
    of the pillar reached directly (not through a proxy)."""
    env = {}
    if any(site["tls"]["acme"]["ca_file"] for site in sites.values()):
        env["REQUESTS_CA_BUNDLE"] = where["ca_file"]
    direct = sorted({site["tls"]["acme"]["direct"] for site in sites.values()} - {None})
    if direct:
        env["no_proxy"] = env["NO_PROXY"] = ",".join(direct)
    return env


def _schedule(s, where, sites, env, requires):
    states = {}
    if s["systemd"]:
        # certbot's own timer; its service gets the environment from a drop-in
        if env:
            lines = "".join(f'Environment="{key}={value}"\n' for key, value in sorted(env.items()))
            states["jupyter-acme-schedule-env"] = {"file.managed": [
                {"name": where["systemd_dropin"]},
                {"contents": "# Managed by Salt (jupyter formula): the environment of certbot's renewals\n"
                             f"# for the formula's ACME servers.\n[Service]\n{lines}"},
                {"user": "root"}, {"group": "root"}, {"mode": "0644"}, {"makedirs": True},
            ]}
        elif os.path.exists(where["systemd_dropin"]):
            states["jupyter-acme-schedule-env"] = {"file.absent": [{"name": where["systemd_dropin"]}]}
        timer_requires = [{"pkg": "jupyter-acme-package"}]
        if "jupyter-acme-schedule-env" in states:
            states["jupyter-acme-schedule-daemon-reload"] = {"cmd.run": [
                {"name": "systemctl daemon-reload"},
                {"onchanges": [{"file": "jupyter-acme-schedule-env"}]},
            ]}
            timer_requires.append({"cmd": "jupyter-acme-schedule-daemon-reload"})
        states["jupyter-acme-schedule"] = {"service.running": [
            {"name": "certbot.timer"}, {"enable": True}, {"require": timer_requires},
        ]}
        return states
    # no systemd: certbot's timer cannot run; a cron entry per lineage, with the environment
    cron = CRON.get(s["os_family"], CRON_DEFAULT)
    seed = int(hashlib.sha256(str(__grains__.get("id", "")).encode()).hexdigest(), 16)
    minute, hour = seed % 60, (seed // 60) % 12
    lines = ["# Managed by Salt (jupyter formula): local changes are overwritten.",
             "# certbot's renewals of the formula's certificates where PID 1 is not systemd (certbot",
             "# renews what is due: renew_before_expiry); its deploy hook reloads nginx.",
             "SHELL=/bin/sh", "PATH=/usr/local/sbin:/usr/local/bin:/sbin:/bin:/usr/sbin:/usr/bin"]
    lines += [f"{key}={value}" for key, value in sorted(env.items())]
    for name in sorted(sites):
        lines.append(f"{minute} {hour},{hour + 12} * * * root test ! -d /run/systemd/system && "
                     f"certbot -q renew --no-random-sleep-on-renew --cert-name {sites[name]['tls']['acme']['lineage']}")
    states["jupyter-acme-cron-package"] = {"pkg.installed": [{"name": cron["package"]}]}
    states["jupyter-acme-schedule"] = {"file.managed": [
        {"name": where["cron_file"]}, {"contents": "\n".join(lines) + "\n"},
        {"user": "root"}, {"group": "root"}, {"mode": "0644"},
        {"require": [{"pkg": "jupyter-acme-cron-package"}] + requires},
    ]}
    states["jupyter-acme-cron"] = {"jupyter_service.running": [
        {"name": cron["service"]}, {"enable": True}, {"require": [{"pkg": "jupyter-acme-cron-package"}]},
    ]}
    return states


def _leftovers(where):
    """No site uses ACME: the formula's ACME files go (its lineages too, see unused)."""
    states = {}
    for path in (where["systemd_dropin"], where["cron_file"], where["hook"], where["home"]):
        if os.path.lexists(path):
            states[f"jupyter-acme-leftover-{path}"] = {"file.absent": [{"name": path}]}
    return states


def run():
    try:
        s = __salt__["jupyter.settings"]()
    except SaltInvocationError:
        return {"include": ["jupyter.invalid_pillar"]}
    where = __salt__["jupyter_acme.layout"]()
    sites = {name: site for name, site in s["sites"].items() if (site["tls"] or {}).get("acme")}
    owned = __salt__["jupyter_acme.lineages"]()
    unused = sorted(set(owned) - {site["tls"]["acme"]["lineage"] for site in sites.values()})
    states = {}
    for lineage in unused:
        # after the sites state: the site no longer reads the copies it deletes
        states[f"jupyter-acme-unused-{lineage}"] = {"jupyter_acme.absent": [
            {"name": lineage}, {"require": [{"jupyter_nginx": "jupyter-nginx-site"}]},
        ]}
    if not sites:
        if not states:
            return _leftovers(where)
        states.update(_leftovers(where))
        return {"include": ["jupyter.nginx"], **states}

    states["include"] = ["jupyter.nginx"]
    states["jupyter-acme-package"] = {"pkg.installed": [{"name": "certbot"}]}
    # root's: certbot writes the challenges, nginx's workers only read them
    states["jupyter-acme-webroot"] = {"file.directory": [
        {"name": where["webroot"]}, {"user": "root"}, {"group": "root"}, {"mode": "0755"}, {"makedirs": True},
    ]}
    states["jupyter-acme-deploy-hook"] = {"file.managed": [
        {"name": where["hook"]}, {"source": "salt://jupyter/files/acme-deploy-hook.sh"},
        {"user": "root"}, {"group": "root"}, {"mode": "0755"},
    ]}
    requires = [
        {"pkg": "jupyter-acme-package"}, {"file": "jupyter-acme-webroot"}, {"file": "jupyter-acme-deploy-hook"},
    ]
    bundles = sorted({site["tls"]["acme"]["ca_bundle"] for site in sites.values()} - {None})
    if bundles:
        try:
            contents = _ca_bundle_contents(where, bundles)
        except OSError as exc:
            contents = None
            states["jupyter-acme-ca-bundle"] = {"test.fail_without_changes": [
                {"name": f"jupyter:nginx:tls:acme:ca_bundle: cannot read {exc.filename}: {exc.strerror}"},
            ]}
        if contents is not None:
            states["jupyter-acme-ca-bundle"] = {"file.managed": [
                {"name": where["ca_file"]}, {"contents": contents}, {"user": "root"}, {"group": "root"},
                {"mode": "0644"}, {"show_changes": False}, {"require": [{"file": "jupyter-acme-webroot"}]},
            ]}
        requires.append({"test" if contents is None else "file": "jupyter-acme-ca-bundle"})
    elif os.path.exists(where["ca_file"]):
        states["jupyter-acme-ca-bundle"] = {"file.absent": [{"name": where["ca_file"]}]}

    for name in sorted(sites):
        states[f"jupyter-acme-certificate-{name}"] = {"jupyter_acme.certificate": [
            {"name": name},
            {"require": requires + [{"pkg": "jupyter-nginx-package"}]},
            # the site goes on TLS once its certificate is there
            {"require_in": [{"jupyter_nginx": "jupyter-nginx-site"}]},
        ]}
    states.update(_schedule(s, where, sites, _environment(where, sites), requires))
    return states
