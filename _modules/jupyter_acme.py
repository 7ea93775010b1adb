"""
ACME certificates of the jupyter formula: Debian's ``certbot`` with the webroot method,
through the formula's own nginx.

One certificate per nginx site, a certbot lineage named after the site, covering every
``server_name``. certbot keeps it under ``/etc/letsencrypt``; its deploy hook (a script
of the formula, recorded as the lineage's ``renew_hook``) copies the certificate and key
to the site's TLS paths (``<tls_dir>/<site>.crt`` and ``.key``), runs ``nginx -t`` and
reloads nginx. So nginx never reads certbot's directories, a renewal that nginx rejects
never goes live, and certbot's own schedule (its systemd timer, or a cron entry) renews
without Salt.

The functions read the site's derived values from ``jupyter.settings`` (``tls:acme``;
see ``_derive_acme`` there) and the files on disk; they never print or return key
material, and certbot's output is shown only after :py:func:`mask`.

Which lineages are the formula's: those whose ``renew_hook`` runs the formula's hook.
``jupyter.clean`` deletes those, and nothing else of certbot's.
"""

import datetime
import logging
import os
import posixpath
import re
import secrets
import shlex
import subprocess
import tempfile
import time
import urllib.error
import urllib.request

from salt.exceptions import CommandExecutionError, SaltInvocationError

try:
    from cryptography import x509
    from cryptography.x509.oid import NameOID

    HAS_CRYPTOGRAPHY = True
except ImportError:  # pragma: no cover - Salt ships cryptography
    HAS_CRYPTOGRAPHY = False

log = logging.getLogger(__name__)

__virtualname__ = "jupyter_acme"

CERTBOT = "certbot"
HOOK_NAME = "jupyter-acme-deploy-hook"
# where the formula's ACME machinery lives on a host (jupyter._derive_acme reads it here)
LAYOUT = {
    # root's, 0755: nginx's workers read the challenge files, nobody else writes them
    "home": "/var/lib/jupyter-formula-acme",
    "webroot": "/var/lib/jupyter-formula-acme/webroot",
    # the system's CAs plus every acme:ca_bundle: certbot's REQUESTS_CA_BUNDLE
    "ca_file": "/var/lib/jupyter-formula-acme/ca-bundle.pem",
    "hook": f"/usr/local/sbin/{HOOK_NAME}",
    "config_dir": "/etc/letsencrypt",
    # the environment of certbot's own renewals (systemd hosts; cron hosts: the cron file)
    "systemd_dropin": "/etc/systemd/system/certbot.service.d/jupyter-formula.conf",
    "cron_file": "/etc/cron.d/jupyter-formula-certbot",
    "production": "https://acme-v02.api.letsencrypt.org/directory",
    "system_ca_files": ["/etc/ssl/certs/ca-certificates.crt", "/etc/pki/tls/certs/ca-bundle.crt"],
}
# the options of a renewal configuration the formula sets, and their section
RENEWAL_SECTIONS = {"renew_before_expiry": "top", "renew_hook": "renewalparams"}
CERTBOT_TIMEOUT = 900  # seconds: certbot's own network timeouts end sooner
PROBE_TIMEOUT = 10  # seconds for nginx to answer the challenge path after a reload

HIDDEN = "<hidden>"
_PRIVATE_PEM = re.compile(r"-----BEGIN [A-Z0-9 ]*PRIVATE KEY-----.*?(-----END [A-Z0-9 ]*PRIVATE KEY-----|\Z)", re.S)
# JWS parts, nonces, key thumbprints, account keys in JSON: long base64url runs
_BLOB = re.compile(r"(?<![A-Za-z0-9_-])[A-Za-z0-9_-]{40,}={0,2}(?![A-Za-z0-9_-])")
_SECRET_FIELDS = re.compile(r'("(?:d|p|q|dp|dq|qi|k|signature|protected|payload)"\s*:\s*)"[^"]*"')


