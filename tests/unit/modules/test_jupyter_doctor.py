"""
Unit tests of _modules/jupyter_doctor.py (``jupyter.doctor``): which answer is which
(Jupyter's auth refusal, tornado's websocket refusals, nginx's pages), the nginx -T
reader on the real site template, the verdicts of each check, the result shape and the
exit code. The loader is mocked; the probes run once against a stub HTTP server on
loopback. No root, seconds.
"""

import collections
import datetime
import email.message
import grp
import http.server
import json
import os
import re
import socketserver
import threading
import urllib.parse

import jinja2
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from salt.exceptions import SaltInvocationError

from support.loader import REPO, file_str, load

PASSWORD = "Doctor-Unit-Quartz-93"
NOW = datetime.datetime.now(datetime.timezone.utc)

# Bodies as the real servers send them (trimmed where long and irrelevant).
JUPYTER_403 = """<!DOCTYPE HTML>
<html>
<head>
    <meta charset="utf-8">
    <title>Jupyter Server</title>
</head>
<body class=""    dir="ltr">
  <div id="site">
<div class="error">
    <h1>403 : Forbidden</h1>
</div>
  </div>
</body>
</html>"""
JUPYTER_404 = JUPYTER_403.replace("403 : Forbidden", "404 : Not Found")
LOGIN_PAGE = """<!DOCTYPE HTML>
<html><head><title>Jupyter Server</title></head><body>
<form action="/a/login?next=%2Fa%2F" method="post" class="navbar-form pull-left">
    <input type="hidden" name="_xsrf" value="2|63ee4912|0025883e|1796068921"/>
    <label for="password_input"><strong>Password:</strong></label>
    <input type="password" name="password" id="password_input" class="form-control">
    <button type="submit" class="btn btn-default" id="login_submit">Log in</button>
</form></body></html>"""


def nginx_page(status, text):
    return (f"<html>\r\n<head><title>{status} {text}</title></head>\r\n<body>\r\n"
            f"<center><h1>{status} {text}</h1></center>\r\n<hr><center>nginx/1.22.1</center>\r\n</body>\r\n</html>\r\n")


def answer(status, body="", **headers):
    message = email.message.Message()
    for key, value in headers.items():
        message[key.replace("_", "-")] = value
    return {"status": status, "reason": "", "headers": message, "body": body, "source": "127.0.0.2"}


@pytest.fixture
def mod():
    return load("_modules", "jupyter_doctor", salt={"cp.get_file_str": file_str})


def test_virtual_never_hides_the_jupyter_namespace(mod):
    assert mod.__virtual__() == "jupyter"


# --- which answer is which -------------------------------------------------


WEBSOCKET_CASES = [
    # (answer, authenticated, kind, ok, words in the verdict)
    (answer(403, JUPYTER_403), False, "jupyter", True, "Jupyter's own 403 (its auth refusal)"),
    (answer(101), True, "upgraded", True, "101"),
    (answer(101), False, "upgraded", False, "authentication is off"),
    (answer(400, 'Can "Upgrade" only to "WebSocket".'), True, "tornado_upgrade", False, "Upgrade header did not reach"),
    (answer(400, '"Connection" must be "Upgrade".'), True, "tornado_connection", False, "Connection header"),
    (answer(403, "Cross origin websockets not allowed"), True, "tornado_origin", False, "Host"),
    (answer(502, nginx_page(502, "Bad Gateway")), False, "nginx", False, "nginx's own page '502 Bad Gateway'"),
    (answer(400, nginx_page(400, "Bad Request")), False, "nginx", False, "nginx refused the request itself"),
    (answer(404, JUPYTER_404), False, "jupyter", False, "base_url"),
    (answer(403, JUPYTER_403), True, "jupyter", False, "login cookie did not reach"),
    ({"error": "Connection refused"}, False, "error", False, "no answer through nginx: Connection refused"),
    (answer(200, "hello from something else"), False, "other", False, "neither Jupyter's nor nginx's"),
]


@pytest.mark.parametrize("given,authenticated,kind,ok,words", WEBSOCKET_CASES)
def test_websocket_answers_are_told_apart(mod, given, authenticated, kind, ok, words):
    assert mod.answer_kind(given) == kind
    verdict, why = mod.websocket_verdict(given, authenticated, "127.0.0.1:8931")
    assert verdict is ok and words in why, why


def test_the_tornado_refusals_are_not_mistaken_for_nginx_or_jupyter_pages(mod):
    # the same status, three different causes
    kinds = {mod.answer_kind(a) for a in (answer(403, JUPYTER_403), answer(403, "Cross origin websockets not allowed"),
                                          answer(403, nginx_page(403, "Forbidden")))}
    assert kinds == {"jupyter", "tornado_origin", "nginx"}
    kinds = {mod.answer_kind(a) for a in (answer(400, 'Can "Upgrade" only to "WebSocket".'),
                                          answer(400, nginx_page(400, "Bad Request")))}
    assert kinds == {"tornado_upgrade", "nginx"}


