"""
``jupyter.doctor``: this host checked end to end, from the host, as monitoring calls it
(``salt-call jupyter.doctor``, ``salt 'node*' jupyter.doctor``).

It shares the ``jupyter`` virtualname with ``_modules/jupyter.py``: Salt's loader finds
it by the file name's partial match. It reads ``jupyter.settings`` (the derived values:
instances, sites, locations, paths) and changes nothing on the host: no file is written,
no program started or stopped, nginx is not reloaded.

How each check decides is in :py:func:`doctor`'s docstring. Two facts shaped it:

- Unauthenticated, Jupyter refuses a websocket (its own 403) *before* tornado looks at
  ``Upgrade``, ``Connection`` or ``Origin`` (``@ws_authenticated`` runs first), so an
  unauthenticated probe proves that nginx routes to Jupyter, not that the websocket
  headers arrive. With the instance's password in pillar the doctor logs in through the
  login form and opens ``<base_url>api/events/subscribe`` (a websocket that needs no
  kernel and creates nothing), where tornado's own checks do run; without it, the
  headers are read from the live configuration (``nginx -T``), and the result says so.
- Unauthenticated, nothing Jupyter answers reflects ``X-Forwarded-Proto`` or
  ``X-Scheme``; the client address does show, in Jupyter's own log line of the probe.
"""

import concurrent.futures
import datetime
import difflib
import errno
import grp
import hashlib
import http.client
import ipaddress
import json
import logging
import os
import re
import shutil
import socket
import ssl
import stat
import subprocess
import time
import urllib.parse
import uuid

import psutil
from salt.exceptions import CommandExecutionError, SaltInvocationError

try:
    from cryptography import x509
    from cryptography.hazmat.primitives.serialization import Encoding

    HAS_CRYPTOGRAPHY = True
except ImportError:  # pragma: no cover - Salt ships cryptography
    HAS_CRYPTOGRAPHY = False

log = logging.getLogger(__name__)

__virtualname__ = "jupyter"

# the same template the formula's sites state uses (_states/jupyter_nginx.py)
SITE_TEMPLATE = "salt://jupyter/files/nginx-site.conf.jinja"
HASH_TRAIT = ("PasswordIdentityProvider", "hashed_password")
CONFIG_MODE = 0o640  # root:<group>, as jupyter_config.managed writes it
CONFIG_UID = 0
NGINX = "nginx"

# The probes come from their own loopback address, so that Jupyter's log line shows
# whether the client address arrived (nginx itself talks to Jupyter from 127.0.0.1),
# and carry a forged X-Real-IP from TEST-NET-1 that nginx must replace.
PROBE_SOURCE = "127.0.0.2"
DECOY_IP = "192.0.2.1"
USER_AGENT = "jupyter-formula-doctor"
WS_KEY = "ZG9jdG9yLXByb2JlLWtleQ=="  # any 16 bytes, base64: the doctor reads no frames
MAX_BODY = 65536
LOG_WAIT = 1.0  # seconds for the probe's line to show in Jupyter's log
CHECKS = ("settings", "nginx", "program", "login", "websocket", "proxy_headers", "tls", "disk", "drift")
LOCATION_CHECKS = ("login", "websocket", "proxy_headers")
WS_HEADERS = ("upgrade", "connection", "host")
FORWARD_HEADERS = ("x-real-ip", "x-forwarded-for", "x-forwarded-proto", "x-scheme")

_NGINX_PAGE = re.compile(r"<hr>\s*<center>\s*nginx(?:/[\w.]+)?\s*</center>", re.I)
_NGINX_TITLE = re.compile(r"<title>\s*(\d{3}[^<]*)</title>", re.I)
_JUPYTER_ERROR = re.compile(r'<div class="error">\s*<h1>\s*(\d{3})\s*:', re.I)
_LOGIN_FORM = re.compile(r'<form\b[^>]*\baction="([^"]*)"[^>]*\bmethod="post"', re.I)
_PASSWORD_INPUT = re.compile(r'<input\b[^>]*\bname="password"', re.I)
_TORNADO_UPGRADE = 'Can "Upgrade" only to "WebSocket".'
_TORNADO_CONNECTION = '"Connection" must be "Upgrade".'
_TORNADO_ORIGIN = "Cross origin websockets not allowed"
_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([KMGT]?)i?B?\s*$", re.I)
_NGINX_TOKEN = re.compile(r"""\s+|#[^\n]*|"(?:\\.|[^"\\])*"|'(?:\\.|[^'\\])*'|[{};]|[^\s{};"']+""")


def __virtual__():
    # Never (False, reason) here: the loader would mark the whole ``jupyter``
    # virtualname missing, and jupyter.settings with it.
    return __virtualname__


def _entry(check, target, ok, detail):
    return {"check": check, "target": target, "ok": ok, "detail": detail}


def _skipped(check, target, why):
    """A check that did not run because another one already names the cause."""
    return _entry(check, target, None, f"skipped: {why}")


# ---------------------------------------------------------------------------
# parameters


def _size(value, name):
    """Bytes from an int or '512M' / '1G' (powers of 1024)."""
    if isinstance(value, bool):
        raise SaltInvocationError(f"{name}: expected bytes or a size like 1G, got {value!r}")
    if isinstance(value, (int, float)) and value >= 0:
        return int(value)
    match = _SIZE.match(str(value))
    if not match:
        raise SaltInvocationError(f"{name}: expected bytes or a size like 1G, got {value!r}")
    number, unit = float(match.group(1)), match.group(2).upper()
    return int(number * 1024 ** " KMGT".index(unit or " "))


def _number(value, name, low=0.0, high=None):
    try:
        number = float(value)
    except (TypeError, ValueError):
        number = None
    if isinstance(value, bool) or number is None or number < low or (high is not None and number > high):
        limits = f"from {low:g}" + (f" to {high:g}" if high is not None else "")
        raise SaltInvocationError(f"{name}: expected a number {limits}, got {value!r}")
    return number


# ---------------------------------------------------------------------------
# nginx: -t, and the live configuration (-T)