def __virtual__():
    if not HAS_CRYPTOGRAPHY:
        return (False, "jupyter_acme needs the cryptography library (Salt ships it)")
    return __virtualname__


def layout():
    """
    Where the formula's ACME parts live on this host: the webroot certbot writes
    challenges to, the combined CA file, the deploy hook, certbot's configuration
    directory, the files that give certbot's own renewals their environment, and the
    directory URL used when ``acme:directory`` is null (Let's Encrypt's production).

    CLI Example:

    .. code-block:: bash

        salt '*' jupyter_acme.layout
    """
    return {key: (list(value) if isinstance(value, list) else value) for key, value in LAYOUT.items()}


# ---------------------------------------------------------------------------
# pure helpers


def mask(text):
    """
    ``text`` (certbot's output) with anything that could be key material hidden:
    private-key PEM blocks, JWS and JWK fields, and long base64url runs (nonces,
    thumbprints, tokens). Paths, names, URLs and the CA's messages stay readable.

    CLI Example:

    .. code-block:: bash

        salt '*' jupyter_acme.mask 'text'
    """
    if not text:
        return ""
    text = _PRIVATE_PEM.sub(f"<private key {HIDDEN}>", text)
    text = _SECRET_FIELDS.sub(lambda m: f'{m.group(1)}"{HIDDEN}"', text)
    return _BLOB.sub(HIDDEN, text)


# (cause, pattern, what it means); the first match wins, so the CA-side failures that
# quote a local error come after the local ones
_CAUSES = [
    ("busy", re.compile(r"Another instance of Certbot is already running", re.I),
     "another certbot run holds its lock (certbot's own renewal timer?); the next apply tries again"),
    ("ca_unreachable", re.compile(
        r"(Max retries exceeded|Failed to establish a new connection|NameResolutionError|"
        r"certificate verify failed|SSLError|Unable to reach the ACME server|ProxyError|"
        r"Connection aborted|Read timed out)", re.I),
     "this host cannot reach the ACME server {server} (check acme:directory, acme:ca_bundle, "
     "and that nothing on the way - a proxy, a firewall - stands between)"),
    ("rate_limit", re.compile(r"(rateLimited|rate.?limit|too many (certificates|failed authorizations|new orders|"
                              r"registrations|requests|orders))", re.I),
     "the CA's rate limit was hit; wait until it resets (the CA's message says when) before applying again"),
    ("dns", re.compile(r"(Type:\s+dns\b|DNS problem|NXDOMAIN|no valid A records|no valid AAAA records|"
                       r"No valid IP addresses found|SERVFAIL|could not resolve|no such host)", re.I),
     "DNS does not point here: the CA could not resolve {names} to this host; add A/AAAA records "
     "for every server_name that point to this host"),
    ("dns", re.compile(r"Type:\s+unauthorized\b.*?(Invalid response from|invalid response|404)", re.I | re.S),
     "DNS does not point here (or something in front of port 80 answers for it): the CA fetched "
     "the challenge and got another answer than this host's nginx gives; check the A/AAAA records "
     "of {names}"),
    ("port_80", re.compile(r"(Type:\s+connection\b|Connection refused|Timeout during connect|Timeout after connect|"
                           r"connection reset|i/o timeout|no route to host|network is unreachable|"
                           r"context deadline exceeded|Timeout)", re.I),
     "port 80 is unreachable: the CA could not connect to port 80 of this host; open it to the "
     "internet (firewall, security group, port forward): ACME http-01 validation uses port 80"),
    ("refused", re.compile(r"(Type:\s+(unauthorized|rejectedIdentifier|caa|badCSR|malformed|incorrectResponse|"
                           r"serverInternal|unsupportedIdentifier)\b|rejectedIdentifier|forbidden by policy|"
                           r"Cannot issue for|CAA record|policy forbids|refuses to issue)", re.I),
     "the CA refused to issue a certificate for {names}"),
]
# lines of certbot's output worth quoting in a state comment
_DETAIL = re.compile(r"^\s*(Domain|Type|Detail):|Error|error:|problem|refused|Timeout|rate", re.I)