@pytest.mark.parametrize("given,ok,words", [
    (answer(200, LOGIN_PAGE), True, "login form renders"),
    (answer(502, nginx_page(502, "Bad Gateway")), False, "nginx cannot reach Jupyter at 127.0.0.1:8931"),
    (answer(404, JUPYTER_404), False, "Jupyter's 404 page: its base_url is not the location's"),
    (answer(301, nginx_page(301, "Moved Permanently"), Location="https://h/a/login"), False,
     "redirects it to https://h/a/login"),
    (answer(200, "<html>a page</html>"), False, "not Jupyter's login form"),
    ({"error": "no answer within 3.0 s"}, False, "no answer within 3.0 s"),
])
def test_login_page_must_be_jupyters_form(mod, given, ok, words):
    verdict, why = mod.login_page_verdict(given, "127.0.0.1:8931")
    assert verdict is ok and words in why, why


@pytest.mark.parametrize("post,ok,words", [
    ({"status": 302, "location": "/a/"}, True, "logs in"),
    ({"status": 200, "body": "<p>Invalid credentials</p>", "location": ""}, False, "refuses the pillar's password"),
    ({"status": 429, "location": ""}, None, "rate limit"),
    ({"status": 302, "location": "/a/login?next=%2Fa%2F"}, False, "did not go through"),
    ({"error": "Connection reset by peer"}, False, "no answer"),
])
def test_login_post_verdicts(mod, post, ok, words):
    verdict, why = mod.login_verdict(post)
    assert verdict is ok and words in why


@pytest.mark.parametrize("logged,source,ok,words", [
    ("127.0.0.2", "127.0.0.2", True, "the probe's own address"),
    ("192.0.2.1", "127.0.0.2", False, "nginx does not set X-Real-IP"),
    ("127.0.0.1", "127.0.0.2", False, "did not arrive"),
    (None, "127.0.0.2", None, "no line"),
    ("127.0.0.1", "127.0.0.1", None, "not conclusive"),
])
def test_client_address_from_jupyters_log(mod, logged, source, ok, words):
    verdict, why = mod.client_address_verdict(logged, source)
    assert verdict is ok and words in why


# --- the live configuration (nginx -T) --------------------------------------


def render_site(site):
    env = jinja2.Environment()
    env.filters["ipwrap"] = lambda ip: f"[{ip}]" if ":" in str(ip) else ip
    return env.from_string((REPO / "jupyter/files/nginx-site.conf.jinja").read_text()).render(site=site)


def make_site(tls=True, locations=(("a", 8931, "/a/"), ("b", 8932, "/b/")), server_name=("_",)):
    return {
        "name": "jupyter-doc", "id": "jupyter_jupyter_doc", "file": "", "enabled": None,
        "server_name": list(server_name), "listen": 8097, "default_server": False, "ipv6": True,
        "client_max_body_size": "512m", "login_rate_limit": {"rate": "10r/m", "burst": 10}, "hsts_max_age": 100,
        "extra_directives": [],
        "tls": {"listen": 8447, "certificate": "/etc/ssl/jupyter/jupyter-doc.crt",
                "certificate_key": "/etc/ssl/jupyter/jupyter-doc.key", "redirect_http": True, "acme": None}
        if tls else None,
        "locations": [{"instance": n, "base_url": b, "upstream": f"jupyter_jupyter_doc_{n}", "ip": "127.0.0.1",
                       "port": p, "proxy_read_timeout": 86400} for n, p, b in locations],
    }


def dump_of(site_text):
    """What nginx -T prints: every file under its own header."""
    return ("# configuration file /etc/nginx/nginx.conf:\nhttp {\n    include /etc/nginx/sites-enabled/*;\n}\n\n"
            f"# configuration file /etc/nginx/sites-enabled/jupyter-doc.conf:\n{site_text}\n")


def test_proxied_locations_reads_the_real_template(mod):
    found = mod.proxied_locations(dump_of(render_site(make_site())), "jupyter_jupyter_doc_a")
    assert [f["location"] for f in found] == ["= /a/login", "/a/"]
    for loc in found:
        assert loc["file"] == "/etc/nginx/sites-enabled/jupyter-doc.conf"
        assert loc["http_version"] == "1.1"
        assert loc["headers"]["upgrade"] == "$http_upgrade"
        assert loc["headers"]["connection"] == "$jupyter_jupyter_doc_connection"
        assert loc["headers"]["host"] == "$http_host"
        assert loc["headers"]["x-forwarded-for"] == "$proxy_add_x_forwarded_for"
        assert loc["headers"]["x-scheme"] == loc["headers"]["x-forwarded-proto"] == "$scheme"
    assert mod._header_problems(found, mod.WS_HEADERS + mod.FORWARD_HEADERS) == []
    # the redirect server block (location / with return 301) proxies nowhere: not a match
    assert mod.proxied_locations(dump_of(render_site(make_site())), "nowhere") == []


