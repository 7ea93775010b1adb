"""
ACME certificates of the jupyter formula's nginx sites (certbot, webroot method).

``certificate`` makes a site's certificate what the pillar says, in one apply and without
a chicken-and-egg problem: when certbot has to run, nginx first serves the ACME challenge
path for every name (a challenge-only site while no certificate exists yet), certbot
obtains or re-issues the certificate and its deploy hook puts it where the site reads
it; the formula's nginx sites state then puts the site on TLS (it requires this state).
A certificate within ``renew_before_days`` of expiry is renewed by the apply too.

A failure says why in the comment (DNS, port 80, rate limit, the CA refused, ...), with
certbot's words masked; the live site keeps the certificate it has.

``absent`` deletes a certbot lineage the formula made and the copies its hook deployed.

The site's inputs come from ``jupyter.settings`` inside the state; key material never
reaches changes or comments.

.. code-block:: yaml

    jupyter-acme-certificate-jupyter:
      jupyter_acme.certificate:
        - name: jupyter          # the nginx site (jupyter.settings()['sites'])
"""

import os

__virtualname__ = "jupyter_acme"


def __virtual__():
    if "jupyter_acme.status" not in __salt__:
        return (False, "jupyter_acme: the jupyter_acme execution module is not loaded")
    return __virtualname__


def _brief(cert):
    if not cert:
        return None
    return {"names": cert["names"], "serial": cert["serial"], "not_after": cert["not_after"], "issuer": cert["issuer"]}


def _keeps(status):
    """What the live site keeps serving after a failure."""
    served = status.get("served")
    if served:
        return (f"The live site keeps its certificate (serial {served['serial']}, "
                f"valid until {served['not_after']}).")
    return "No certificate was deployed yet: the site answers ACME challenges only, and no Jupyter over plain HTTP."


def certificate(name, saltenv=None):
    """
    Make the ACME certificate of nginx site ``name`` current: obtained when missing,
    re-issued when the names or the ACME directory changed or it expires within
    ``renew_before_days``, deployed where the site reads it, and its certbot renewal
    set to the same threshold and the formula's deploy hook.

    name
        The nginx site (a key of ``jupyter.settings()['sites']``) with
        ``jupyter:nginx:tls:acme``.
    """
    ret = {"name": name, "result": True, "changes": {}, "comment": ""}
    saltenv = saltenv or globals().get("__env__") or "base"
    settings = __salt__["jupyter.settings"]()
    site = settings["sites"].get(name)
    if site is None or not (site["tls"] or {}).get("acme"):
        ret.update(result=False, comment=f"nginx site {name!r} has no jupyter:nginx:tls:acme")
        return ret
    acme = site["tls"]["acme"]
    status = __salt__["jupyter_acme.status"](site)
    if status["exists"] and not status["owned"]:
        ret.update(result=False, comment=(
            f"a certbot certificate named {acme['lineage']!r} exists and was not made by the formula "
            f"({acme['renewal_conf']} does not run its deploy hook): the formula leaves it alone. Delete it "
            f"(certbot delete --cert-name {acme['lineage']}) or give the site another name (jupyter:nginx:site)."
        ))
        return ret

    names = ", ".join(acme["names"])
    if __opts__["test"]:
        todo = []
        if status["reissue"]:
            verb = "obtain" if not status["exists"] else "re-issue"
            todo.append(f"{verb} a certificate for {names} from {acme['server']} ({'; '.join(status['reissue'])})")
        if status["renewal"]:
            todo.append("set " + ", ".join(f"{key} = {value}" for key, value in status["renewal"].items())
                        + f" in {acme['renewal_conf']}")
        if status["deploy"]:
            todo.append(f"deploy the certificate to {site['tls']['certificate']} and reload nginx")
        if todo:
            ret.update(result=None, comment="would " + "; ".join(todo),
                       changes={"would": todo})
        else:
            ret["comment"] = _current_comment(status)
        return ret

    old = status["certificate"]
    if status["reissue"]:
        served = __salt__["jupyter_acme.serve_challenge"](site, saltenv)
        if served["changed"]:
            ret["changes"]["nginx"] = {"served": served["served"], "files": served["changed"]}
        if not served["ok"]:
            ret.update(result=False, comment=(
                f"The certificate for {names} was not requested: {served['message']}. {_keeps(status)}"
            ))
            return ret
        got = __salt__["jupyter_acme.obtain"](site, force=status["exists"])
        if not got["ok"]:
            ret.update(result=False, comment=(
                f"No certificate for {names} from {acme['server']} ({'; '.join(status['reissue'])}): "
                f"{got['why']}. {_keeps(status)}\n"
                f"certbot said (masked):\n{got['details']}"
            ))
            return ret
        reasons = status["reissue"]
        status = __salt__["jupyter_acme.status"](site)
        ret["changes"]["certificate"] = {
            "old": _brief(old), "new": _brief(status["certificate"]),
            "reason": "; ".join(reasons), "seconds": got["seconds"],
        }

    # certbot's own renewals: the pillar's threshold and the formula's hook
    if status["renewal"]:
        ret["changes"]["renewal"] = __salt__["jupyter_acme.configure_renewal"](site)
        status = __salt__["jupyter_acme.status"](site)
    # certbot ran the hook; this catches a hook that failed, or copies changed since
    if status["deploy"]:
        deployed = __salt__["jupyter_acme.deploy"](site)
        if not deployed["ok"]:
            ret.update(result=False, comment=(
                f"The certificate for {names} could not be deployed to {site['tls']['certificate']}:\n"
                f"{deployed['output']}"
            ))
            return ret
        ret["changes"]["deployed"] = [site["tls"]["certificate"], site["tls"]["certificate_key"]]
        status = __salt__["jupyter_acme.status"](site)

    if not ret["changes"]:
        ret["comment"] = _current_comment(status)
        return ret
    cert = status["certificate"]
    ret["comment"] = (
        f"certificate for {names}: serial {cert['serial']}, valid until {cert['not_after']}, "
        f"deployed to {site['tls']['certificate']}"
    )
    return ret