# one problem the CA reported for one name (certbot's auth_handler report)
_PROBLEM = re.compile(r"^\s*Domain:\s*(\S+)\s*\n\s*Type:\s*(\S+)\s*\n\s*Detail:\s*(.*)$", re.M)


def _cause_of(text):
    for rank, (cause, pattern, why) in enumerate(_CAUSES):
        if pattern.search(text):
            return rank, cause, why
    return len(_CAUSES), "unknown", "certbot failed; its output follows"


def classify(output, names=None, server=None):
    """
    Why certbot failed, from its (masked) output: ``{"cause": ..., "why": ..., "names":
    [...]}`` with cause one of ``dns`` (DNS does not point here), ``port_80`` (port 80
    unreachable), ``rate_limit``, ``refused`` (the CA refused), ``ca_unreachable``,
    ``busy`` or ``unknown``, ``why`` a sentence saying what it means and what to do, and
    ``names`` the names the CA reported that problem for (else ``names`` as given).

    CLI Example:

    .. code-block:: bash

        salt '*' jupyter_acme.classify 'Type: connection ...' '[nb.example.org]'
    """
    text = output or ""
    names = list(names or [])
    problems = [(domain, _cause_of(f"Type: {typ}\nDetail: {detail}")) for domain, typ, detail in _PROBLEM.findall(text)]
    if problems:  # the CA's own report, per name: the first cause in _CAUSES order, with its names
        rank, cause, why = min((found for _, found in problems), key=lambda found: found[0])
        if cause != "unknown":
            names = [domain for domain, found in problems if found[0] == rank]
        else:
            rank, cause, why = _cause_of(text)
    else:
        rank, cause, why = _cause_of(text)
    what = {"names": ", ".join(names) or "the site's names", "server": server or "(the ACME directory)"}
    return {"cause": cause, "why": why.format(**what), "names": names}


def _details(output, limit=12):
    """The lines of certbot's output that say why (the CA's problems, errors), else its tail."""
    lines = [line.rstrip() for line in (output or "").splitlines() if line.strip()]
    picked = [line for line in lines if _DETAIL.search(line) and "--debug" not in line]
    return "\n".join((picked or lines)[-limit:])


def certificate_info(path):
    """
    What a PEM certificate file holds: ``{"path", "names" (its DNS names), "serial"
    (hex), "not_before", "not_after" (ISO 8601, UTC), "issuer"}``, or None when the
    file does not exist or holds no certificate that can be read.

    CLI Example:

    .. code-block:: bash

        salt '*' jupyter_acme.certificate_info /etc/ssl/jupyter/jupyter.crt
    """
    try:
        with open(path, "rb") as handle:
            cert = x509.load_pem_x509_certificates(handle.read())[0]
    except (OSError, ValueError, IndexError):
        return None
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        names = san.get_values_for_type(x509.DNSName)
    except x509.ExtensionNotFound:
        names = [attr.value for attr in cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)]
    issuer = cert.issuer.get_attributes_for_oid(NameOID.COMMON_NAME)
    return {
        "path": path,
        "names": sorted(name.lower() for name in names),
        "serial": f"{cert.serial_number:x}",
        "not_before": cert.not_valid_before_utc.strftime("%Y-%m-%dT%H:%M:%SZ"),
        "not_after": cert.not_valid_after_utc.strftime("%Y-%m-%dT%H:%M:%SZ"),
        "issuer": issuer[0].value if issuer else cert.issuer.rfc4514_string(),
    }


def _parse_time(stamp):
    return datetime.datetime.strptime(stamp, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=datetime.timezone.utc)


# ---------------------------------------------------------------------------
# certbot's renewal configuration (configobj: `key = value`, [section], [[subsection]])