def _nginx_dump(timeout):
    """``nginx -T`` once: its verdict in nginx's words (what ``nginx -t`` says) and the
    dump of every file of the live configuration."""
    try:
        proc = subprocess.run([NGINX, "-T"], capture_output=True, text=True, timeout=timeout, check=False)
    except FileNotFoundError:
        return {"ok": False, "message": f"{NGINX} is not installed", "dump": ""}
    except subprocess.TimeoutExpired:
        return {"ok": False, "message": f"{NGINX} -t did not finish within {timeout:g} s", "dump": ""}
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    # the lines that say why (as jupyter_nginx.config_test shows them), warnings included
    why = [line for line in lines if "test failed" not in line and "syntax is ok" not in line
           and "test is successful" not in line]
    return {"ok": proc.returncode == 0, "message": "\n".join(why or lines), "dump": proc.stdout}


def _unquote(token):
    if len(token) >= 2 and token[0] == token[-1] and token[0] in "'\"":
        return re.sub(r"\\(.)", r"\1", token[1:-1])
    return token


def parse_nginx(text):
    """nginx configuration text as a tree: ``[(name, args, children or None)]``."""
    root = []
    stack, words = [root], []
    for match in _NGINX_TOKEN.finditer(text):
        token = match.group(0)
        if token.isspace() or token.startswith("#"):
            continue
        if token == ";":
            if words:
                stack[-1].append((words[0], words[1:], None))
            words = []
        elif token == "{":
            node = (words[0] if words else "", words[1:], [])
            stack[-1].append(node)
            stack.append(node[2])
            words = []
        elif token == "}":
            if len(stack) > 1:
                stack.pop()
            words = []
        else:
            words.append(_unquote(token))
    return root


def _dump_files(dump):
    """{path: text} of an ``nginx -T`` dump (each file is balanced on its own)."""
    parts = re.split(r"^# configuration file (.+):[ \t]*$", dump, flags=re.M)
    return {parts[i].strip(): parts[i + 1] for i in range(1, len(parts) - 1, 2)}


def _directives(nodes, name):
    return [args for key, args, children in nodes if children is None and key == name]


def proxied_locations(dump, upstream):
    """
    The ``location`` blocks of the live configuration that ``proxy_pass`` to
    ``upstream``, each as ``{"location", "file", "headers": {lower name: value},
    "http_version"}``. ``proxy_set_header`` and ``proxy_http_version`` are the
    effective ones: the innermost enclosing block that sets any (nginx's inheritance;
    the ``http`` block of nginx.conf is not followed into the site files).
    """
    wanted = {f"http://{upstream}", f"https://{upstream}"}
    found = []

    def effective(chain, name):
        for nodes in reversed(chain):
            values = _directives(nodes, name)
            if values:
                return values
        return []

    def walk(nodes, chain, path):
        for key, args, children in nodes:
            if children is None:
                continue
            inner = chain + [children]
            if key == "location" and any(a and a[0].rstrip("/") in wanted for a in _directives(children, "proxy_pass")):
                headers = {}
                for args_ in effective(inner, "proxy_set_header"):
                    if args_:
                        headers[args_[0].lower()] = " ".join(args_[1:])
                version = effective(inner, "proxy_http_version")
                found.append({
                    "location": " ".join(args),
                    "file": path,
                    "headers": headers,
                    "http_version": version[-1][0] if version and version[-1] else None,
                })
            walk(children, inner, path)

    for path, text in _dump_files(dump).items():
        tree = parse_nginx(text)
        walk(tree, [tree], path)
    return found


def _header_problems(locations, names):
    """What the locations lack of ``names`` (lower-case header names), as text."""
    problems = []
    for loc in locations:
        missing = [name for name in names if not loc["headers"].get(name)]
        if "upgrade" in names and loc["http_version"] != "1.1":
            missing.append("proxy_http_version 1.1")
        if missing:
            lacking = ", ".join(_title(m) for m in missing)
            problems.append(f"location {loc['location']} ({loc['file']}) does not set {lacking}")
    return problems


def _title(name):
    return name if " " in name else "-".join(part.capitalize() if part != "ip" else "IP" for part in name.split("-"))


# ---------------------------------------------------------------------------
# HTTP through nginx, from the host


def probe_name(server_names):
    """The Host to ask for: the site's first server name nginx can match as is (a
    wildcard gets a label), or None for any (``_``, regexes): then 127.0.0.1."""
    for name in server_names or []:
        if not name or name == "_" or name.startswith("~"):
            continue
        name = name.lstrip(".").replace("*", "doctor-probe")
        return name.lower()
    return None


def site_target(site):
    """Where and how the probes reach a site: scheme, port, Host, SNI, Origin."""
    tls = site.get("tls")
    scheme, port = ("https", tls["listen"]) if tls else ("http", site["listen"])
    name = probe_name(site.get("server_name"))
    host = name or "127.0.0.1"
    netloc = host if port == {"http": 80, "https": 443}[scheme] else f"{host}:{port}"
    try:
        ipaddress.ip_address(host)
        sni = None  # SNI carries host names only
    except ValueError:
        sni = host
    return {"scheme": scheme, "port": port, "host": netloc, "sni": sni, "origin": f"{scheme}://{netloc}"}


def _connect(target, timeout):
    """A socket to nginx on 127.0.0.1 (TLS when the site has it), from PROBE_SOURCE when
    the host lets us bind it. Returns (socket, source address)."""
    address = ("127.0.0.1", target["port"])
    try:
        sock, source = socket.create_connection(address, timeout, source_address=(PROBE_SOURCE, 0)), PROBE_SOURCE
    except OSError as exc:
        if exc.errno not in (errno.EADDRNOTAVAIL, errno.EINVAL, errno.EACCES):
            raise
        sock, source = socket.create_connection(address, timeout), "127.0.0.1"
    if target["scheme"] == "https":
        # the certificate's dates are the tls check's; here the site must answer at all
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
        try:
            sock = context.wrap_socket(sock, server_hostname=target["sni"])
        except (OSError, ssl.SSLError):
            sock.close()
            raise
    return sock, source


