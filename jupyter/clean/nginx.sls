#!py
"""The reverse of jupyter.nginx: every site the formula wrote (now or in an earlier run),
its link and the TLS files it wrote from pillar, then a tested reload; nginx itself only
with clean:packages. Certificates given by path are the admin's and stay."""

from salt.exceptions import SaltInvocationError

# made by earlier versions of the formula
LEGACY = ["/usr/local/sbin/jupyter-nginx-check-site"]


def run():
    try:
        s = __salt__["jupyter.settings"](require_password=False)
    except SaltInvocationError:
        return {"include": ["jupyter.invalid_pillar"]}
    n = s["nginx"]
    sites = s["deployed_sites"]
    files = sorted({path for site in sites.values() for path in site["files"]}) + LEGACY
    states = {}
    for path in files:
        states[f"jupyter-clean-nginx-{path}"] = {"file.absent": [{"name": path}]}
    removed = [{"file": f"jupyter-clean-nginx-{path}"} for path in files]
    for tls_dir in sorted({inst["nginx"]["tls_dir"] for inst in s["instances"].values()}):
        states[f"jupyter-clean-nginx-tls-dir-{tls_dir}"] = {
            "cmd.run": [
                {"name": f"rmdir {tls_dir}"},
                {"onlyif": f'test -d {tls_dir} && test -z "$(ls -A {tls_dir})"'},
                {"require": removed},
            ]
        }
    if s["clean"]["packages"]:
        states["jupyter-clean-nginx-package"] = {"pkg.purged": [{"name": n["package"]}, {"require": removed}]}
    else:
        states["jupyter-clean-nginx-reload"] = {
            "cmd.run": [
                {"name": f"nginx -t && service {n['service']} reload"},
                {"onlyif": "test -s /run/nginx.pid"},
                {"onchanges": removed},
            ]
        }
    return states