def _unquote(value):
    value = value.strip()
    if len(value) >= 2 and value[0] == value[-1] and value[0] in "'\"":
        return value[1:-1]
    return value


def read_renewal_conf(path):
    """
    A lineage's renewal configuration as ``{"top": {...}, "renewalparams": {...}}``
    (subsections left out), or None when the file does not exist.

    CLI Example:

    .. code-block:: bash

        salt '*' jupyter_acme.read_renewal_conf /etc/letsencrypt/renewal/jupyter.conf
    """
    try:
        with open(path, encoding="utf-8") as handle:
            text = handle.read()
    except FileNotFoundError:
        return None
    out, section = {"top": {}}, "top"
    for line in text.splitlines():
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            continue
        if stripped.startswith("["):
            depth = len(stripped) - len(stripped.lstrip("["))
            section = stripped.strip("[]").strip() if depth == 1 else None
            if section:
                out.setdefault(section, {})
            continue
        if section and "=" in stripped:
            key, value = stripped.split("=", 1)
            out[section][key.strip()] = _unquote(value.split(" #", 1)[0])
    out.setdefault("renewalparams", {})
    return out


def _set_options(text, updates):
    """text with ``{(section, key): value}`` set: section 'top' is the part before the
    first [section]; an existing line (commented out in the top part) is replaced,
    otherwise the option is added at the start of its section."""
    lines = text.splitlines()
    for (section, key), value in updates.items():
        if any(ch in value for ch in ",#\"'\n"):
            raise SaltInvocationError(f"{key}: {value!r} cannot be written unquoted into certbot's renewal file")
        new = f"{key} = {value}"
        option = re.compile(rf"^\s*{'#?' if section == 'top' else ''}\s*{re.escape(key)}\s*=")
        start, end = 0, len(lines)
        if section == "top":
            end = next((i for i, line in enumerate(lines) if line.lstrip().startswith("[")), len(lines))
        else:
            header = next((i for i, line in enumerate(lines) if line.strip() == f"[{section}]"), None)
            if header is None:
                lines += ["", f"[{section}]"]
                header = len(lines) - 1
            start = header + 1
            end = next((i for i in range(start, len(lines)) if lines[i].lstrip().startswith("[")), len(lines))
        hits = [i for i in range(start, end) if option.match(lines[i])]
        plain = [i for i in hits if not lines[i].lstrip().startswith("#")]
        at = (plain or hits or [None])[0]
        if at is None:
            lines.insert(start, new)
        else:
            lines[at] = new
    return "\n".join(lines) + "\n"


def _write_like(path, text):
    """Replace path's contents atomically, keeping its mode and owner."""
    stat = os.stat(path)
    handle, tmp = tempfile.mkstemp(dir=posixpath.dirname(path), prefix=".jupyter-formula.")
    try:
        os.fchmod(handle, stat.st_mode & 0o7777)
        os.fchown(handle, stat.st_uid, stat.st_gid)
        with os.fdopen(handle, "w", encoding="utf-8") as out:
            out.write(text)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def _owned(conf):
    """Whether a renewal configuration belongs to the formula: its hook runs the formula's script."""
    hook = (conf or {}).get("renewalparams", {}).get("renew_hook") or ""
    try:
        first = shlex.split(hook)[0] if hook else ""
    except ValueError:
        return False
    return posixpath.basename(first) == HOOK_NAME