def _http(target, method, path, headers, body=None, timeout=3.0):
    """One request; ``{"status", "reason", "headers", "body", "source"}``."""
    sock, source = _connect(target, timeout)
    conn = http.client.HTTPConnection("127.0.0.1", target["port"], timeout=timeout)
    conn.sock = sock
    try:
        conn.putrequest(method, path, skip_host=True, skip_accept_encoding=True)
        conn.putheader("Host", target["host"])
        conn.putheader("User-Agent", USER_AGENT)
        for key, value in headers.items():
            conn.putheader(key, value)
        data = body.encode() if body is not None else None
        if data is not None:
            conn.putheader("Content-Length", str(len(data)))
        conn.endheaders(data)
        resp = conn.getresponse()
        if resp.status == 101:
            # a websocket now: close it as a client would (a masked, empty close frame)
            text = ""
            try:
                sock.sendall(b"\x88\x80\x00\x00\x00\x00")
            except OSError:
                pass  # already closed (an HTTP/1.0 peer)
        else:
            text = resp.read(MAX_BODY).decode("utf-8", "replace")
        return {"status": resp.status, "reason": resp.reason, "headers": resp.headers, "body": text, "source": source}
    finally:
        conn.close()


def _ask(target, method, path, headers, deadline, timeout, body=None):
    """_http within what is left of the probe's time; ``{"error": why}`` instead of raising."""
    left = min(timeout, deadline - time.monotonic())
    if left <= 0.05:
        return {"error": "not asked: the doctor's time for this site ran out"}
    try:
        return _http(target, method, path, headers, body, left)
    except socket.timeout:
        error = f"no answer within {left:.1f} s"
    except ssl.SSLError as exc:
        error = f"TLS handshake failed: {exc.reason or exc}"
    except (OSError, http.client.HTTPException) as exc:
        error = getattr(exc, "strerror", None) or str(exc) or type(exc).__name__
    # method, path and port only: the body (a password) is never logged
    log.debug("jupyter.doctor: %s %s on port %s: %s", method, path, target["port"], error)
    return {"error": error}


def _cookies(answer):
    """{name: value} of an answer's Set-Cookie headers."""
    found = {}
    headers = answer.get("headers")
    for header in (headers.get_all("Set-Cookie") or []) if headers is not None else []:
        pair = header.split(";", 1)[0]
        name, sep, value = pair.partition("=")
        if sep and name.strip():
            found[name.strip()] = value.strip()
    return found


def _ws_headers(target):
    return {
        "Upgrade": "websocket",
        "Connection": "Upgrade",
        "Sec-WebSocket-Key": WS_KEY,
        "Sec-WebSocket-Version": "13",
        "Origin": target["origin"],
    }


def _file_size(path):
    try:
        return os.stat(path).st_size
    except OSError:
        return None


def _logged_address(path, offset, needle, until):
    """The client address in Jupyter's log line of the request whose path has
    ``needle`` (``403 GET /a/api/kernels/<uuid>/channels (@127.0.0.2) ...``), or None."""
    if path is None or offset is None:
        return None
    pattern = re.compile(r"\b\d{3} GET \S*" + re.escape(needle) + r"\S* \([^)@]*@([^)\s]+)\)")
    while True:
        try:
            with open(path, "rb") as handle:
                if os.fstat(handle.fileno()).st_size < offset:
                    offset = 0  # rotated meanwhile
                handle.seek(offset)
                text = handle.read(4 * MAX_BODY).decode("utf-8", "replace")
            match = pattern.search(text)
            if match:
                return match.group(1)
        except OSError:
            return None
        if time.monotonic() >= until:
            return None
        time.sleep(0.02)


def probe_location(target, loc, password=None, log_file=None, timeout=3.0, deadline=None):
    """
    Ask nginx, as a browser would, for one location: the login page; an
    unauthenticated websocket upgrade to ``<base_url>api/kernels/<uuid>/channels``
    (with a forged X-Real-IP) and the client address Jupyter logged for it; with the
    password, a login through the form and a logged-in websocket upgrade to
    ``<base_url>api/events/subscribe``. Returns the answers, never the password or the
    login cookie.
    """
    deadline = deadline or time.monotonic() + 2 * timeout
    base = loc["base_url"]
    out = {"url": f"{target['scheme']}://{target['host']}{base}"}
    out["login_page"] = _ask(target, "GET", f"{base}login", {}, deadline, timeout)

    kernel = str(uuid.uuid4())
    offset = _file_size(log_file) if log_file else None
    out["websocket"] = _ask(target, "GET", f"{base}api/kernels/{kernel}/channels",
                            {**_ws_headers(target), "X-Real-IP": DECOY_IP}, deadline, timeout)
    out["source"] = out["websocket"].get("source")
    out["log_ip"] = None
    out["log_read"] = offset is not None
    if "status" in out["websocket"] and offset is not None:
        out["log_ip"] = _logged_address(log_file, offset, kernel, min(deadline, time.monotonic() + LOG_WAIT))

    if password:
        cookies = _cookies(out["login_page"])
        if "_xsrf" not in cookies:
            out["login_post"] = {"error": "the login page set no _xsrf cookie"}
            return out
        post = _ask(target, "POST", f"{base}login", {
            "Cookie": f"_xsrf={cookies['_xsrf']}",
            "Content-Type": "application/x-www-form-urlencoded",
            "Origin": target["origin"],
            "Referer": out["url"] + "login",
        }, deadline, timeout, body=urllib.parse.urlencode({"_xsrf": cookies["_xsrf"], "password": password}))
        cookies.update(_cookies(post))
        out["login_post"] = {key: post[key] for key in ("status", "error", "body") if key in post}
        if "headers" in post:
            out["login_post"]["location"] = post["headers"].get("Location", "")
        if login_verdict(out["login_post"])[0]:
            cookie = "; ".join(f"{name}={value}" for name, value in cookies.items())
            out["websocket_auth"] = _ask(target, "GET", f"{base}api/events/subscribe",
                                         {**_ws_headers(target), "Cookie": cookie}, deadline, timeout)
    return out


# ---------------------------------------------------------------------------
# verdicts on answers (pure)