def _current_comment(status):
    cert = status["certificate"]
    return (f"certificate {status['lineage']} for {', '.join(cert['names'])} is current "
            f"(serial {cert['serial']}, valid until {cert['not_after']})")


def absent(name, keep_used=True):
    """
    Delete a certbot lineage the formula made (``certbot delete --cert-name name``)
    and the certificate and key copies its deploy hook wrote. A lineage the formula
    did not make is left alone.

    name
        The lineage (the site it was made for).

    keep_used
        Keep a copy when a site of the current settings reads that path (a site that
        moved from ACME to certificates from pillar writes the same paths).
    """
    ret = {"name": name, "result": True, "changes": {}, "comment": ""}
    owned = __salt__["jupyter_acme.lineages"]()
    lineage = owned.get(name)
    if lineage is None:
        ret["comment"] = f"no certbot lineage {name!r} of the formula"
        return ret
    used = set()
    if keep_used:
        for site in __salt__["jupyter.settings"](require_password=False)["sites"].values():
            tls = site["tls"] or {}
            used |= {tls.get("certificate"), tls.get("certificate_key")}
    copies = [path for path in lineage["copies"] if path not in used and os.path.lexists(path)]
    if __opts__["test"]:
        ret.update(result=None, comment=f"would delete certbot lineage {name!r}"
                   + (f" and {', '.join(copies)}" if copies else ""),
                   changes={"lineage": name, "files": copies})
        return ret
    deleted = __salt__["jupyter_acme.delete"](name)
    if not deleted["ok"]:
        ret.update(result=False, comment=f"certbot delete --cert-name {name} failed:\n{deleted['output']}")
        return ret
    for path in copies:
        os.unlink(path)
    ret.update(changes={"lineage": name, "files": copies},
               comment=f"deleted certbot lineage {name!r}" + (f" and {', '.join(copies)}" if copies else ""))
    return ret