def test_a_stripped_upgrade_header_is_named(mod):
    text = "\n".join(line for line in render_site(make_site()).splitlines() if "proxy_set_header Upgrade" not in line)
    found = mod.proxied_locations(dump_of(text), "jupyter_jupyter_doc_b")
    problems = mod._header_problems(found, mod.WS_HEADERS)
    assert len(problems) == 2 and all("does not set Upgrade" in p for p in problems)
    assert mod._header_problems(found, mod.FORWARD_HEADERS) == []


def test_proxy_set_header_is_inherited_only_when_the_location_sets_none(mod):
    text = """
    server {
        proxy_set_header X-Real-IP $remote_addr;
        proxy_http_version 1.1;
        location /a/ { proxy_pass http://up_a; }
        location /b/ { proxy_pass http://up_b; proxy_set_header Host $host; }
    }
    """
    (a,) = mod.proxied_locations(dump_of(text), "up_a")
    (b,) = mod.proxied_locations(dump_of(text), "up_b")
    assert a["headers"] == {"x-real-ip": "$remote_addr"} and a["http_version"] == "1.1"
    assert b["headers"] == {"host": "$host"}  # nginx: one level's set replaces the outer ones


def test_comments_and_quotes_do_not_confuse_the_reader(mod):
    text = 'server { location /a/ { # proxy_set_header Upgrade $http_upgrade;\n proxy_pass http://up; ' \
           'proxy_set_header X-Note "a { b ; c }"; } }'
    (loc,) = mod.proxied_locations(dump_of(text), "up")
    assert loc["headers"] == {"x-note": "a { b ; c }"}


# --- location entries: login, websocket, proxy_headers -------------------------


def probe(**over):
    base = {
        "url": "https://127.0.0.1:8447/a/", "upstream": "jupyter_jupyter_doc_a",
        "login_page": answer(200, LOGIN_PAGE), "websocket": answer(403, JUPYTER_403),
        "source": "127.0.0.2", "log_ip": "127.0.0.2", "log_read": True,
        "login_post": {"status": 302, "location": "/a/"}, "websocket_auth": answer(101), "no_password": False,
    }
    base.update(over)
    return {k: v for k, v in base.items() if v is not None}


def configured(mod, strip=None):
    text = render_site(make_site())
    if strip:
        text = "\n".join(line for line in text.splitlines() if strip not in line)
    found = mod.proxied_locations(dump_of(text), "jupyter_jupyter_doc_a")
    found.sort(key=lambda f: f["location"].startswith("="))
    return found


def verdicts(entries):
    return {e["check"]: e["ok"] for e in entries}


def test_a_healthy_location_with_a_login(mod):
    entries = mod.location_entries("a", probe(), configured(mod), True)
    assert verdicts(entries) == {"login": True, "websocket": True, "proxy_headers": True}
    by = {e["check"]: e["detail"] for e in entries}
    assert "password logs in" in by["login"]
    assert "Upgrade, Connection and Host observed" in by["websocket"]
    assert "observed: Jupyter logged the probe from 127.0.0.2" in by["proxy_headers"]
    assert "X-Forwarded-Proto $scheme" in by["proxy_headers"] and "X-Scheme $scheme" in by["proxy_headers"]


def test_upgrade_stripped_fails_the_websocket_only_observed_or_configured(mod):
    stripped = configured(mod, strip="proxy_set_header Upgrade")
    seen = mod.location_entries("a", probe(websocket_auth=answer(400, 'Can "Upgrade" only to "WebSocket".')),
                                stripped, True)
    assert verdicts(seen) == {"login": True, "websocket": False, "proxy_headers": True}
    assert "Upgrade header did not reach Jupyter" in seen[1]["detail"]
    # without a password: not observed, read from nginx -T, and said so
    read = mod.location_entries("b", probe(login_post=None, websocket_auth=None, no_password=True), stripped, True)
    assert verdicts(read) == {"login": True, "websocket": False, "proxy_headers": True}
    assert "not observed (pillar has only the password's hash)" in read[1]["detail"]
    assert "does not set Upgrade" in read[1]["detail"]
    assert "password not tried (pillar has only the password's hash)" in read[0]["detail"]
    healthy = mod.location_entries("b", probe(login_post=None, websocket_auth=None, no_password=True),
                                   configured(mod), True)
    assert verdicts(healthy) == {"login": True, "websocket": True, "proxy_headers": True}


def test_host_not_passed_is_the_cross_origin_403(mod):
    entries = mod.location_entries("a", probe(websocket_auth=answer(403, "Cross origin websockets not allowed")),
                                   configured(mod), True)
    assert verdicts(entries)["websocket"] is False
    assert "proxy_set_header Host $http_host" in entries[1]["detail"]