def answer_kind(answer):
    """
    Who gave an answer: ``error`` (no answer), ``upgraded`` (101), ``nginx`` (one of
    nginx's own pages), ``tornado_upgrade`` / ``tornado_connection`` /
    ``tornado_origin`` (tornado's websocket refusals: no Upgrade header, no
    ``Connection: upgrade``, a Host that is not the Origin's), ``jupyter`` (a page of
    Jupyter's), ``other``.
    """
    if "error" in answer:
        return "error"
    status, body = answer["status"], answer.get("body") or ""
    if status == 101:
        return "upgraded"
    if _NGINX_PAGE.search(body):
        return "nginx"
    if status == 400 and _TORNADO_UPGRADE in body:
        return "tornado_upgrade"
    if status == 400 and _TORNADO_CONNECTION in body:
        return "tornado_connection"
    if status == 403 and _TORNADO_ORIGIN in body:
        return "tornado_origin"
    if _JUPYTER_ERROR.search(body) or _LOGIN_FORM.search(body):
        return "jupyter"
    return "other"


def _nginx_page_text(answer, upstream=None):
    status = answer["status"]
    title = _NGINX_TITLE.search(answer.get("body") or "")
    name = title.group(1).strip() if title else str(status)
    why = {
        502: f"nginx cannot reach Jupyter{f' at {upstream}' if upstream else ''}",
        503: "nginx refuses it (a limit or an unavailable upstream)",
        504: "Jupyter did not answer nginx in time",
        400: "nginx refused the request itself",
        404: "nginx has no location for it (or another site answered)",
        429: "nginx's rate limit",
    }.get(status)
    if status in (301, 302, 307, 308):
        why = f"nginx redirects it to {answer['headers'].get('Location') if answer.get('headers') else '?'}"
    return f"nginx's own page '{name}'" + (f": {why}" if why else "")


def _snippet(answer):
    text = re.sub(r"\s+", " ", answer.get("body") or "").strip()
    return text[:120] + ("..." if len(text) > 120 else "")


def login_page_verdict(answer, upstream=None):
    """(ok, why) for the GET of ``<base_url>login``: Jupyter's login form must render."""
    kind = answer_kind(answer)
    if kind == "error":
        return False, f"no answer through nginx: {answer['error']}"
    body = answer.get("body") or ""
    if answer["status"] == 200 and _LOGIN_FORM.search(body) and _PASSWORD_INPUT.search(body):
        return True, "Jupyter's login form renders (HTTP 200)"
    if kind == "nginx":
        return False, _nginx_page_text(answer, upstream)
    if kind == "jupyter":
        code = _JUPYTER_ERROR.search(body)
        what = (f"Jupyter's {code.group(1)} page" if code
                else f"a Jupyter page without a password form (HTTP {answer['status']})")
        hint = ": its base_url is not the location's" if code and code.group(1) == "404" else ""
        return False, what + hint
    if answer["status"] in (301, 302, 303, 307, 308) and answer.get("headers"):
        return False, f"HTTP {answer['status']} to {answer['headers'].get('Location')}, not the login form"
    return False, f"not Jupyter's login form: HTTP {answer['status']} {_snippet(answer)}"


def websocket_verdict(answer, authenticated, upstream=None):
    """(ok, why) for a websocket upgrade through nginx. Unauthenticated, the right
    answer is Jupyter's own 403 (its auth refusal); logged in, it is 101."""
    kind = answer_kind(answer)
    status = answer.get("status")
    if kind == "error":
        return False, f"no answer through nginx: {answer['error']}"
    if kind == "upgraded":
        if authenticated:
            return True, "Jupyter accepted the logged-in websocket upgrade (101 Switching Protocols)"
        return False, "Jupyter upgraded an unauthenticated websocket (101): its authentication is off"
    if kind == "tornado_upgrade":
        return False, ("tornado's 400 'Can \"Upgrade\" only to \"WebSocket\".': the Upgrade header did not "
                       "reach Jupyter (proxy_set_header Upgrade $http_upgrade)")
    if kind == "tornado_connection":
        return False, ("tornado's 400 '\"Connection\" must be \"Upgrade\".': the Connection header did not "
                       "reach Jupyter as 'upgrade' (proxy_set_header Connection)")
    if kind == "tornado_origin":
        return False, ("tornado's cross-origin 403 'Cross origin websockets not allowed': Jupyter saw another "
                       "Host than the browser sent (proxy_set_header Host $http_host)")
    if kind == "nginx":
        return False, _nginx_page_text(answer, upstream)
    if kind == "jupyter":
        if status == 403 and not authenticated:
            return True, "Jupyter's own 403 (its auth refusal)"
        if status == 403:
            return False, "Jupyter's 403 to the logged-in probe: the login cookie did not reach it"
        if status == 404:
            return False, "Jupyter's 404: its base_url is not the location's"
        return False, f"Jupyter answered {status}"
    return False, f"neither Jupyter's nor nginx's answer: HTTP {status} {_snippet(answer)}"


def login_verdict(post):
    """(ok, why) for the POST of the login form with the pillar's password."""
    if "error" in post:
        return False, f"no answer through nginx: {post['error']}"
    status, location = post.get("status"), post.get("location") or ""
    if status in (302, 303) and "/login" not in location:
        return True, "the pillar's password logs in"
    if status == 429:
        return None, "nginx's login rate limit (429) refused the login"
    if status == 200 and "Invalid credentials" in (post.get("body") or ""):
        return False, "Jupyter refuses the pillar's password (Invalid credentials)"
    return False, f"the login did not go through: HTTP {status}{f' to {location}' if location else ''}"


def client_address_verdict(logged_ip, source):
    """(ok or None when not observed, why) from the address Jupyter logged for the probe."""
    if logged_ip is None:
        return None, "Jupyter's log has no line of the probe"
    if logged_ip == DECOY_IP:
        return False, (f"Jupyter logged the probe from {DECOY_IP}, the client's own forged X-Real-IP: "
                       "nginx does not set X-Real-IP")
    if source == "127.0.0.1":
        return None, "the probe came from 127.0.0.1, nginx's own address: not conclusive"
    if logged_ip == source:
        return True, (f"Jupyter logged the probe from {source}, the probe's own address "
                      "(X-Real-IP from nginx; the forged one was replaced)")
    return False, (f"Jupyter logged the probe from {logged_ip}, not from the client's {source}: "
                   "X-Real-IP/X-Forwarded-For did not arrive (or ServerApp.trust_xheaders is off)")


# ---------------------------------------------------------------------------
# the location checks: login, websocket, proxy headers