def lineages(config_dir=None):
    """
    The certbot lineages the formula made on this host (their ``renew_hook`` runs the
    formula's deploy hook): ``{name: {"renewal_conf", "live_dir", "server", "copies":
    [certificate, key] the hook deploys to}}``. Other lineages are never listed.

    CLI Example:

    .. code-block:: bash

        salt '*' jupyter_acme.lineages
    """
    config_dir = config_dir or LAYOUT["config_dir"]
    renewal = posixpath.join(config_dir, "renewal")
    try:
        names = sorted(os.listdir(renewal))
    except FileNotFoundError:
        return {}
    out = {}
    for entry in names:
        if not entry.endswith(".conf"):
            continue
        conf = read_renewal_conf(posixpath.join(renewal, entry))
        if not _owned(conf):
            continue
        args = shlex.split(conf["renewalparams"]["renew_hook"])[1:]
        name = entry[: -len(".conf")]
        out[name] = {
            "renewal_conf": posixpath.join(renewal, entry),
            "live_dir": posixpath.join(config_dir, "live", name),
            "server": conf["renewalparams"].get("server"),
            "copies": args[:2],
        }
    return out


# ---------------------------------------------------------------------------
# a site's certificate


def _site(site_name):
    settings = __salt__["jupyter.settings"]()
    site = settings["sites"].get(site_name)
    if site is None:
        raise SaltInvocationError(f"no nginx site named {site_name!r} (sites: {', '.join(settings['sites'])})")
    if not (site["tls"] or {}).get("acme"):
        raise SaltInvocationError(f"site {site_name!r} has no jupyter:nginx:tls:acme")
    return settings, site


def _same_bytes(one, two):
    try:
        with open(one, "rb") as left, open(two, "rb") as right:
            return left.read() == right.read()
    except OSError:
        return False


def status(site, now=None):
    """
    The state of a site's ACME certificate and what an apply has to do about it.

    Returns ``{"lineage", "exists", "owned", "certificate" (the lineage's current
    certificate, see :py:func:`certificate_info`), "served" (the copy nginx reads),
    "server", "reissue": [reasons to obtain a certificate], "renewal": {option: value}
    to set in the lineage's renewal configuration (renew_before_expiry, renew_hook), "deploy": whether the copies
    nginx reads differ from the lineage's}``. Reads files only; nothing is changed.

    CLI Example:

    .. code-block:: bash

        salt '*' jupyter_acme.status jupyter
    """
    _, site = _site(site) if isinstance(site, str) else (None, site)
    tls, acme = site["tls"], site["tls"]["acme"]
    conf = read_renewal_conf(acme["renewal_conf"])
    cert = certificate_info(posixpath.join(acme["live_dir"], "cert.pem"))
    out = {
        "lineage": acme["lineage"],
        "exists": conf is not None,
        "owned": conf is not None and _owned(conf),
        "certificate": cert,
        "served": certificate_info(tls["certificate"]),
        "server": (conf or {}).get("renewalparams", {}).get("server"),
        "reissue": [],
        "renewal": {},
        "deploy": False,
    }
    wanted = sorted(name.lower() for name in acme["names"])
    if conf is None or cert is None:
        out["reissue"].append("no certificate yet")
        return out
    if cert["names"] != wanted:
        added = sorted(set(wanted) - set(cert["names"]))
        gone = sorted(set(cert["names"]) - set(wanted))
        change = "; ".join(filter(None, [
            f"add {', '.join(added)}" if added else "", f"drop {', '.join(gone)}" if gone else "",
        ]))
        out["reissue"].append(f"the names changed ({change})")
    if out["server"] != acme["server"]:
        out["reissue"].append(f"the ACME directory changed ({out['server']} -> {acme['server']})")
    now = now or datetime.datetime.now(datetime.timezone.utc)
    left = _parse_time(cert["not_after"]) - now
    if left <= datetime.timedelta(days=acme["renew_before_days"]):
        out["reissue"].append(
            f"it expires on {cert['not_after']}, within renew_before_days ({acme['renew_before_days']})"
        )
    params, top = conf["renewalparams"], conf["top"]
    if params.get("renew_hook") != acme["deploy_hook"]:
        out["renewal"]["renew_hook"] = acme["deploy_hook"]
    before = f"{acme['renew_before_days']} days"
    if top.get("renew_before_expiry") != before:
        out["renewal"]["renew_before_expiry"] = before
    live = acme["live_dir"]
    out["deploy"] = not (
        _same_bytes(posixpath.join(live, "fullchain.pem"), tls["certificate"])
        and _same_bytes(posixpath.join(live, "privkey.pem"), tls["certificate_key"])
    )
    return out