def test_a_refused_password_fails_login_and_the_websocket_falls_back_to_the_configuration(mod):
    entries = mod.location_entries("a", probe(login_post={"status": 200, "body": "Invalid credentials", "location": ""},
                                              websocket_auth=None), configured(mod), True)
    assert verdicts(entries) == {"login": False, "websocket": True, "proxy_headers": True}
    assert "password did not log in" in entries[1]["detail"]


def test_rate_limited_login_is_not_a_failure(mod):
    entries = mod.location_entries("a", probe(login_post={"status": 429, "location": ""}, websocket_auth=None),
                                   configured(mod), True)
    assert verdicts(entries) == {"login": True, "websocket": True, "proxy_headers": True}


def test_proxy_headers_fail_on_a_forged_address_or_a_missing_scheme(mod):
    forged = mod.location_entries("a", probe(log_ip="192.0.2.1"), configured(mod), True)
    assert verdicts(forged)["proxy_headers"] is False
    no_scheme = mod.location_entries("a", probe(), configured(mod, strip="X-Scheme"), True)
    assert verdicts(no_scheme) == {"login": True, "websocket": True, "proxy_headers": False}
    assert "does not set X-Scheme" in no_scheme[2]["detail"]
    unseen = mod.location_entries("a", probe(log_read=False), configured(mod), True)
    assert verdicts(unseen)["proxy_headers"] is True and "log cannot be read" in unseen[2]["detail"]


def test_nginx_502_fails_login_and_websocket(mod):
    bad = answer(502, nginx_page(502, "Bad Gateway"))
    entries = mod.location_entries("a", probe(login_page=bad, websocket=bad, log_ip=None, login_post=None,
                                              websocket_auth=None), configured(mod), True)
    assert verdicts(entries) == {"login": False, "websocket": False, "proxy_headers": True}


# --- program, TLS, disk, drift -------------------------------------------------------


def test_program_verdicts(mod):
    running = {"state": "RUNNING", "pid": 10, "uptime": 60, "description": "pid 10, uptime 0:01:00"}
    assert mod.program_verdict(running, 8931, [(11, "127.0.0.1")], {10, 11})[0] is True
    ok, why = mod.program_verdict(running, 8931, [(99, "127.0.0.1")], {10, 11})
    assert ok is False and "not listening on port 8931" in why and "pid 99" in why
    ok, why = mod.program_verdict({"state": "STOPPED", "pid": None, "description": "Nov 30 08:00 PM"}, 8931, [], set())
    assert ok is False and why.startswith("STOPPED")
    ok, why = mod.program_verdict({**running, "state": "STARTING"}, 8931, [(10, "127.0.0.1")], {10})
    assert ok is True and "STARTING" in why
    assert mod.program_verdict(None, 8931, [], set())[0] is False


def write_cert(path, days):
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(NOW - datetime.timedelta(days=1))
            .not_valid_after(NOW + datetime.timedelta(days=days))
            .sign(key, hashes.SHA256()))
    path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return cert


def test_tls_days_left_of_the_file_and_of_what_nginx_serves(mod, tmp_path):
    good, short = tmp_path / "good.crt", tmp_path / "short.crt"
    good_cert, short_cert = write_cert(good, 90), write_cert(short, 2)
    on_disk = mod.certificate_file(str(good))
    assert 89 < on_disk["days"] < 90.1
    ok, why = mod.tls_verdict(str(good), on_disk, mod._cert_facts(good_cert, NOW), 8447, 14)
    assert ok is True and "nginx serves it on port 8447" in why
    ok, why = mod.tls_verdict(str(short), mod.certificate_file(str(short)), mod._cert_facts(short_cert, NOW), 8447, 14)
    assert ok is False and "under the threshold of 14 days" in why
    # renewed on disk, nginx not reloaded and serving the short one
    ok, why = mod.tls_verdict(str(good), on_disk, mod._cert_facts(short_cert, NOW), 8447, 14)
    assert ok is False and "nginx serves another certificate" in why
    ok, why = mod.tls_verdict(str(good), on_disk, {"error": "no TLS handshake on port 8447: refused"}, 8447, 14)
    assert ok is False and "no TLS handshake" in why
    expired = tmp_path / "old.crt"
    write_cert(expired, -1)
    assert "EXPIRED" in mod.tls_verdict(str(expired), mod.certificate_file(str(expired)), None, 8447, 14)[1]
    assert "does not exist" in mod.certificate_file(str(tmp_path / "none.crt"))["error"]


Usage = collections.namedtuple("Usage", "total used free")


