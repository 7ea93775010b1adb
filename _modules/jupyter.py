"""
Execution module of the jupyter formula: ``jupyter.settings``, the one source of truth
for what the formula deploys on this minion.

One pipeline, run once per state run (cached in ``__context__``):

1. merge: ``jupyter/defaults.yaml`` < ``jupyter/osfamilymap.yaml`` < pillar ``jupyter``
   < each entry of ``jupyter:instances`` (an instance is the top level deep-merged with
   its own entry);
2. validate: the pure checks of ``jupyter_pillar`` (every bad key named), with the host
   facts they need gathered first;
3. derive: every path and name the sls files, states and clean use (programs, config
   files, logs, venvs, nginx sites and their locations, what a previous run deployed
   and this one no longer does).

The sls files read derived values only; nothing is derived twice. Other functions of
the ``jupyter`` namespace live in files of their own (``jupyter_password.py``, ...).

The sls files call ``jupyter.settings`` at render time, so sync the custom modules
first (``saltutil.sync_all`` or ``state.apply jupyter sync_mods=all``).
"""

import copy
import hashlib
import json
import logging
import os
import posixpath
import re
import shlex
from urllib.parse import urlsplit

import salt.utils.data
import salt.utils.dictupdate
import salt.utils.yaml
from salt.exceptions import CommandExecutionError, SaltInvocationError

log = logging.getLogger(__name__)

__virtualname__ = "jupyter"

HIDDEN = "<hidden>"
SINGLE = "jupyter"  # the name of the one instance of a pillar without `instances`
RECORD = "record.json"
# keys of the top level only: an instance cannot set them
TOP_ONLY = ("instances", "clean", "upgrade", "venv_store", "state_dir")
PASSWORD_KEYS = ("password", "hashed_password")
CREDENTIALS = re.compile(r"(?<=://)[^/@\s]+@")
_CONTEXT = "jupyter.settings"


def __virtual__():
    return __virtualname__


# ---------------------------------------------------------------------------
# merge