def configure_renewal(site):
    """
    Make the lineage's renewal configuration renew as the pillar says: its
    ``renew_before_expiry`` is ``acme:renew_before_days`` (certbot's own timer then
    renews at the same point an apply would) and its ``renew_hook`` the formula's
    deploy hook for the site's current TLS paths. Returns the options changed.

    CLI Example:

    .. code-block:: bash

        salt '*' jupyter_acme.configure_renewal jupyter
    """
    _, site = _site(site) if isinstance(site, str) else (None, site)
    wanted = status(site)["renewal"]
    if not wanted:
        return {}
    path = site["tls"]["acme"]["renewal_conf"]
    with open(path, encoding="utf-8") as handle:
        text = handle.read()
    _write_like(path, _set_options(text, {(RENEWAL_SECTIONS[key], key): value for key, value in wanted.items()}))
    return wanted


def _environment(acme, base=None):
    """The environment certbot runs in for an acme settings dict: the CA file through
    REQUESTS_CA_BUNDLE, and the directory's host reached directly (no_proxy)."""
    env = dict(os.environ if base is None else base)
    env.setdefault("PATH", "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin")
    if acme.get("ca_file"):
        env["REQUESTS_CA_BUNDLE"] = acme["ca_file"]
    if acme.get("direct"):
        for key in ("no_proxy", "NO_PROXY"):
            hosts = [h for h in (env.get(key) or "").split(",") if h.strip()]
            if acme["direct"] not in hosts:
                hosts.append(acme["direct"])
            env[key] = ",".join(hosts)
    return env


def _run(cmd, env, timeout):
    try:
        proc = subprocess.run(
            cmd, env=env, stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=timeout, check=False
        )
    except FileNotFoundError:
        return 127, f"{cmd[0]} is not installed"
    except subprocess.TimeoutExpired as exc:
        out = (exc.stdout or "") + (exc.stderr or "")
        out = out.decode(errors="replace") if isinstance(out, bytes) else out
        return 124, f"{out}\n{cmd[0]} did not finish within {timeout} s (Timeout)"
    return proc.returncode, (proc.stdout or "") + (proc.stderr or "")


def certbot_command(site, force=False):
    """
    The certbot command line that obtains a site's certificate (``force``: re-issues
    it now, accepting a changed name list), as :py:func:`obtain` runs it.

    CLI Example:

    .. code-block:: bash

        salt '*' jupyter_acme.certbot_command jupyter
    """
    _, site = _site(site) if isinstance(site, str) else (None, site)
    acme = site["tls"]["acme"]
    cmd = [
        CERTBOT, "certonly", "--non-interactive", "--agree-tos", "--no-eff-email",
        "--email", acme["email"], "--server", acme["server"],
        "--webroot", "--webroot-path", acme["webroot"],
        "--cert-name", acme["lineage"], "--key-type", "ecdsa",
        "--deploy-hook", acme["deploy_hook"],
    ]
    for name in acme["names"]:
        cmd += ["-d", name]
    if force:
        # re-issue now (names, directory or expiry say so), and accept a changed name list
        cmd += ["--force-renewal", "--renew-with-new-domains"]
    return cmd


def obtain(site, force=False, timeout=CERTBOT_TIMEOUT):
    """
    Run certbot (webroot) for a site: a new certificate, or with ``force`` a re-issue
    of its lineage (names changed, another directory, near expiry). certbot runs the
    formula's deploy hook, which puts the certificate where nginx reads it and reloads.

    Returns ``{"ok": bool, "cause", "why", "details", "output"}``; on failure ``cause``
    says why (:py:func:`classify`) and ``details``/``output`` are masked.

    CLI Example:

    .. code-block:: bash

        salt '*' jupyter_acme.obtain jupyter
    """
    _, site = _site(site) if isinstance(site, str) else (None, site)
    acme = site["tls"]["acme"]
    started = time.monotonic()
    code, output = _run(certbot_command(site, force), _environment(acme), timeout)
    output = mask(output)
    result = {"ok": code == 0, "seconds": round(time.monotonic() - started, 1), "output": output}
    if code != 0:
        result.update(classify(output, acme["names"], acme["server"]))
        result["details"] = _details(output)
    return result