def test_disk_thresholds(mod):
    gib = 1024 ** 3
    assert mod.disk_verdict(Usage(100 * gib, 50 * gib, 50 * gib), 5, gib)[0] is True
    ok, why = mod.disk_verdict(Usage(100 * gib, 97 * gib, 3 * gib), 5, gib)
    assert ok is False and "under 5%" in why
    ok, why = mod.disk_verdict(Usage(8 * 1024 ** 2, 8 * 1024 ** 2, 0), 5, gib)
    assert ok is False and "under 5%" in why and "under 1.0 GiB" in why
    assert mod.disk_verdict(Usage(10 * gib, 9.5 * gib, 0.5 * gib), 0, 0)[0] is True


def test_parameters_are_checked_and_named(mod):
    assert mod._size("1G", "x") == 1024 ** 3 and mod._size("512M", "x") == 512 * 1024 ** 2 and mod._size(7, "x") == 7
    with pytest.raises(SaltInvocationError, match="min_free_bytes: .*'lots'"):
        mod._size("lots", "min_free_bytes")
    with pytest.raises(SaltInvocationError, match="min_free_percent: .*150"):
        mod._number(150, "min_free_percent", 0, 100)


def test_config_drift_names_traits_not_values_and_leaves_the_hash_out(mod):
    wanted = {"ServerApp": {"port": 8931, "ip": "127.0.0.1"},
              "PasswordIdentityProvider": {"hashed_password": "argon2:x"}}
    on_disk = {"ServerApp": {"port": 8999, "ip": "127.0.0.1", "extra": "s3cret-value"},
               "PasswordIdentityProvider": {"hashed_password": "argon2:other"}}
    names = mod.config_drift(on_disk, wanted)
    assert names == ["ServerApp.extra (not in pillar)", "ServerApp.port"]
    assert "s3cret-value" not in json.dumps(names) and "8999" not in json.dumps(names)
    assert mod.config_drift(wanted, wanted) == []


def test_site_drift_names_the_lines(mod):
    wanted = render_site(make_site())
    on_disk = "\n".join(line for line in wanted.splitlines() if "proxy_set_header Upgrade" not in line)
    lines = mod.site_drift(on_disk, wanted)
    assert len(lines) == 4  # two locations per instance, two instances
    assert all("missing on disk: 'proxy_set_header Upgrade $http_upgrade;'" in line for line in lines)
    number = int(re.match(r"line (\d+)", lines[0]).group(1))
    assert wanted.splitlines()[number - 1].strip() == "proxy_set_header Upgrade $http_upgrade;"
    assert mod.site_drift(wanted, wanted) == []


# --- the whole doctor, the loader mocked ----------------------------------------


def settings_for(tmp_path):
    site = make_site()
    site["file"] = str(tmp_path / "jupyter-doc.conf")
    site["tls"]["certificate"] = str(tmp_path / "jupyter-doc.crt")
    group = grp.getgrgid(os.getgid()).gr_name
    instances = {}
    for name, port in (("a", 8931), ("b", 8932)):
        instances[name] = {
            "name": name, "program": f"jupyter-doc-{name}", "group": group, "site": "jupyter-doc",
            "config_file": str(tmp_path / f"{name}.json"), "root_dir": str(tmp_path),
            "log_files": [str(tmp_path / f"{name}.log"), str(tmp_path / f"{name}.err.log")],
            "server": {"ip": "127.0.0.1", "port": port, "base_url": f"/{name}/"},
            "supervisor": {"socket": "/var/run/supervisor.sock"}, "config": {},
            "nginx": {"tls": site["tls"]},
            "password": PASSWORD if name == "a" else None,
        }
        # what the pipeline derives (jupyter.settings: server_config)
        instances[name]["server_config"] = load("_modules", "jupyter")._server_config(instances[name], False)
    return {"mode": "instances", "instances": instances, "sites": {"jupyter-doc": site}}