def location_entries(name, probe, configured, authenticate_wanted):
    """The login, websocket and proxy_headers entries of one location, from its probe
    answers and what the live configuration says (``configured``: the
    :py:func:`proxied_locations` of its upstream, or None when nginx -T failed)."""
    url = probe["url"]
    entries = []

    ok, why = login_page_verdict(probe["login_page"], probe.get("address"))
    login_ok, detail = ok, f"{url}login: {why}"
    if ok and "login_post" in probe:
        tried, said = login_verdict(probe["login_post"])
        if tried is False:
            login_ok = False
            detail += f"; but {said}"
        elif tried is None:
            detail += f"; password not tried: {said}"
        else:
            detail += f"; {said}"
    elif ok and authenticate_wanted and probe.get("no_password"):
        detail += "; password not tried (pillar has only the password's hash)"
    entries.append(_entry("login", name, login_ok, detail))

    # websocket: Jupyter's auth refusal unauthenticated, and the headers tornado checks
    ok, why = websocket_verdict(probe["websocket"], False, probe.get("address"))
    ws_ok, parts = ok, [f"unauthenticated: {why}"]
    if ok:
        if "websocket_auth" in probe:
            auth_ok, auth_why = websocket_verdict(probe["websocket_auth"], True, probe.get("address"))
            ws_ok = auth_ok
            parts.append(f"logged in: {auth_why} (Upgrade, Connection and Host observed)")
        else:
            reason = ("the pillar's password did not log in" if "login_post" in probe
                      else "pillar has only the password's hash" if probe.get("no_password")
                      else "logging in is off (authenticate=False)")
            if configured is None:
                ws_ok = None  # the nginx check names the cause
                parts.append(f"Upgrade, Connection, Host not observed ({reason}) and not read: nginx -T failed "
                             "(see the nginx check)")
            elif not configured:
                ws_ok = False
                parts.append(f"Upgrade, Connection, Host not observed ({reason}); nginx -T has no location "
                             f"proxying to {probe.get('upstream')}")
            else:
                problems = _header_problems(configured, WS_HEADERS)
                ws_ok = not problems
                parts.append(f"Upgrade, Connection, Host not observed ({reason}); configured (nginx -T): "
                             + ("; ".join(problems) if problems else
                                ", ".join(f"{_title(h)} {configured[0]['headers'][h]}" for h in WS_HEADERS)))
    entries.append(_entry("websocket", name, ws_ok, f"{url}: " + "; ".join(parts)))

    # proxy headers: the client address observed in Jupyter's log, the rest as configured
    seen_ok, seen = client_address_verdict(probe.get("log_ip"), probe.get("source"))
    if not probe.get("log_read"):
        seen_ok, seen = None, "Jupyter's log cannot be read"
    if configured is None:
        conf_ok, conf = None, "not read: nginx -T failed (see the nginx check)"
    elif not configured:
        conf_ok, conf = False, f"nginx -T has no location proxying to {probe.get('upstream')}"
    else:
        problems = _header_problems(configured, FORWARD_HEADERS)
        conf_ok = not problems
        conf = "; ".join(problems) if problems else ", ".join(
            f"{_title(h)} {configured[0]['headers'][h]}" for h in FORWARD_HEADERS)
    detail = f"observed: {seen}; configured (nginx -T): {conf}"
    verdicts = {seen_ok, conf_ok}
    entries.append(_entry("proxy_headers", name, False if False in verdicts else True if True in verdicts else None,
                          detail))
    return entries


# ---------------------------------------------------------------------------
# program


def _listeners():
    """{port: [(pid, address)]} of every TCP socket listening on this host (pid None:
    not visible to this user)."""
    found = {}
    try:
        conns = psutil.net_connections(kind="tcp")
    except psutil.AccessDenied:
        return found
    for conn in conns:
        if conn.status == psutil.CONN_LISTEN and conn.laddr:
            found.setdefault(conn.laddr[1], []).append((conn.pid, conn.laddr[0]))
    return found


def _tree(pid):
    if not pid:
        return set()
    try:
        proc = psutil.Process(pid)
        return {pid} | {child.pid for child in proc.children(recursive=True)}
    except (psutil.NoSuchProcess, psutil.ZombieProcess):
        return set()


def _describe_pid(pid):
    if pid is None:
        return "a process this user cannot see"
    try:
        proc = psutil.Process(pid)
        return f"pid {pid} ({proc.username()}: {' '.join(proc.cmdline())[:100]})"
    except (psutil.Error, OSError):
        return f"pid {pid}"


def program_verdict(info, port, holders, tree):
    """(ok, why): supervisor's state of the program and who listens on its port.
    holders: [(pid, address)] listening on ``port``; tree: the program's pids."""
    if info is None:
        return False, "supervisord has no such program"
    state, pid = info["state"], info.get("pid")
    if state not in ("RUNNING", "STARTING"):
        extra = f": {info['description']}" if info.get("description") else ""
        return False, f"{state}{extra}"
    ours = [(p, addr) for p, addr in holders if p in tree]
    if not ours:
        others = ", ".join(f"{_describe_pid(p)} on {addr}" for p, addr in holders)
        return False, f"{state} (pid {pid}) but not listening on port {port}" + (
            f"; it is held by {others}" if others else "")
    where = ", ".join(sorted({f"{addr}:{port}" for _, addr in ours}))
    if state == "STARTING":
        return True, f"STARTING (pid {pid}): listening on {where}; supervisor says RUNNING after its startsecs"
    return True, f"RUNNING (pid {pid}, up {info.get('uptime', 0)} s), listening on {where}"


def _supervisor_status(sock, timeout):
    """supervisor_rpc.status within ``timeout`` (its own XML-RPC timeout is 30 s):
    (status, None) or ({}, why)."""
    if "supervisor_rpc.status" not in __salt__:
        return {}, "supervisor_rpc is not loaded (sync the formula's modules)"
    # not in a `with`: a supervisord that does not answer must not hold the doctor
    pool = concurrent.futures.ThreadPoolExecutor(max_workers=1)
    job = pool.submit(__salt__["supervisor_rpc.status"], socket=sock)
    pool.shutdown(wait=False)
    try:
        return job.result(timeout=timeout), None
    except concurrent.futures.TimeoutError:
        return {}, f"supervisord did not answer on {sock} within {timeout:g} s"
    except CommandExecutionError as exc:
        return {}, str(exc)


