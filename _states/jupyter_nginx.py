"""
The nginx sites of the jupyter formula, as one state: every site file, its
``sites-enabled`` link, the TLS files written from pillar PEM text, the sites a previous
run made and this pillar no longer names, and the distribution's default site.

Nothing broken goes live: the files are put in place and kept only when ``nginx -t``
accepts the whole configuration; otherwise they are restored and the state fails with
nginx's own words (``jupyter_nginx.replace_files``). And every run tests the live
configuration, so an apply fails as long as ``nginx -t`` does, even when the formula's
files did not change.

The site's inputs come from ``jupyter.settings`` inside the state: TLS keys from pillar
are never state arguments, and never appear in changes or comments.

.. code-block:: yaml

    jupyter-nginx-site:
      jupyter_nginx.sites:
        - name: nginx
"""

__virtualname__ = "jupyter_nginx"

SITE_TEMPLATE = "salt://jupyter/files/nginx-site.conf.jinja"


def __virtual__():
    if "jupyter_nginx.replace_files" not in __salt__:
        return (False, "jupyter_nginx: the jupyter_nginx execution module is not loaded")
    return __virtualname__


def _wanted_files(settings, saltenv):
    """{path: wanted} for every file the formula owns in nginx's configuration, and the
    set of paths whose contents are secret (never diffed)."""
    files, secret = {}, set()
    for site in settings["sites"].values():
        files[site["file"]] = {
            "contents": __salt__["jupyter_nginx.render"](SITE_TEMPLATE, {"site": site}, saltenv),
            "mode": 0o644,
        }
        if site["enabled"]:
            files[site["enabled"]] = {"link": site["file"]}
        tls = site["tls"] or {}
        if tls.get("certificate_pem"):
            files[tls["certificate"]] = {"contents": tls["certificate_pem"], "mode": 0o644}
            secret.add(tls["certificate"])  # not secret, but a diff of base64 says nothing
        if tls.get("certificate_key_pem"):
            files[tls["certificate_key"]] = {"contents": tls["certificate_key_pem"], "mode": 0o600}
            secret.add(tls["certificate_key"])
    for entry in settings["removed_sites"].values():
        for path in entry.get("files") or []:
            files.setdefault(path, None)
    nginx = settings["nginx"]
    if any(site["default_server"] for site in settings["sites"].values()) and nginx.get("distro_default_site"):
        # the distribution's catch-all site would claim default_server too
        files[nginx["distro_default_site"]] = None
    return files, secret


def sites(name, saltenv=None):
    """
    Make nginx's files for the formula's sites what the settings say, tested by
    ``nginx -t`` in the full configuration before they are kept.

    name
        The nginx binary (``nginx``).
    """
    ret = {"name": name, "result": True, "changes": {}, "comment": ""}
    saltenv = saltenv or globals().get("__env__") or "base"
    settings = __salt__["jupyter.settings"](reveal_secrets=True)
    files, secret = _wanted_files(settings, saltenv)
    pending = __salt__["jupyter_nginx.pending"](files)

    def describe(paths):
        changes = {"files": {path: pending[path] for path in paths}}
        diffs = "".join(
            __salt__["jupyter_nginx.diff"](path, files[path]) for path in paths if path not in secret
        )
        if diffs:
            changes["diff"] = diffs
        return changes

    if __opts__["test"]:
        if pending:
            ret.update(
                result=None,
                changes=describe(pending),
                comment="would change {} and keep them only if nginx -t passes".format(", ".join(pending)),
            )
        else:
            ret["comment"] = "nginx's files for the formula are in the correct state"
        return ret

    if not pending:
        test = __salt__["jupyter_nginx.config_test"](name)
        if not test["ok"]:
            ret.update(result=False, comment=f"nginx -t fails (the formula's files are unchanged):\n{test['message']}")
            return ret
        ret["comment"] = "nginx's files for the formula are in the correct state; nginx -t passes"
        return ret

    changes = describe(pending)
    result = __salt__["jupyter_nginx.replace_files"](files, name)
    if not result["ok"]:
        ret.update(
            result=False,
            comment="nginx rejected the new configuration; every file was put back as it was "
            f"and the running nginx keeps serving:\n{result['message']}",
        )
        return ret
    ret.update(changes=changes, comment="changed {}; nginx -t passes".format(", ".join(result["changed"])))
    return ret