@pytest.fixture
def host(tmp_path, monkeypatch):
    """A doctor whose host is faked: settings, supervisord, listeners, nginx, probes."""
    revealed = settings_for(tmp_path)
    hidden = json.loads(json.dumps(revealed))
    hidden["instances"]["a"]["password"] = "<hidden>"
    calls = {"probes": []}
    status = {f"jupyter-doc-{n}": {"state": "RUNNING", "pid": pid, "uptime": 9, "description": ""}
              for n, pid in (("a", 101), ("b", 102))}

    def settings(reveal_secrets=False, **_):
        return json.loads(json.dumps(revealed if reveal_secrets else hidden))

    site_text = render_site(revealed["sites"]["jupyter-doc"])
    (tmp_path / "jupyter-doc.conf").write_text(site_text)
    write_cert(tmp_path / "jupyter-doc.crt", 90)
    module = load("_modules", "jupyter_doctor", salt={
        "jupyter.settings": settings,
        "supervisor_rpc.status": lambda socket=None: json.loads(json.dumps(status)),
        "cp.get_file_str": file_str,
        "jupyter_nginx.render": lambda source, context, saltenv="base": render_site(context["site"]),
    })
    module.CONFIG_UID = os.getuid()
    for inst in revealed["instances"].values():
        config = json.loads(json.dumps(inst["server_config"]))
        config["PasswordIdentityProvider"]["hashed_password"] = "argon2:$argon2id$hash"
        path = inst["config_file"]
        with open(path, "w") as out:
            json.dump(config, out)
        os.chmod(path, 0o640)

    good = {"ok": True, "message": "nginx: the configuration file /etc/nginx/nginx.conf syntax is ok",
            "dump": dump_of(site_text)}
    monkeypatch.setattr(module, "_nginx_dump", lambda timeout: host.nginx)
    monkeypatch.setattr(module, "_listeners", lambda: {8931: [(101, "127.0.0.1")], 8932: [(102, "127.0.0.1")]})
    monkeypatch.setattr(module, "_tree", lambda pid: {pid} if pid else set())
    monkeypatch.setattr(module.shutil, "disk_usage", lambda path: Usage(100 * 1024 ** 3, 0, 50 * 1024 ** 3))

    def fake_probe(target, loc, password=None, log_file=None, timeout=3, deadline=None):
        calls["probes"].append((loc["instance"], password, target))
        return host.answers(loc["instance"], password)

    def fake_served(target, timeout):
        return module.certificate_file(revealed["sites"]["jupyter-doc"]["tls"]["certificate"])

    monkeypatch.setattr(module, "probe_location", fake_probe)
    monkeypatch.setattr(module, "served_certificate", fake_served)

    class Host:
        pass

    host = Host()
    host.mod, host.status, host.calls, host.nginx, host.tmp = module, status, calls, good, tmp_path
    host.answers = lambda name, password: probe(
        url=f"https://127.0.0.1:8447/{name}/",
        **({} if password else {"login_post": None, "websocket_auth": None}))
    return host


def failing(result):
    return sorted((c["check"], c["target"]) for c in result["checks"] if c["ok"] is False)


def test_healthy_host_result_shape(host):
    result = host.mod.doctor()
    assert set(result) == {"checks", "summary"}
    for check in result["checks"]:
        assert set(check) == {"check", "target", "ok", "detail"}
        assert check["check"] in host.mod.CHECKS and isinstance(check["detail"], str) and check["detail"]
        assert check["ok"] is True, check
    names = [(c["check"], c["target"]) for c in result["checks"]]
    assert names == [
        ("nginx", "nginx -t"), ("program", "a"), ("program", "b"), ("login", "a"), ("login", "b"),
        ("websocket", "a"), ("websocket", "b"), ("proxy_headers", "a"), ("proxy_headers", "b"),
        ("tls", "jupyter-doc"), ("disk", str(host.tmp)),
        ("drift", str(host.tmp / "a.json")), ("drift", str(host.tmp / "b.json")),
        ("drift", str(host.tmp / "jupyter-doc.conf")),
    ]
    summary = result["summary"]
    assert summary["ok"] is True and summary["failed"] == 0 and summary["passed"] == summary["checks"] == 14
    assert isinstance(summary["seconds"], float)
    assert "retcode" not in host.mod.__context__
    # the password went to the probe of its instance only, and nowhere into the result
    assert sorted((name, pw) for name, pw, _ in host.calls["probes"]) == [("a", PASSWORD), ("b", None)]
    assert PASSWORD not in json.dumps(result)
    target = host.calls["probes"][0][2]
    assert target == {"scheme": "https", "port": 8447, "host": "127.0.0.1:8447", "sni": None,
                      "origin": "https://127.0.0.1:8447"}


def test_a_stopped_program_fails_only_its_program_check(host):
    host.status["jupyter-doc-a"].update(state="STOPPED", pid=None, description="Nov 30 08:00 PM")
    result = host.mod.doctor()
    assert failing(result) == [("program", "a")]
    skipped = sorted((c["check"], c["target"]) for c in result["checks"] if c["ok"] is None)
    assert skipped == [("login", "a"), ("proxy_headers", "a"), ("websocket", "a")]
    assert result["summary"]["skipped"] == 3 and result["summary"]["failures"] == ["program a"]
    assert host.mod.__context__["retcode"] == 1
    assert [name for name, _, _ in host.calls["probes"]] == ["b"]  # nothing asked of a stopped program


def test_upgrade_stripped_fails_websocket_and_drift(host):
    site = host.tmp / "jupyter-doc.conf"
    stripped = "\n".join(line for line in site.read_text().splitlines() if "proxy_set_header Upgrade" not in line)
    site.write_text(stripped)
    host.nginx = {**host.nginx, "dump": dump_of(stripped)}
    host.answers = lambda name, password: probe(
        url=f"https://127.0.0.1:8447/{name}/",
        **({"websocket_auth": answer(400, 'Can "Upgrade" only to "WebSocket".')} if password
           else {"login_post": None, "websocket_auth": None, "no_password": True}))
    result = host.mod.doctor()
    assert failing(result) == [("drift", str(site)), ("websocket", "a"), ("websocket", "b")]
    assert host.mod.__context__["retcode"] == 1