def _program_entries(settings, timeout):
    """The program entries, and {instance: serving} (None when supervisord is not reachable)."""
    entries, serving = [], {}
    by_socket = {}
    for inst in settings["instances"].values():
        by_socket.setdefault(inst["supervisor"].get("socket"), []).append(inst)
    listeners = _listeners()
    for sock, insts in by_socket.items():
        status, error = _supervisor_status(sock, timeout)
        for inst in insts:
            name, port = inst["name"], inst["server"]["port"]
            if error:
                entries.append(_entry("program", name, False, f"{inst['program']}: {error}"))
                serving[name] = None
                continue
            info = status.get(inst["program"])
            ok, why = program_verdict(info, port, listeners.get(port, []), _tree((info or {}).get("pid")))
            entries.append(_entry("program", name, ok, f"{inst['program']}: {why}"))
            serving[name] = ok
    return entries, serving


# ---------------------------------------------------------------------------
# TLS


def _cert_facts(cert, now):
    not_after = cert.not_valid_after_utc
    return {
        "subject": cert.subject.rfc4514_string() or "(empty subject)",
        "not_after": not_after.strftime("%Y-%m-%d %H:%M UTC"),
        "days": (not_after - now).total_seconds() / 86400,
        "fingerprint": hashlib.sha256(cert.public_bytes(Encoding.DER)).hexdigest(),
    }


def certificate_file(path, now=None):
    """The facts of the first certificate of a PEM file, or ``{"error"}``."""
    now = now or datetime.datetime.now(datetime.timezone.utc)
    if not HAS_CRYPTOGRAPHY:
        return {"error": "the cryptography library is missing"}
    try:
        with open(path, "rb") as handle:
            cert = x509.load_pem_x509_certificates(handle.read())[0]
    except FileNotFoundError:
        return {"error": f"{path} does not exist"}
    except (OSError, ValueError, IndexError) as exc:
        return {"error": f"{path} holds no readable certificate ({exc})"}
    return _cert_facts(cert, now)


def served_certificate(target, timeout, now=None):
    """The facts of the certificate nginx serves on the site's TLS port (with its SNI)."""
    now = now or datetime.datetime.now(datetime.timezone.utc)
    if not HAS_CRYPTOGRAPHY:
        return {"error": "the cryptography library is missing"}
    try:
        sock, _ = _connect(target, timeout)
        try:
            der = sock.getpeercert(binary_form=True)
        finally:
            sock.close()
    except socket.timeout:
        return {"error": f"no TLS handshake on port {target['port']} within {timeout:g} s"}
    except (OSError, ssl.SSLError) as exc:
        return {"error": f"no TLS handshake on port {target['port']}: {getattr(exc, 'reason', None) or exc}"}
    if not der:
        return {"error": f"nginx sent no certificate on port {target['port']}"}
    return _cert_facts(x509.load_der_x509_certificate(der), now)


def tls_verdict(path, on_disk, served, port, threshold):
    """(ok, why): days left of the certificate file and of what nginx serves."""
    parts, ok = [], True
    if "error" in on_disk:
        ok = False
        parts.append(on_disk["error"])
    else:
        low = on_disk["days"] < threshold
        ok = ok and not low
        state = "EXPIRED" if on_disk["days"] <= 0 else f"{on_disk['days']:.1f} days left"
        parts.append(f"{path} ({on_disk['subject']}) expires {on_disk['not_after']}: {state}"
                     + (f", under the threshold of {threshold:g} days" if low else ""))
    if served is None:
        pass
    elif "error" in served:
        ok = False
        parts.append(served["error"])
    elif "error" not in on_disk and served["fingerprint"] == on_disk["fingerprint"]:
        parts.append(f"nginx serves it on port {port}")
    else:
        ok = False  # nginx has not loaded the file: what clients get is not what is on disk
        state = "EXPIRED" if served["days"] <= 0 else f"{served['days']:.1f} days left"
        parts.append(f"nginx serves another certificate on port {port} ({served['subject']}, expires "
                     f"{served['not_after']}: {state}): not reloaded since the file changed?")
    return ok, "; ".join(parts)


# ---------------------------------------------------------------------------
# disk


def _human(size):
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if size < 1024 or unit == "TiB":
            return f"{size:.1f} {unit}" if unit != "B" else f"{size} B"
        size /= 1024
    return f"{size} B"  # pragma: no cover


def disk_verdict(usage, min_percent, min_bytes):
    """(ok, why) from ``shutil.disk_usage``: free space (what an unprivileged user can
    still write) must be at least ``min_percent`` % of the file system and ``min_bytes``."""
    total, free = usage.total, usage.free
    percent = 100.0 * free / total if total else 0.0
    text = f"{_human(free)} free of {_human(total)} ({percent:.1f}%)"
    short = []
    if percent < min_percent:
        short.append(f"under {min_percent:g}%")
    if free < min_bytes:
        short.append(f"under {_human(min_bytes)}")
    return (not short), text + (f": {' and '.join(short)}" if short else "")


def _disk_entries(settings, min_percent, min_bytes):
    entries, seen = [], set()
    for inst in settings["instances"].values():
        path = inst["root_dir"]
        if path in seen:
            continue
        seen.add(path)
        try:
            ok, why = disk_verdict(shutil.disk_usage(path), min_percent, min_bytes)
        except OSError as exc:
            ok, why = False, f"cannot read its file system: {exc.strerror or exc}"
        entries.append(_entry("disk", path, ok, why))
    return entries


# ---------------------------------------------------------------------------
# drift between pillar and disk


def config_drift(on_disk, wanted):
    """The traits (``Class.trait``) whose values differ between the config on disk and
    the one pillar gives, the password hash left out; values are not shown (pillar's
    ``config`` may hold secrets of extensions)."""
    on_disk = on_disk if isinstance(on_disk, dict) else {}
    names = []
    for cls in sorted(set(on_disk) | set(wanted)):
        have = on_disk.get(cls) if isinstance(on_disk.get(cls), dict) else {}
        want = wanted.get(cls) if isinstance(wanted.get(cls), dict) else {}
        for trait in sorted(set(have) | set(want)):
            if (cls, trait) == HASH_TRAIT or have.get(trait) == want.get(trait):
                continue
            where = " (not on disk)" if trait not in have else " (not in pillar)" if trait not in want else ""
            names.append(f"{cls}.{trait}{where}")
    return names