def deploy(site, timeout=120):
    """
    Run the formula's deploy hook for a site's lineage as certbot would (copy the
    certificate and key to the site's TLS paths, ``nginx -t``, reload nginx). Returns
    ``{"ok": bool, "output": the hook's words}``.

    CLI Example:

    .. code-block:: bash

        salt '*' jupyter_acme.deploy jupyter
    """
    _, site = _site(site) if isinstance(site, str) else (None, site)
    acme = site["tls"]["acme"]
    env = _environment({}, base={"PATH": os.environ.get("PATH", "")})
    env["RENEWED_LINEAGE"] = acme["live_dir"]
    env["RENEWED_DOMAINS"] = " ".join(acme["names"])
    code, output = _run(shlex.split(acme["deploy_hook"]), env, timeout)
    return {"ok": code == 0, "output": mask(output).strip()}


def delete(lineage, config_dir=None):
    """
    Delete a certbot lineage the formula made (``certbot delete --cert-name``): its
    certificates, keys and renewal configuration. A lineage the formula did not make
    is refused. Returns ``{"ok": bool, "output"}``.

    CLI Example:

    .. code-block:: bash

        salt '*' jupyter_acme.delete jupyter
    """
    config_dir = config_dir or LAYOUT["config_dir"]
    conf = read_renewal_conf(posixpath.join(config_dir, "renewal", f"{lineage}.conf"))
    if conf is None:
        return {"ok": True, "output": f"no certbot lineage named {lineage}"}
    if not _owned(conf):
        raise CommandExecutionError(
            f"certbot lineage {lineage!r} was not made by the jupyter formula (its renew_hook does not run "
            f"{HOOK_NAME}); it is left alone"
        )
    cmd = [CERTBOT, "delete", "--non-interactive", "--cert-name", lineage, "--config-dir", config_dir]
    code, output = _run(cmd, _environment({}), 300)
    return {"ok": code == 0, "output": mask(output).strip()}


# ---------------------------------------------------------------------------
# serving the challenge before certbot runs

SITE_TEMPLATE = "salt://jupyter/files/nginx-site.conf.jinja"
CHALLENGE_TEMPLATE = "salt://jupyter/files/acme-challenge-site.conf.jinja"


def _challenge_files(settings, site, saltenv):
    """{path: wanted} for jupyter_nginx.replace_files: the site as it must be while certbot
    runs. With a certificate deployed, the full site (the names the pillar wants, the
    current certificate); without one, a site that answers ACME challenges only (the
    full site cannot load without a certificate). As jupyter_nginx.sites does, the
    distribution's default site and the sites of earlier runs make way."""
    tls = site["tls"]
    deployed = os.path.exists(tls["certificate"]) and os.path.exists(tls["certificate_key"])
    template = SITE_TEMPLATE if deployed else CHALLENGE_TEMPLATE
    files = {
        site["file"]: {
            "contents": __salt__["jupyter_nginx.render"](template, {"site": site}, saltenv),
            "mode": 0o644,
        }
    }
    if site["enabled"]:
        files[site["enabled"]] = {"link": site["file"]}
    for entry in (settings.get("removed_sites") or {}).values():
        for path in entry.get("files") or []:
            files.setdefault(path, None)
    nginx = settings["nginx"]
    if site["default_server"] and nginx.get("distro_default_site"):
        files[nginx["distro_default_site"]] = None
    return files, ("site" if deployed else "challenge-only site")