def test_nginx_t_failing_is_reported_in_nginx_words_and_only_there(host):
    host.nginx = {"ok": False, "message": 'nginx: [emerg] unknown directive "proxy_pass_it" in /x.conf:3', "dump": ""}
    result = host.mod.doctor()
    assert failing(result) == [("nginx", "nginx -t")]
    assert 'unknown directive "proxy_pass_it"' in entry_of(result, "nginx", "nginx -t")["detail"]
    # what only the configuration could tell is not judged without it: b's websocket headers
    assert entry_of(result, "websocket", "b")["ok"] is None
    assert "not read: nginx -T failed" in entry_of(result, "websocket", "b")["detail"]
    # a's are observed; the client address too
    assert entry_of(result, "websocket", "a")["ok"] is True
    assert entry_of(result, "proxy_headers", "a")["ok"] is True


def test_config_drift_and_mode_are_named(host):
    path = host.tmp / "b.json"
    config = json.loads(path.read_text())
    config["ServerApp"]["port"] = 9999
    path.write_text(json.dumps(config))
    os.chmod(path, 0o644)
    result = host.mod.doctor()
    assert failing(result) == [("drift", str(path))]
    detail = [c for c in result["checks"] if c["target"] == str(path)][0]["detail"]
    assert "ServerApp.port" in detail and "mode 0644" in detail and "9999" not in detail


def test_an_invalid_pillar_is_a_failing_check_not_a_crash(host):
    def refuse(**_):
        raise SaltInvocationError("Invalid pillar (nothing was changed):\n  - jupyter:server:port: expected an integer")

    host.mod.__salt__["jupyter.settings"] = refuse
    result = host.mod.doctor()
    assert failing(result) == [("settings", "pillar")]
    assert [c["check"] for c in result["checks"]] == ["settings", "nginx"]
    assert host.mod.__context__["retcode"] == 1


# --- the probes themselves, against a stub Jupyter on loopback ---------------------


class StubJupyter(http.server.BaseHTTPRequestHandler):
    """Answers as Jupyter behind nginx would, and writes Jupyter's log line of the
    unauthenticated websocket to the log file, with the X-Real-IP it got."""

    protocol_version = "HTTP/1.1"  # as nginx answers: the 101 keeps the connection
    requests = []
    log_file = None

    def log_message(self, *args):  # quiet
        pass

    def _send(self, status, body, headers=()):
        data = body.encode()
        self.send_response(status)
        for key, value in headers:
            self.send_header(key, value)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self):  # noqa: N802 - http.server's name
        StubJupyter.requests.append(("GET", self.path, dict(self.headers), self.client_address[0], None))
        if self.path == "/a/login":
            self._send(200, LOGIN_PAGE, [("Set-Cookie", "_xsrf=2|abc|def|123; Path=/a/")])
        elif "/api/kernels/" in self.path:
            with open(StubJupyter.log_file, "a") as out:
                out.write(f"[W 2026-11-30 20:01:12.719 ServerApp] 403 GET {self.path} "
                          f"(@{self.headers.get('X-Real-IP')}) 5.39ms referer=None\n")
            self._send(403, JUPYTER_403)
        elif self.path == "/a/api/events/subscribe":
            if "jupyter-a=signed" in (self.headers.get("Cookie") or ""):
                self.send_response(101)
                self.send_header("Upgrade", "websocket")
                self.send_header("Connection", "Upgrade")
                self.end_headers()
            else:
                self._send(403, JUPYTER_403)
        else:
            self._send(404, JUPYTER_404)

    def do_POST(self):  # noqa: N802
        body = self.rfile.read(int(self.headers["Content-Length"])).decode()
        StubJupyter.requests.append(("POST", self.path, dict(self.headers), self.client_address[0], body))
        form = urllib.parse.parse_qs(body)
        if form.get("password") == [PASSWORD] and form.get("_xsrf") == ["2|abc|def|123"] \
                and "_xsrf=2|abc|def|123" in self.headers.get("Cookie", ""):
            self._send(302, "", [("Location", "/a/lab"), ("Set-Cookie", "jupyter-a=signed; Path=/a/; HttpOnly")])
        else:
            self._send(200, "<p>Invalid credentials</p>" + LOGIN_PAGE)


@pytest.fixture
def stub(tmp_path):
    StubJupyter.requests = []
    StubJupyter.log_file = str(tmp_path / "jupyter.err.log")
    open(StubJupyter.log_file, "w").close()
    server = socketserver.ThreadingTCPServer(("127.0.0.1", 0), StubJupyter)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server.server_address[1]
    server.shutdown()
    server.server_close()