def site_drift(on_disk, wanted, limit=8):
    """The lines that differ between a site file on disk and pillar's rendering."""
    have, want = on_disk.splitlines(), wanted.splitlines()
    lines = []
    for tag, i1, i2, j1, j2 in difflib.SequenceMatcher(None, have, want, autojunk=False).get_opcodes():
        if tag == "equal":
            continue
        for number in range(j1, j2):
            lines.append(f"line {number + 1} of pillar's site missing on disk: {want[number].strip()!r}")
        for number in range(i1, i2):
            lines.append(f"line {number + 1} on disk not in pillar's site: {have[number].strip()!r}")
    if len(lines) > limit:
        lines = lines[:limit] + [f"... {len(lines) - limit} more"]
    return lines


def _config_entry(inst):
    path = inst["config_file"]
    try:
        with open(path, encoding="utf-8") as handle:
            on_disk = json.load(handle)
        info = os.stat(path)
    except FileNotFoundError:
        return _entry("drift", path, False, f"config of {inst['name']} is missing")
    except (OSError, ValueError) as exc:
        return _entry("drift", path, False, f"config of {inst['name']} cannot be read: {exc}")
    problems = []
    traits = config_drift(on_disk, inst["server_config"])
    if traits:
        problems.append("traits differ from pillar: " + ", ".join(traits))
    if HASH_TRAIT[1] not in (on_disk.get(HASH_TRAIT[0]) or {}):
        problems.append(f"{'.'.join(HASH_TRAIT)} is missing")
    try:
        gid = grp.getgrnam(inst["group"]).gr_gid
    except KeyError:
        gid = None
    mode = stat.S_IMODE(info.st_mode)
    if mode != CONFIG_MODE or info.st_uid != CONFIG_UID or (gid is not None and info.st_gid != gid):
        problems.append(f"mode {mode:04o} uid {info.st_uid} gid {info.st_gid}, "
                        f"expected {CONFIG_MODE:04o} root:{inst['group']}")
    if problems:
        return _entry("drift", path, False, f"config of {inst['name']}: " + "; ".join(problems))
    return _entry("drift", path, True, f"config of {inst['name']} is what pillar gives (password hash not compared)")


def _site_entry(site, saltenv):
    path = site["file"]
    try:
        wanted = __salt__["jupyter_nginx.render"](SITE_TEMPLATE, {"site": site}, saltenv)
    except (CommandExecutionError, KeyError) as exc:
        return _entry("drift", path, False, f"site {site['name']}: cannot render pillar's site: {exc}")
    try:
        with open(path, encoding="utf-8", errors="surrogateescape") as handle:
            on_disk = handle.read()
    except FileNotFoundError:
        return _entry("drift", path, False, f"site {site['name']} is missing")
    except OSError as exc:
        return _entry("drift", path, False, f"site {site['name']} cannot be read: {exc}")
    problems = site_drift(on_disk, wanted)
    enabled = site.get("enabled")
    if enabled and (not os.path.islink(enabled) or os.readlink(enabled) != path):
        problems.append(f"{enabled} is not a link to it")
    if problems:
        return _entry("drift", path, False, f"site {site['name']}: " + "; ".join(problems))
    return _entry("drift", path, True, f"site {site['name']} is what pillar renders"
                  + (" and enabled" if enabled else ""))


def _drift_entries(settings, saltenv):
    entries = [_config_entry(inst) for inst in settings["instances"].values()]
    # The state renders from the settings with their secrets; the template reads none
    # of them (TLS keys are files of their own), so the hidden settings give the same
    # text, and a differing line can never show a secret.
    for site in settings["sites"].values():
        entries.append(_site_entry(site, saltenv))
    return entries


# ---------------------------------------------------------------------------
# the doctor


def _summary(checks, seconds):
    failed = [c for c in checks if c["ok"] is False]
    skipped = [c for c in checks if c["ok"] is None]
    return {
        "ok": not failed,
        "checks": len(checks),
        "passed": sum(1 for c in checks if c["ok"] is True),
        "failed": len(failed),
        "skipped": len(skipped),
        "failures": [f"{c['check']} {c['target']}" for c in failed],
        "seconds": round(seconds, 2),
    }


def _fresh_pillar():
    """Pillar ``jupyter`` compiled now (unmasked: the doctor logs in with the password);
    None (the minion's own copy) where pillar.items is not there."""
    if "pillar.items" not in __salt__:
        return None
    return (__salt__["pillar.items"](unmask=True) or {}).get("jupyter") or {}