def _nginx_up(service, reload):
    """nginx running, and reloaded when its files changed (the init script where PID 1 is
    not systemd: Salt's service functions use it there)."""
    if not __salt__["service.status"](service):
        return bool(__salt__["service.start"](service)) and bool(__salt__["service.status"](service))
    if reload:
        return bool(__salt__["service.reload"](service))
    return True


def probe(site, timeout=PROBE_TIMEOUT):
    """
    Check that this host's nginx answers the ACME challenge path on port ``listen``
    for each of the site's names: a random file in the webroot is fetched from
    127.0.0.1 with each name as Host. Returns ``{"ok": bool, "message"}``.

    CLI Example:

    .. code-block:: bash

        salt '*' jupyter_acme.probe jupyter
    """
    _, site = _site(site) if isinstance(site, str) else (None, site)
    acme = site["tls"]["acme"]
    directory = posixpath.join(acme["webroot"], ".well-known", "acme-challenge")
    os.makedirs(directory, mode=0o755, exist_ok=True)
    token = f"jupyter-formula-probe-{secrets.token_hex(8)}"
    path = posixpath.join(directory, token)
    with open(path, "w", encoding="ascii") as handle:
        handle.write(token)
    os.chmod(path, 0o644)
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    pending = list(acme["names"])
    last = ""
    deadline = time.monotonic() + timeout
    try:
        while pending:
            name = pending[0]
            request = urllib.request.Request(
                f"http://127.0.0.1:{site['listen']}/.well-known/acme-challenge/{token}", headers={"Host": name}
            )
            try:
                with opener.open(request, timeout=3) as resp:
                    body = resp.read().decode(errors="replace")
                if body == token:
                    pending.pop(0)
                    continue
                last = f"{name}: HTTP {resp.status}, not the challenge file"
            except urllib.error.HTTPError as exc:
                last = f"{name}: HTTP {exc.code}"
            except OSError as exc:
                last = f"{name}: {exc}"
            if time.monotonic() > deadline:
                return {"ok": False, "message": f"nginx on this host does not serve the ACME challenge path "
                                                f"on port {site['listen']} ({last})"}
            time.sleep(0.2)
    finally:
        os.unlink(path)
    return {"ok": True, "message": f"nginx serves the ACME challenge path for {', '.join(acme['names'])}"}


def serve_challenge(site, saltenv="base"):
    """
    Before certbot runs: put the site nginx must serve in place through
    ``jupyter_nginx.replace_files`` (kept only when ``nginx -t`` passes in the whole
    configuration), start or reload nginx, and check that it answers the challenge
    path for every name (:py:func:`probe`). Without a deployed certificate that site
    serves ACME challenges only, on port ``listen``; the Jupyter site goes on TLS once
    the certificate is there (``jupyter_nginx.sites``).

    Returns ``{"ok": bool, "changed": {path: action}, "served": "site" |
    "challenge-only site", "message"}``.

    CLI Example:

    .. code-block:: bash

        salt '*' jupyter_acme.serve_challenge jupyter
    """
    settings, site = _site(site) if isinstance(site, str) else (__salt__["jupyter.settings"](), site)
    files, served = _challenge_files(settings, site, saltenv)
    changed = __salt__["jupyter_nginx.pending"](files)
    if changed:
        result = __salt__["jupyter_nginx.replace_files"](files)
        if not result["ok"]:
            return {"ok": False, "changed": {}, "served": served,
                    "message": f"nginx rejected the {served} for the ACME challenge; every file was put back:\n"
                               f"{result['message']}"}
    if not _nginx_up(settings["nginx"]["service"], bool(changed)):
        return {"ok": False, "changed": changed, "served": served,
                "message": f"nginx ({settings['nginx']['service']}) is not running and could not be started"}
    check = probe(site)
    return {"ok": check["ok"], "changed": changed, "served": served, "message": check["message"]}