def test_probe_location_asks_as_a_browser_and_reads_jupyters_log(mod, stub):
    target = {"scheme": "http", "port": stub, "host": f"nb.example.org:{stub}", "sni": "nb.example.org",
              "origin": f"http://nb.example.org:{stub}"}
    loc = {"instance": "a", "base_url": "/a/", "upstream": "jupyter_doc_a"}
    out = mod.probe_location(target, loc, PASSWORD, StubJupyter.log_file, timeout=3)
    assert out["login_page"]["status"] == 200
    assert mod.websocket_verdict(out["websocket"], False)[0] is True
    assert out["login_post"]["status"] == 302 and mod.login_verdict(out["login_post"])[0] is True
    assert out["websocket_auth"]["status"] == 101
    source = out["source"]
    assert source in ("127.0.0.2", "127.0.0.1")
    assert out["log_ip"] == mod.DECOY_IP  # the stub is no nginx: the forged header went through, and was seen

    (page, ws, post, auth) = StubJupyter.requests
    assert all(r[3] == source for r in StubJupyter.requests)
    assert all(r[2]["Host"] == f"nb.example.org:{stub}" for r in StubJupyter.requests)
    assert re.fullmatch(r"/a/api/kernels/[0-9a-f]{8}(-[0-9a-f]{4}){3}-[0-9a-f]{12}/channels", ws[1])
    for request in (ws, auth):
        assert request[2]["Upgrade"] == "websocket" and request[2]["Connection"] == "Upgrade"
        assert request[2]["Origin"] == f"http://nb.example.org:{stub}"
    assert ws[2]["X-Real-IP"] == mod.DECOY_IP and "Cookie" not in ws[2]
    assert "jupyter-a=signed" in auth[2]["Cookie"]
    # the password went in the form body of the login only, and is nowhere in what the probe returns
    assert urllib.parse.parse_qs(post[4])["password"] == [PASSWORD]
    assert PASSWORD not in json.dumps(out, default=str) and "jupyter-a=signed" not in json.dumps(out, default=str)


def test_probe_location_without_a_password_does_not_log_in(mod, stub):
    target = {"scheme": "http", "port": stub, "host": "127.0.0.1", "sni": None, "origin": "http://127.0.0.1"}
    out = mod.probe_location(target, {"instance": "a", "base_url": "/a/"}, None, StubJupyter.log_file, timeout=3)
    assert "login_post" not in out and "websocket_auth" not in out
    assert [r[0] for r in StubJupyter.requests] == ["GET", "GET"]


def test_probe_of_a_closed_port_is_an_error_not_an_exception(mod):
    target = {"scheme": "https", "port": 9, "host": "127.0.0.1:9", "sni": None, "origin": "https://127.0.0.1:9"}
    out = mod.probe_location(target, {"instance": "a", "base_url": "/"}, PASSWORD, None, timeout=1)
    assert "error" in out["login_page"] and "error" in out["websocket"]
    assert mod.login_page_verdict(out["login_page"])[0] is False


def test_site_target_host_sni_and_origin(mod):
    site = make_site(server_name=["nb.example.org", "www.example.org"])
    assert mod.site_target(site) == {"scheme": "https", "port": 8447, "host": "nb.example.org:8447",
                                     "sni": "nb.example.org", "origin": "https://nb.example.org:8447"}
    plain = make_site(tls=False, server_name=["*.example.org"])
    plain["listen"] = 80
    assert mod.site_target(plain) == {"scheme": "http", "port": 80, "host": "doctor-probe.example.org",
                                      "sni": "doctor-probe.example.org", "origin": "http://doctor-probe.example.org"}


def test_supervisord_down_or_silent_fails_the_program_checks_quickly(host):
    from salt.exceptions import CommandExecutionError

    def down(socket=None):
        raise CommandExecutionError(f"supervisord is not reachable on its socket {socket}: No such file or directory")

    host.mod.__salt__["supervisor_rpc.status"] = down
    result = host.mod.doctor()
    assert failing(result) == [("program", "a"), ("program", "b")]
    assert "supervisord is not reachable" in entry_of(result, "program", "a")["detail"]
    # the programs may still serve: what goes through nginx is asked all the same
    assert sorted(name for name, _, _ in host.calls["probes"]) == ["a", "b"]

    def silent(socket=None):
        threading.Event().wait(3)
        return {}

    host.mod.__salt__["supervisor_rpc.status"] = silent
    result = host.mod.doctor(timeout=0.3)
    assert failing(result) == [("program", "a"), ("program", "b")]
    assert "did not answer on /var/run/supervisor.sock within 0.3 s" in entry_of(result, "program", "b")["detail"]
    assert result["summary"]["seconds"] < 2


def entry_of(result, check, target):
    (found,) = [c for c in result["checks"] if (c["check"], c["target"]) == (check, target)]
    return found