def doctor(cert_days=14, min_free_percent=5, min_free_bytes="1G", timeout=3, authenticate=True):
    """
    Check this host end to end, from the host, as deployed by the formula: nginx,
    each instance's program, each location through nginx, TLS certificates, free
    space, and drift between pillar and disk. Changes nothing on the host.

    Returns ``{"checks": [{"check", "target", "ok", "detail"}, ...], "summary": {"ok",
    "checks", "passed", "failed", "skipped", "failures": ["check target", ...],
    "seconds"}}``. ``ok`` is True, False, or None for a check that did not run because
    another one names the cause (a stopped program skips its location's checks). When
    any check fails, the exit code of ``salt-call`` (and of ``salt``) is non-zero.

    The checks (``check``: ``target``):

    - ``nginx``: ``nginx -t`` (run as ``nginx -T``, which also dumps the live
      configuration the other checks read) passes; nginx's words when not.
    - ``program``: instance: supervisord (``supervisor_rpc.status``) says RUNNING (or
      STARTING and already listening), and the program or a child listens on the
      instance's port (psutil); otherwise who holds the port.
    - ``login``: instance: through nginx (127.0.0.1 on the site's port, Host: the
      site's first server name, 127.0.0.1 for ``_``; HTTPS with SNI when the site has
      TLS), ``<base_url>login`` renders Jupyter's login form, not an nginx error page.
      With the password in pillar (and ``authenticate``), it also logs in with it.
    - ``websocket``: instance: an unauthenticated upgrade to
      ``<base_url>api/kernels/<uuid>/channels`` with an Origin matching the Host gets
      Jupyter's own 403 (its auth refusal), not nginx's 400/502. Jupyter checks
      authentication before tornado looks at Upgrade, Connection and Origin, so
      logged in (password in pillar), an upgrade to ``<base_url>api/events/subscribe``
      must get 101; tornado's 400 'Can "Upgrade" only to "WebSocket".' (Upgrade
      stripped), its 400 on Connection, and its cross-origin 403 (Host not passed on)
      are told apart by their bodies. Without the password the Upgrade, Connection and
      Host headers and ``proxy_http_version 1.1`` are read from ``nginx -T`` for the
      location, and the detail says "not observed".
    - ``proxy_headers``: instance: observed: the probe comes from 127.0.0.2 with a
      forged ``X-Real-IP``, and Jupyter's log line of it (its ``.err.log``) must show
      127.0.0.2: nginx set X-Real-IP from the client address (Jupyter trusts the X-
      headers). Configured: X-Real-IP, X-Forwarded-For, X-Forwarded-Proto and X-Scheme
      are set in every location proxying to the instance (``nginx -T``); nothing
      Jupyter answers unauthenticated shows the scheme headers.
    - ``tls``: site: days left of the certificate file (read with ``cryptography``)
      and of the one nginx serves on the TLS port (with the site's SNI); fails under
      ``cert_days``, or when nginx serves another certificate than the file (not
      reloaded since it changed).
    - ``disk``: root_dir: free space (``shutil.disk_usage``) at least
      ``min_free_percent`` % and ``min_free_bytes``.
    - ``drift``: config file: the traits the formula writes (``jupyter.settings``
      derives them: ``server_config``) against the file, trait by trait, the password
      hash left out;
      its mode and owner. Site file: ``jupyter_nginx.render`` of the site template
      against the file, the differing lines named; the ``sites-enabled`` link.

    Secrets are never returned: the password is used for the login only; the
    differing config traits are named without their values.

    cert_days
        Days a certificate must still be valid (default 14).

    min_free_percent, min_free_bytes
        Free space each root_dir must have: both must hold (defaults 5 and 1G; 0
        disables one).

    timeout
        Seconds for each probe (default 3); each site's probes end after twice that.

    authenticate
        False: never log in, even with the password in pillar (the websocket headers
        are then read from the configuration).

    CLI Example:

    .. code-block:: bash

        salt-call jupyter.doctor
        salt 'node*' jupyter.doctor
        salt 'node*' jupyter.doctor cert_days=30 min_free_bytes=5G --out=json
    """
    started = time.monotonic()
    cert_days = _number(cert_days, "cert_days")
    min_percent = _number(min_free_percent, "min_free_percent", 0, 100)
    min_bytes = _size(min_free_bytes, "min_free_bytes")
    timeout = _number(timeout, "timeout", 0.1, 60)
    saltenv = __opts__.get("saltenv") or "base"
    checks = []

    # the pillar as it is now, not the minion's in-memory copy (a long-running minion
    # keeps that until saltutil.refresh_pillar; a state run does not refresh it)
    pillar = _fresh_pillar()
    try:
        settings = __salt__["jupyter.settings"](pillar=pillar)
    except (SaltInvocationError, CommandExecutionError) as exc:
        settings = None
        checks.append(_entry("settings", "pillar", False, str(exc)))

    with concurrent.futures.ThreadPoolExecutor(max_workers=8) as pool:
        nginx_job = pool.submit(_nginx_dump, timeout + 2)
        probes, served = [], {}
        if settings:
            program_checks, serving = _program_entries(settings, timeout)
            checks += program_checks
            passwords = {}
            if authenticate:
                revealed = __salt__["jupyter.settings"](pillar=pillar, reveal_secrets=True)
                passwords = {n: i.get("password") for n, i in revealed["instances"].items()}
                revealed = None
            deadline = time.monotonic() + 2 * timeout
            for site in settings["sites"].values():
                target = site_target(site)
                for loc in site["locations"]:
                    name = loc["instance"]
                    inst = settings["instances"][name]
                    if serving.get(name) is False:
                        for check in LOCATION_CHECKS:
                            checks.append(_skipped(check, name, f"program {inst['program']} is not serving "
                                                                "(see its program check)"))
                        continue
                    job = pool.submit(probe_location, target, loc, passwords.get(name), inst["log_files"][-1],
                                      timeout, deadline)
                    probes.append((name, loc, job))
                if site.get("tls"):
                    served[site["name"]] = pool.submit(served_certificate, target, timeout)
            # the file-system checks meanwhile, here: they call Salt's functions
            checks += _disk_entries(settings, min_percent, min_bytes)
            checks += _drift_entries(settings, saltenv)
            passwords = None  # the probes have theirs; nothing else needs them

        nginx = nginx_job.result()
        checks.append(_entry("nginx", "nginx -t", nginx["ok"],
                             nginx["message"] if not nginx["ok"] else
                             "nginx -t passes" + (f" ({nginx['message']})" if "[warn]" in nginx["message"] else "")))
        for name, loc, job in probes:
            probe = job.result()
            probe["upstream"], probe["address"] = loc["upstream"], f"{loc['ip']}:{loc['port']}"
            probe["no_password"] = authenticate and not settings["instances"][name].get("password")
            configured = proxied_locations(nginx["dump"], loc["upstream"]) if nginx["dump"] else None
            if configured:
                configured.sort(key=lambda found: found["location"].startswith("="))  # the main one first
            checks += location_entries(name, probe, configured, authenticate)
        for site_name, job in served.items():
            site = settings["sites"][site_name]
            path = site["tls"]["certificate"]
            ok, why = tls_verdict(path, certificate_file(path), job.result(), site["tls"]["listen"], cert_days)
            checks.append(_entry("tls", site_name, ok, why))

    checks.sort(key=lambda c: (CHECKS.index(c["check"]), c["target"]))
    summary = _summary(checks, time.monotonic() - started)
    if not summary["ok"]:
        # salt-call and salt exit non-zero: monitoring reads the exit code
        __context__["retcode"] = 1
    return {"checks": checks, "summary": summary}