def _plain(value):
    """A plain copy of pillar data (Salt 3008 wraps pillar in masking containers)."""
    if isinstance(value, dict):
        return {key: _plain(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_plain(item) for item in value]
    return value


def _pillar(key, default=None):
    # __pillar__ rather than pillar.get, which Salt 3008 redacts outside renderers
    return _plain(salt.utils.data.traverse_dict_and_list(__pillar__, key, default, ":"))


def _formula_yaml(name, saltenv):
    cache = __context__.setdefault(f"{_CONTEXT}.files", {})
    if (name, saltenv) not in cache:
        text = __salt__["cp.get_file_str"](f"salt://jupyter/{name}", saltenv=saltenv)
        if not text:
            raise CommandExecutionError(
                f"salt://jupyter/{name} not found in saltenv '{saltenv}': "
                "is the formula in file_roots?"
            )
        cache[(name, saltenv)] = salt.utils.yaml.safe_load(text) or {}
    return copy.deepcopy(cache[(name, saltenv)])


def _merge(base, layer):
    return salt.utils.dictupdate.merge(copy.deepcopy(base), copy.deepcopy(layer))


def _instance_layer(top, entry):
    """The top level deep-merged with one instance's entry. A password given by the
    instance replaces the inherited pair: password and hashed_password go together."""
    base = {key: value for key, value in top.items() if key not in TOP_ONLY}
    if any(key in entry for key in PASSWORD_KEYS):
        for key in PASSWORD_KEYS:
            base[key] = None
    return _merge(base, entry)


# ---------------------------------------------------------------------------
# derive


def _hidden_url(url):
    return CREDENTIALS.sub(f"{HIDDEN}@", url) if isinstance(url, str) else url


def _systemd_booted():
    # what sd_booted(3) checks: PID 1 is systemd
    return os.path.isdir("/run/systemd/system")


def _writable_cgroup():
    """The cgroup tree the formula can write limits into without systemd, or None."""
    for path, kind in (("/sys/fs/cgroup/cgroup.subtree_control", "v2"), ("/sys/fs/cgroup/memory", "v1")):
        if os.path.exists(path) and os.access(path, os.W_OK):
            try:
                if not os.statvfs(os.path.dirname(path) if kind == "v2" else path).f_flag & os.ST_RDONLY:
                    return kind
            except OSError:
                continue
    return None


def _limits_enforcement(limits, name):
    if not any(value is not None for value in limits.values()):
        return None
    if _systemd_booted():
        return {"by": "systemd", "slice": f"jupyter-{name}.slice"}
    cgroup = _writable_cgroup()
    if cgroup:
        return {"by": f"cgroup {cgroup}", "cgroup": f"jupyter-formula/{name}"}
    return {"by": None, "warning": "limits cannot be enforced on this host: no systemd and no writable cgroup controllers"}


def _own(entry, *keys):
    """A value the instance's own pillar entry sets (None when inherited)."""
    value = entry
    for key in keys:
        if not isinstance(value, dict) or key not in value:
            return None
        value = value[key]
    return value


def _derive_instance(name, inst, entry, top, single):
    sup, nginx = inst["supervisor"], inst["nginx"]
    inst["name"] = name
    inst["group"] = inst.get("group") or inst["user"]
    if single:
        program = sup["program"]
        config_file = inst["config_file"] or f"/etc/jupyter-server/{program}.json"
        inst["sid"] = ""
    else:
        program = _own(entry, "supervisor", "program") or f"{top['supervisor']['program']}-{name}"
        config_dir = posixpath.dirname(top["config_file"] or "/etc/jupyter-server/x")
        config_file = _own(entry, "config_file") or f"{config_dir}/{name}.json"
        inst["root_dir"] = _own(entry, "root_dir") or posixpath.join(top["root_dir"], name)
        inst["venv"] = _own(entry, "venv") or f"{top['venv']}-{name}"
        inst["sid"] = f"-{name}"
    sup["program"] = program
    inst["program"] = program
    inst["config_file"] = config_file
    inst["home"] = inst.get("home") or f"/home/{inst['user']}"
    inst["program_file"] = f"{sup['conf_dir']}/{program}{sup['conf_ext']}"
    inst["log_files"] = [f"{sup['log_dir']}/{program}.log", f"{sup['log_dir']}/{program}.err.log"]
    inst["jupyter_bin"] = posixpath.join(inst["venv"], "bin", f"jupyter-{inst['app']}")
    # what the venv holds: python and its X.Y version, packages, index URLs (no credentials)
    # (none for an empty list: the checks after the derivation refuse it, naming the key)
    inst["venv_id"] = __salt__["jupyter_venv.venv_id"](
        inst["python"], inst["packages"], inst["pip"], top["venv_store"]) if inst["packages"] else None
    inst["venv_dir"] = inst["venv_id"] and posixpath.join(top["venv_store"], inst["venv_id"])
    for key in ("venv_store", "upgrade", "state_dir"):  # top-level only, for the states' convenience
        inst[key] = top[key]
    inst["environment"] = {
        "HOME": inst["home"],
        "USER": inst["user"],
        "LOGNAME": inst["user"],
        "SHELL": inst["shell"],
        "PATH": f"{inst['venv']}/bin:/usr/local/bin:/usr/bin:/bin",
        "JUPYTER_CONFIG_DIR": f"{inst['home']}/.jupyter",
        **sup["environment"],
    }
    inst["password_source"] = "password" if inst.get("password") else "hashed_password"
    inst["limits_enforcement"] = _limits_enforcement(inst.get("limits") or {}, name)
    nginx["server_name"] = list(nginx["server_name"])
    return inst


# settings the formula owns that pillar `config` may extend: deep-merged, the formula's keys win
EXTENDABLE = (("IdentityProvider", "cookie_options"), ("ServerApp", "tornado_settings"))


def _deep_merge(base, extra):
    out = dict(base)
    for key, value in extra.items():
        out[key] = _deep_merge(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


def _server_config(inst, single):
    """The jupyter_server traitlets of one instance (the JSON config the formula writes,
    without the password hash, which jupyter_config.managed adds): a server behind nginx,
    pillar `config` merged over it."""
    server = inst["server"]
    config = {
        "ServerApp": {
            "ip": server["ip"],
            "port": server["port"],
            "port_retries": 0,  # a busy port must fail, not move where nginx cannot find it
            "base_url": server["base_url"],
            "root_dir": inst["root_dir"],
            "open_browser": False,
            "allow_remote_access": True,  # requests arrive through nginx with the public Host
            "trust_xheaders": True,  # client address and scheme from nginx's X- headers
            "allow_root": False,
        },
        "IdentityProvider": {"token": ""},  # password login only
        "PasswordIdentityProvider": {
            "password_required": True,
            "allow_password_change": False,  # the password belongs to pillar
        },
    }
    if not single:
        # instances under one host name: each its own login cookie, not the host's one
        config["IdentityProvider"]["cookie_name"] = f"jupyter-{inst['name']}"
    if inst["nginx"]["tls"]:
        config["IdentityProvider"]["cookie_options"] = {"secure": True, "samesite": "Lax"}
        # the _xsrf cookie too (jupyter_server's own default for it is the path only)
        config["ServerApp"]["tornado_settings"] = {
            "xsrf_cookie_kwargs": {"path": server["base_url"], "secure": True}
        }
    extra = copy.deepcopy(inst["config"])
    for cls, trait in EXTENDABLE:
        given = (extra.get(cls) or {}).pop(trait, None)
        if given:
            config.setdefault(cls, {})[trait] = _deep_merge(given, config.get(cls, {}).get(trait) or {})
    for cls, traits in extra.items():
        config.setdefault(cls, {}).update(traits)
    return config


def _site_key(inst):
    nginx = inst["nginx"]
    return (tuple(nginx["server_name"]), nginx["listen"])


def _site_names(instances, entries, top, single):
    """{instance name: site name}: instances with one server name and port share a site.
    Only the top level's site keeps the top level's default_server: another block on the
    same port has it only when its instances' own entries say so."""
    if single:
        return {name: inst["nginx"]["site"] for name, inst in instances.items()}
    blocks = {}
    for name in sorted(instances):
        blocks.setdefault(_site_key(instances[name]), []).append(name)
    top_key = (tuple(top["nginx"]["server_name"]), top["nginx"]["listen"])
    names = {}
    for key, members in blocks.items():
        explicit = {_own(entries[m], "nginx", "site") for m in members} - {None}
        if explicit:
            site = sorted(explicit)[0]
        elif key == top_key:
            site = top["nginx"]["site"]
        else:
            site = f"{top['nginx']['site']}-{members[0]}"
        own_default = {_own(entries[m], "nginx", "default_server") for m in members} - {None}
        for member in members:
            names[member] = site
            if key != top_key:
                instances[member]["nginx"]["default_server"] = any(own_default)
    return names


def _derive_acme(site, top):
    """A site's ACME certificate (jupyter:nginx:tls:acme), derived into ``tls:acme``: the
    certbot lineage named after the site and covering every server_name, where certbot
    keeps it, the deploy hook that copies it to the site's TLS paths (what nginx reads),
    the environment certbot needs, and what the certificate nginx reads holds now
    (path, names, serial, expiry; read once per run). top: a settings layer with the
    site's nginx keys. The host-wide paths come from ``jupyter_acme.layout``."""
    tls = site["tls"]
    acme = (tls or {}).get("acme")
    if not acme:
        return
    if "jupyter_acme.layout" not in __salt__:
        raise CommandExecutionError("jupyter:nginx:tls:acme needs the jupyter_acme module: sync the modules")
    where = __salt__["jupyter_acme.layout"]()
    lineage = site["name"]
    server = acme.get("directory") or where["production"]
    hook = [where["hook"], tls["certificate"], tls["certificate_key"], top["nginx"]["service"]]
    acme.update({
        "server": server,
        "lineage": lineage,
        "names": [name.lower() for name in site["server_name"]],
        "live_dir": posixpath.join(where["config_dir"], "live", lineage),
        "renewal_conf": posixpath.join(where["config_dir"], "renewal", f"{lineage}.conf"),
        "webroot": where["webroot"],
        "ca_file": where["ca_file"] if acme.get("ca_bundle") else None,
        "deploy_hook": " ".join(shlex.quote(part) for part in hook),
        # the ACME client reaches a directory given in pillar directly (no_proxy)
        "direct": urlsplit(server).hostname if acme.get("directory") else None,
        "certificate": __salt__["jupyter_acme.certificate_info"](tls["certificate"]),
    })


def _derive_site(site, members, single):
    """One nginx server block: the server-level keys (the same in every member) and
    one location per member instance."""
    first = members[0]
    nginx = copy.deepcopy(first["nginx"])
    site_id = "jupyter_" + site.replace("-", "_")
    out = {
        "name": site,
        "id": site_id,
        "sid": "" if single else f"-{site}",
        "file": f"{nginx['sites_available']}/{site}.conf",
        "enabled": f"{nginx['sites_enabled']}/{site}.conf" if nginx["sites_enabled"] else None,
        **{key: nginx[key] for key in (
            "server_name", "listen", "default_server", "ipv6", "client_max_body_size",
            "login_rate_limit", "hsts_max_age", "extra_directives", "tls",
        )},
        "locations": [],
    }
    tls = out["tls"]
    if tls:
        base = posixpath.join(nginx["tls_dir"], site)
        tls["manage_files"] = bool(tls.get("certificate_pem") or tls.get("certificate_key_pem"))
        tls["certificate"] = tls.get("certificate") or f"{base}.crt"
        tls["certificate_key"] = tls.get("certificate_key") or f"{base}.key"
        _derive_acme(out, first)
    for inst in sorted(members, key=lambda i: i["name"]):
        server = inst["server"]
        out["locations"].append({
            "instance": inst["name"],
            "base_url": server["base_url"],
            "upstream": site_id if single else f"{site_id}_{inst['name']}",
            "ip": server["ip"],
            "port": server["port"],
            "proxy_read_timeout": inst["nginx"]["proxy_read_timeout"],
        })
    return out


def _read_record(state_dir):
    try:
        with open(posixpath.join(state_dir, RECORD), encoding="utf-8") as handle:
            record = json.load(handle)
        return record if isinstance(record, dict) else {}
    except (OSError, ValueError):
        return {}


def _record_entry(inst):
    return {
        "name": inst["name"],
        "program": inst["program"],
        "program_file": inst["program_file"],
        "config_file": inst["config_file"],
        "log_files": inst["log_files"],
        "root_dir": inst["root_dir"],
        "user": inst["user"],
        "home": inst["home"],
        "venv": inst["venv"],
        "site": inst["site"],
        "limits_enforcement": inst["limits_enforcement"],
    }


def _created_directories(result, old_record):
    """Directories the formula makes that do not exist yet: the record keeps them, so
    that clean removes only what the formula created (and only when empty)."""
    wanted = {result["state_dir"], result["venv_store"]}
    for inst in result["instances"].values():
        wanted |= {
            posixpath.dirname(inst["config_file"]),
            inst["supervisor"]["log_dir"],
            inst["root_dir"],
            posixpath.dirname(inst["root_dir"]),
        }
    for site in result["sites"].values():
        if site["tls"] and site["tls"]["manage_files"]:
            wanted.add(posixpath.dirname(site["tls"]["certificate"]))
    created = set(old_record.get("directories") or [])
    for path in wanted:  # with the parents a makedirs would make
        while path and path != "/" and not os.path.lexists(path):
            created.add(path)
            path = posixpath.dirname(path)
    return sorted(created)


def _derive(top, instances, entries, single, os_family):
    result = copy.deepcopy({key: value for key, value in top.items() if key != "instances"})
    result["mode"] = "single" if single else "instances"
    result["os_family"] = os_family
    result["systemd"] = _systemd_booted()
    for name, inst in instances.items():
        _derive_instance(name, inst, entries.get(name) or {}, top, single)
    sites = _site_names(instances, entries, top, single)
    for name, inst in instances.items():
        inst["site"] = sites[name]
    result["instances"] = instances
    result["sites"] = {
        site: _derive_site(site, [instances[n] for n in sorted(instances) if sites[n] == site], single)
        for site in sorted(set(sites.values()))
    }
    result["venvs"] = {}
    for name in sorted(instances):
        inst = instances[name]
        venv = result["venvs"].setdefault(inst["venv_id"], {
            "dir": inst["venv_dir"], "python": inst["python"], "packages": inst["packages"], "instances": [],
        })
        venv["instances"].append(name)
    if single:
        # today's shape at the top level: settings['server']['port'], settings['config_file'] ...
        result.update({key: value for key, value in instances[SINGLE].items() if key not in ("name", "sid")})

    old = _read_record(top["state_dir"])
    programs = {inst["program"] for inst in instances.values()}
    result["removed"] = {
        program: entry for program, entry in sorted((old.get("instances") or {}).items())
        if program not in programs
    }
    # slices of an earlier run no instance runs in now (removed, or its limits dropped):
    # {slice: program that ran in it}
    slices = {(inst["limits_enforcement"] or {}).get("slice") for inst in instances.values()}
    result["stale_slices"] = {
        entry["limits_enforcement"]["slice"]: program
        for program, entry in sorted((old.get("instances") or {}).items())
        if (entry.get("limits_enforcement") or {}).get("slice") not in slices | {None}
    }
    result["removed_sites"] = {
        site: entry for site, entry in sorted((old.get("sites") or {}).items())
        if site not in result["sites"]
    }
    result["record"] = {
        "file": posixpath.join(top["state_dir"], RECORD),
        "data": {
            "version": 1,
            "instances": {inst["program"]: _record_entry(inst) for inst in instances.values()},
            "sites": {
                name: {"files": [path for path in (site["file"], site["enabled"]) if path]
                       + ([site["tls"][k] for k in ("certificate", "certificate_key") if site["tls"].get(f"{k}_pem")]
                          if site["tls"] else [])}
                for name, site in result["sites"].items()
            },
            "directories": [],
        },
    }
    result["record"]["data"]["directories"] = _created_directories(result, old)
    # what jupyter.clean takes away: this run's and every earlier run's
    result["deployed"] = {**result["removed"], **result["record"]["data"]["instances"]}
    result["deployed_sites"] = {**result["removed_sites"], **result["record"]["data"]["sites"]}
    return result


# ---------------------------------------------------------------------------
# secrets


def _hide(settings):
    """A copy for display: passwords, private keys and URL credentials hidden."""
    shown = copy.deepcopy(settings)

    def hide_layer(layer):
        for key in PASSWORD_KEYS:
            if layer.get(key):
                layer[key] = HIDDEN
        pip = layer.get("pip") or {}
        for key in ("index_url", "proxy"):
            if pip.get(key):
                pip[key] = _hidden_url(pip[key])
        if pip.get("extra_index_urls"):
            pip["extra_index_urls"] = [_hidden_url(url) for url in pip["extra_index_urls"]]
        tls = (layer.get("nginx") or {}).get("tls") or {}
        if tls.get("certificate_key_pem"):
            tls["certificate_key_pem"] = HIDDEN

    hide_layer(shown)
    for inst in (shown.get("instances") or {}).values():
        hide_layer(inst)
    for site in (shown.get("sites") or {}).values():
        if (site.get("tls") or {}).get("certificate_key_pem"):
            site["tls"]["certificate_key_pem"] = HIDDEN
    return shown


# ---------------------------------------------------------------------------
# the pipeline


def _validate_and_derive(pillar, saltenv, os_family, require_password):
    check = __salt__
    osmap = _formula_yaml("osfamilymap.yaml", saltenv)
    if os_family not in osmap:
        raise CommandExecutionError(
            f"os family '{os_family}' is not supported (known: {', '.join(sorted(osmap))})"
        )
    defaults = _merge(_formula_yaml("defaults.yaml", saltenv)["jupyter"], osmap[os_family])
    # one schema walk of the merged top level, instances' own entries included
    # (their errors are named jupyter:instances:NAME:...)
    top, errors = check["jupyter_pillar.check_layer"](_merge(defaults, pillar), "jupyter", True)
    if errors:
        return None, errors
    raw_instances = top.pop("instances", None)
    entries, instances, paths = {}, {}, {}
    if raw_instances is None:
        single = True
        instances[SINGLE] = _instance_layer(top, {})
        paths[SINGLE] = "jupyter"
    else:
        single = False
        for name, entry in raw_instances.items():
            entries[name] = entry or {}
            paths[name] = f"jupyter:instances:{name}"
            instances[name] = _instance_layer(top, entries[name])
    # derive first (paths the checks need: program names, config files, root_dirs),
    # then check the classes of danger on the derived values
    result = _derive(top, instances, entries, single, os_family)
    # jupyter.clean (require_password False) removes only what the record names: the
    # rules about the host's accounts and directories must not stop it half way
    facts = check["jupyter_pillar.gather_facts"](result) if require_password else {}
    for name, inst in result["instances"].items():
        errors += check["jupyter_pillar.check_instance"](inst, paths[name], facts, require_password)
    if not single:
        errors += check["jupyter_pillar.check_instances"](result["instances"], facts)
    if errors:
        return None, errors
    # checked: each instance now sees its site's TLS (with the derived file paths), and
    # gets the jupyter_server config the formula writes for it
    for inst in result["instances"].values():
        inst["nginx"]["tls"] = result["sites"][inst["site"]]["tls"]
        inst["server_config"] = _server_config(inst, single)
    if single:
        result["server_config"] = result["instances"][SINGLE]["server_config"]
    return result, errors


def settings(pillar=None, saltenv=None, os_family=None, require_password=True, reveal_secrets=False):
    """
    Return the formula's settings for this minion: ``jupyter/defaults.yaml``, the
    os-family values of ``jupyter/osfamilymap.yaml``, pillar ``jupyter`` and each
    instance's entry merged (in that order), validated, with every default filled in
    and every path derived.

    The top level has the pillar's own shape (``settings['server']['port']``); without
    ``instances`` it holds the one server's values, as always. ``instances`` maps each
    instance (``jupyter`` for a pillar without instances) to its settings, ``sites``
    each nginx server block to its locations, ``venvs`` each virtualenv to the
    instances that share it, ``removed`` what a previous run deployed and this pillar
    no longer names. Secrets are shown as ``<hidden>``.

    Raises an error naming every bad pillar key, so that a bad pillar stops a state
    run at render time, before anything on the host changes.

    pillar
        Use this dict instead of the minion's pillar ``jupyter`` (for trying values).

    os_family
        Use this os family instead of the minion's ``os_family`` grain.

    require_password
        False accepts a pillar without password and skips the rules about the host's
        accounts and directories (what ``jupyter.clean`` needs: it removes only what
        the formula's record names).

    reveal_secrets
        For the formula's own states: the real values instead of ``<hidden>``. They
        call it inside the state, so secrets are never state arguments.

    CLI Example:

    .. code-block:: bash

        salt '*' jupyter.settings
        salt '*' jupyter.settings pillar='{"server": {"port": 9999}}'
    """
    saltenv = saltenv or __opts__.get("saltenv") or "base"
    if pillar is None:
        pillar = _pillar("jupyter", {})
    if not isinstance(pillar, dict):
        raise SaltInvocationError(
            f"Invalid pillar: jupyter: expected a mapping, got {type(pillar).__name__}"
        )
    os_family = os_family or __grains__.get("os_family", "Debian")
    key = hashlib.sha256(
        json.dumps([pillar, saltenv, os_family, bool(require_password)], sort_keys=True, default=str).encode()
    ).hexdigest()
    cache = __context__.setdefault(_CONTEXT, {})
    if key not in cache:
        result, errors = _validate_and_derive(copy.deepcopy(pillar), saltenv, os_family, require_password)
        cache[key] = (result, errors)
    result, errors = cache[key]
    if errors:
        raise SaltInvocationError(
            "Invalid pillar (nothing was changed):\n" + "\n".join(f"  - {err}" for err in errors)
        )
    return copy.deepcopy(result) if reveal_secrets else _hide(result)
