#!py
"""The reverse of jupyter: program, site, config, virtualenv, logs; packages and the
user only when pillar `clean` asks. Notebooks under root_dir are kept."""

from salt.exceptions import SaltInvocationError


def run():
    try:
        s = __salt__["jupyter.settings"](require_password=False)
    except SaltInvocationError as exc:  # a bad pillar: fail before anything changes
        return {"jupyter-clean-pillar": {"jupyter_config.invalid_pillar": [{"comment": str(exc)}]}}
    sup, n, clean = s["supervisor"], s["nginx"], s["clean"]
    site = f"{n['sites_available']}/{n['site']}.conf"
    states = {
        "jupyter-clean-program": {
            "supervisor_program.absent": [
                {"name": sup["program"]},
                {"conf_file": f"{sup['conf_dir']}/{sup['program']}{sup['conf_ext']}"},
                {"socket": sup["socket"]},
                {"onlyif": f"test -S {sup['socket']}"},
            ]
        },
    }
    removed = [site, s["config_file"], s["venv"], sup["log_dir"]]
    if n["sites_enabled"]:
        removed.append(f"{n['sites_enabled']}/{n['site']}.conf")
    if n["tls"]:  # only the files the formula wrote from pillar PEM text
        removed += [n["tls"][kind] for kind in ("certificate", "certificate_key") if n["tls"][f"{kind}_pem"]]
    for path in removed:
        states[f"jupyter-clean-{path}"] = {
            "file.absent": [{"name": path}, {"require": [{"supervisor_program": "jupyter-clean-program"}]}]
        }
    site_states = [{"file": f"jupyter-clean-{path}"} for path in removed if path.startswith("/etc/nginx")]
    if clean["packages"]:
        states["jupyter-clean-packages"] = {
            "pkg.purged": [
                {"pkgs": [n["package"], sup["package"]]},
                {"require": [{"file": f"jupyter-clean-{path}"} for path in removed]},
            ]
        }
    else:
        states["jupyter-clean-nginx-reload"] = {
            "cmd.run": [
                {"name": f"nginx -t && service {n['service']} reload"},
                {"onlyif": "test -s /run/nginx.pid"},
                {"onchanges": site_states},
            ]
        }
    if clean["user"]:
        states["jupyter-clean-user"] = {
            "user.absent": [
                {"name": s["user"]},
                {"purge": False},
                {"require": [{"supervisor_program": "jupyter-clean-program"}]},
            ]
        }
    return states
