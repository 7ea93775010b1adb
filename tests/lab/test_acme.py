"""ACME certificates from Pebble, proven offline: the formula's acme keys on a systemd node
(one per Debian suite: certbot 2.1 on bookworm, 4.0 on trixie).

Pebble (the lab's, on the bridge) is the formula's `acme.directory`, its API's CA the
formula's `acme.ca_bundle`; Pebble resolves the node's lab name through the lab's DNS
server and validates over http on the node's port 80. The node exports https_proxy
when it applies (the formula must reach Pebble directly). The tests run in order and
share the node:

1. the first apply obtains a certificate for the node's name that chains to Pebble's
   root (from its management API), and jupyter.settings shows it;
2. https login and a kernel work; http redirects to https except the challenge path;
   HSTS is set; the account key and private keys are root-only and appear in no state
   output, log or Salt cache;
3. certbot's own timer is on and its service has the environment Pebble needs; a
   renewal through that service changes the served serial while an open kernel
   websocket keeps working (a reload, not a restart);
4. a second apply changes nothing;
5. a name without DNS and a blocked port 80 each fail the apply naming the cause,
   while the old certificate is still served; with port 80 open again the changed
   name list is re-issued; an apply renews a certificate within renew_before_days
   of its expiry;
6. jupyter.clean deletes the formula's lineage and nothing else of certbot's.
"""

import base64
import contextlib
import json
import re
import socket
import subprocess
import time
from types import SimpleNamespace

import pytest
import requests
import yaml
from cryptography.hazmat.primitives import serialization

from support.jupyter_http import JupyterClient

pytestmark = pytest.mark.lab

REPO_IN_NODE = "/srv/jupyter-formula"
ETC = "/etc/jupyter-formula"  # deploy.sh's Salt config in the node
CA_IN_NODE = "/etc/jflab/pebble-api-ca.pem"
PASSWORD = "acme-lab-Pw-7341-heron"
EMAIL = "admin@lab.test"
WEBROOT = "/var/lib/jupyter-formula-acme/webroot"
KEY_COPY = "/etc/ssl/jupyter/jupyter.key"
STATE_ID = "jupyter_acme_|-jupyter-acme-certificate-jupyter_|-jupyter_|-certificate"
FIGURES = {}  # printed at the end of the module: times, and the comments of the failures


def failed(results):
    """States that failed (Salt's "state not found" entries have no __id__)."""
    return {key: ret.get("comment") for key, ret in results.items() if ret.get("result") is False}


def pillar(pebble, names, **acme):
    return {
        "password": PASSWORD,
        "nginx": {"server_name": names, "tls": {"acme": {
            "email": EMAIL, "directory": pebble["directory"], "ca_bundle": CA_IN_NODE, **acme}}},
    }


def apply(lab, node, data, sls=None, timeout=900):
    """deploy.sh in the node with https_proxy exported, as some hosts do; returns (Result, results)."""
    lab.put(node, "/root/pillar.sls", yaml.safe_dump({"jupyter": data}), mode="0600")
    env = {"JUPYTER_FORMULA_VENV": lab.SALT_VENV, "https_proxy": lab.PROXY_URL, "HTTPS_PROXY": lab.PROXY_URL}
    if sls:  # another sls than jupyter, with the config deploy.sh wrote
        cmd = [f"{lab.SALT_VENV}/bin/salt-call", f"--config-dir={ETC}", "--local", "--out=json",
               "state.apply", sls]
    else:
        cmd = [f"{REPO_IN_NODE}/deploy.sh", "/root/pillar.sls", "--out=json"]
    started = time.monotonic()
    with lab.phase(f"apply {sls or 'jupyter'} in {node}"):
        res = lab.run(node, cmd, env=env, timeout=timeout)
    try:
        results = lab.first_json(res.stdout)["local"]
    except (ValueError, KeyError, TypeError):
        raise AssertionError(f"no state results from {node}: {res}") from None
    return SimpleNamespace(res=res, results=results, seconds=time.monotonic() - started)


def served(ip, fqdn, tmp_path):
    """The certificate chain nginx serves for fqdn, as PEM files: (leaf, rest of the chain)."""
    out = subprocess.run(["openssl", "s_client", "-connect", f"{ip}:443", "-servername", fqdn, "-showcerts"],
                         input="", capture_output=True, text=True, timeout=30).stdout
    pems = re.findall(r"-----BEGIN CERTIFICATE-----.+?-----END CERTIFICATE-----\n", out, re.S)
    assert pems, out
    leaf, chain = tmp_path / "leaf.pem", tmp_path / "chain.pem"
    leaf.write_text(pems[0])
    chain.write_text("".join(pems[1:]))
    return leaf, chain


def serial(ip, fqdn, tmp_path):
    leaf, _ = served(ip, fqdn, tmp_path)
    text = subprocess.run(["openssl", "x509", "-noout", "-serial", "-in", str(leaf)],
                          capture_output=True, text=True, check=True).stdout
    return text.strip().split("=", 1)[1].lower().lstrip("0")


@contextlib.contextmanager
def resolving(name, ip):
    """name resolves to ip in this process (the lab's DNS serves Pebble only)."""
    real = socket.getaddrinfo

    def getaddrinfo(host, *args, **kwargs):
        return real(ip if host == name else host, *args, **kwargs)

    socket.getaddrinfo = getaddrinfo
    try:
        yield
    finally:
        socket.getaddrinfo = real


@pytest.fixture(scope="module")
def node(lab, suite, pebble, repo_bind, tmp_path_factory):
    name = f"acme{lab.SUITES[suite]}"  # acme12, acme13: Debian's certbot 2.1 and 4.0
    ip = lab.boot(name, binds_ro=[repo_bind], suite=suite)
    FIGURES.clear()
    try:
        fqdn = lab.node_fqdn(name)
        lab.add_dns(fqdn, ip)
        lab.put(name, CA_IN_NODE, open(pebble["ca_bundle"]).read())
        root = tmp_path_factory.mktemp("pebble") / "root.pem"
        root.write_text(lab.pebble_root())
        first = apply(lab, name, pillar(pebble, [fqdn]))
        FIGURES["first apply (s)"] = round(first.seconds, 1)
        yield SimpleNamespace(name=name, ip=ip, fqdn=fqdn, root=root, first=first)
    finally:
        for host in (name, "www-" + name, "other-" + name):
            with contextlib.suppress(Exception):
                lab.remove_dns(lab.node_fqdn(host))
        lab.remove(name)
        print(f"\nacme figures ({suite}): {json.dumps(FIGURES, indent=1)}")


@pytest.fixture
def no_proxy_env(monkeypatch, node):
    """Clients on the host reach the node directly and trust Pebble's root only (requests
    lets REQUESTS_CA_BUNDLE / CURL_CA_BUNDLE override a session's verify)."""
    for var in ("https_proxy", "HTTPS_PROXY", "http_proxy", "HTTP_PROXY", "all_proxy", "ALL_PROXY",
                "CURL_CA_BUNDLE"):
        monkeypatch.delenv(var, raising=False)
    for var in ("REQUESTS_CA_BUNDLE", "WEBSOCKET_CLIENT_CA_BUNDLE"):
        monkeypatch.setenv(var, str(node.root))


def test_first_apply_obtains_a_certificate_signed_by_pebble(lab, node, tmp_path):
    bad = failed(node.first.results)
    assert node.first.res.ok and not bad, f"{bad}\n{node.first.res}"
    ret = node.first.results[STATE_ID]
    cert = ret["changes"]["certificate"]
    assert cert["old"] is None and cert["new"]["names"] == [node.fqdn], ret
    assert cert["reason"] == "no certificate yet"
    assert ret["changes"]["nginx"]["served"] == "challenge-only site", ret
    FIGURES["issue, certbot (s)"] = cert["seconds"]
    FIGURES["issue, acme state (s)"] = round(ret["duration"] / 1000, 1)

    leaf, chain = served(node.ip, node.fqdn, tmp_path)
    ok = subprocess.run(["openssl", "verify", "-CAfile", str(node.root), "-untrusted", str(chain), str(leaf)],
                        capture_output=True, text=True)
    assert ok.returncode == 0 and ": OK" in ok.stdout, ok
    other = subprocess.run(["openssl", "verify", "-CAfile", lab.ensure_pebble()["ca_bundle"], "-untrusted",
                            str(chain), str(leaf)], capture_output=True, text=True)
    assert other.returncode != 0, other  # the check can fail
    assert cert["new"]["serial"] == serial(node.ip, node.fqdn, tmp_path)

    # jupyter.settings shows the certificate's path, names and expiry
    res = lab.run(node.name, [f"{lab.SALT_VENV}/bin/salt-call", f"--config-dir={ETC}", "--local", "--out=json",
                              "jupyter.settings"])
    tls = lab.first_json(res.stdout)["local"]["sites"]["jupyter"]["tls"]
    shown = tls["acme"]["certificate"]
    assert shown["path"] == tls["certificate"] == "/etc/ssl/jupyter/jupyter.crt"
    assert shown["names"] == [node.fqdn] and shown["serial"] == cert["new"]["serial"]
    assert shown["not_after"] == cert["new"]["not_after"]


def test_https_login_kernel_hsts_and_http_redirect(lab, node, no_proxy_env):
    with resolving(node.fqdn, node.ip):
        client = JupyterClient(f"https://{node.fqdn}/", verify=str(node.root), timeout=60)
        assert client.login(PASSWORD)
        kernel = client.start_kernel()
        try:
            assert client.execute(kernel, "6*7") == "42"
        finally:
            client.delete_kernel(kernel)
        page = requests.get(f"https://{node.fqdn}/login", verify=str(node.root), timeout=30)
        assert page.headers["Strict-Transport-Security"] == "max-age=31536000"

        plain = requests.get(f"http://{node.fqdn}/tree?x=1", allow_redirects=False, timeout=30)
        assert plain.status_code == 301 and plain.headers["Location"] == f"https://{node.fqdn}/tree?x=1"
        lab.put(node.name, f"{WEBROOT}/.well-known/acme-challenge/lab-token", "lab-token-body")
        try:
            token = requests.get(f"http://{node.fqdn}/.well-known/acme-challenge/lab-token",
                                 allow_redirects=False, timeout=30)
            assert token.status_code == 200 and token.text == "lab-token-body"
            missing = requests.get(f"http://{node.fqdn}/.well-known/acme-challenge/none", allow_redirects=False,
                                   timeout=30)
            assert missing.status_code == 404  # answered on http, not redirected
        finally:
            lab.run(node.name, ["rm", "-f", f"{WEBROOT}/.well-known/acme-challenge/lab-token"])


def test_keys_are_root_only_and_in_no_output_log_or_cache(lab, node):
    modes = lab.run(node.name, "stat -c '%a %U %n' /etc/letsencrypt/accounts /etc/letsencrypt/archive "
                               "/etc/letsencrypt/live /etc/letsencrypt/archive/jupyter/privkey1.pem "
                               f"{KEY_COPY} $(find /etc/letsencrypt/accounts -name private_key.json)", check=True)
    for line in modes.stdout.splitlines():
        mode, owner, path = line.split(" ", 2)
        assert owner == "root" and int(mode, 8) & 0o077 == 0, line
    key = serialization.load_pem_private_key(lab.run(node.name, ["cat", KEY_COPY], check=True).stdout.encode(), None)
    scalar = key.private_numbers().private_value.to_bytes(32, "big")
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                            serialization.NoEncryption()).decode().splitlines()[1:-1]
    account = json.loads(lab.run(node.name, "cat $(find /etc/letsencrypt/accounts -name private_key.json)",
                                 check=True).stdout)
    # the private scalar as hex, base64 and base64url, the PEM lines that hold it (the last
    # line of a P-256 PKCS#8 key is the public point only: it is in the CSR certbot logs),
    # and the account key's private RSA fields
    secrets = [scalar.hex(), base64.b64encode(scalar).decode(), base64.urlsafe_b64encode(scalar).decode().rstrip("="),
               *pem[:-1], *(account[field] for field in ("d", "p", "q"))]
    for secret in secrets:
        assert secret not in node.first.res.stdout + node.first.res.stderr
        found = lab.run(node.name, ["grep", "-rlF", secret, "/var/cache/jupyter-formula", "/var/log/salt", ETC,
                                    "/var/log/letsencrypt"])
        assert found.stdout == "", f"{secret[:6]}... in {found.stdout}"


def systemd_env(lab, name):
    """The environment certbot's own renewals run with (certbot.service, with the formula's drop-in)."""
    out = lab.run(name, ["systemctl", "show", "certbot.service", "-p", "Environment", "--value"], check=True).stdout
    return dict(item.split("=", 1) for item in out.split())


def test_renewal_by_certbots_timer_service_keeps_a_websocket(lab, node, no_proxy_env, tmp_path):
    res = lab.run(node.name, ["systemctl", "is-enabled", "certbot.timer"])
    assert res.stdout.strip() == "enabled", res
    assert lab.run(node.name, ["systemctl", "is-active", "certbot.timer"]).stdout.strip() == "active"
    env = systemd_env(lab, node.name)
    assert env["REQUESTS_CA_BUNDLE"] == "/var/lib/jupyter-formula-acme/ca-bundle.pem"
    assert env["no_proxy"] == env["NO_PROXY"] == lab.HOST_IP
    conf = lab.run(node.name, ["cat", "/etc/letsencrypt/renewal/jupyter.conf"], check=True).stdout
    assert "renew_before_expiry = 30 days" in conf
    assert f"renew_hook = /usr/local/sbin/jupyter-acme-deploy-hook /etc/ssl/jupyter/jupyter.crt {KEY_COPY} nginx" \
        in conf

    before = serial(node.ip, node.fqdn, tmp_path)
    master = lab.run(node.name, ["cat", "/run/nginx.pid"], check=True).stdout.strip()
    with resolving(node.fqdn, node.ip):
        client = JupyterClient(f"https://{node.fqdn}/", verify=str(node.root), timeout=60)
        assert client.login(PASSWORD)
        kernel = client.start_kernel()
        conn, _ = client.open_channels(kernel)
        try:
            assert client.execute(kernel, "6*7", conn=conn) == "42"
            # due for certbot: the timer's own service renews it (its -q renew, with the drop-in's environment)
            lab.run(node.name, ["sed", "-i", "s/^renew_before_expiry = .*/renew_before_expiry = 3650 days/",
                                "/etc/letsencrypt/renewal/jupyter.conf"], check=True)
            started = time.monotonic()
            try:
                res = lab.run(node.name, ["systemctl", "start", "certbot.service"], timeout=300)
            finally:
                lab.run(node.name, ["sed", "-i", "s/^renew_before_expiry = .*/renew_before_expiry = 30 days/",
                                    "/etc/letsencrypt/renewal/jupyter.conf"], check=True)
            FIGURES["renewal by certbot.service (s)"] = round(time.monotonic() - started, 1)
            assert res.ok, (res, lab.run(node.name, "journalctl -u certbot.service -n 30 --no-pager").stdout)
            deadline = time.monotonic() + 10
            while (after := serial(node.ip, node.fqdn, tmp_path)) == before and time.monotonic() < deadline:
                time.sleep(0.3)
            assert after != before
            # the same websocket, across the reload
            assert client.execute(kernel, "6*9", conn=conn) == "54"
        finally:
            conn.close()
            client.delete_kernel(kernel)
    assert lab.run(node.name, ["cat", "/run/nginx.pid"], check=True).stdout.strip() == master  # reloaded, not restarted
    journal = lab.run(node.name, "journalctl -u certbot.service -n 50 --no-pager").stdout
    assert "PRIVATE KEY" not in journal


def test_second_apply_changes_nothing(lab, node, pebble):
    again = apply(lab, node.name, pillar(pebble, [node.fqdn]))
    assert again.res.ok and lab.salt_changed(again.results) == [], lab.salt_changed(again.results)
    assert "is current" in again.results[STATE_ID]["comment"]
    FIGURES["second apply (s)"] = round(again.seconds, 1)


def test_a_name_without_dns_fails_naming_the_cause(lab, node, pebble, tmp_path):
    before = serial(node.ip, node.fqdn, tmp_path)
    ghost = lab.node_fqdn("ghost-" + node.name)  # no record in the lab's DNS
    bad = apply(lab, node.name, pillar(pebble, [node.fqdn, ghost]))
    assert not bad.res.ok
    comment = bad.results[STATE_ID]["comment"]
    FIGURES["comment, a name without DNS"] = comment
    assert bad.results[STATE_ID]["result"] is False
    assert "DNS does not point here" in comment and ghost in comment, comment
    assert f"keeps its certificate (serial {before}" in comment, comment
    assert serial(node.ip, node.fqdn, tmp_path) == before


def test_port_80_blocked_fails_naming_the_cause_then_the_names_are_reissued(lab, node, pebble, tmp_path):
    www = lab.node_fqdn("www-" + node.name)
    lab.add_dns(www, node.ip)
    res = lab.run(node.name, "apt-get install -y -q --no-install-recommends nftables", timeout=600)
    assert res.ok, res
    block = (f"nft add table inet jflab && nft add chain inet jflab input '{{ type filter hook input priority 0; }}'"
             f" && nft add rule inet jflab input ip saddr {lab.HOST_IP} tcp dport 80 reject with tcp reset")
    assert lab.run(node.name, block).ok
    before = serial(node.ip, node.fqdn, tmp_path)
    try:
        bad = apply(lab, node.name, pillar(pebble, [node.fqdn, www]))
        ret = bad.results[STATE_ID]
        FIGURES["comment, port 80 blocked"] = ret["comment"]
        assert not bad.res.ok and ret["result"] is False
        assert "port 80 is unreachable" in ret["comment"], ret["comment"]
        assert f"keeps its certificate (serial {before}" in ret["comment"]
        assert serial(node.ip, node.fqdn, tmp_path) == before
    finally:
        lab.run(node.name, ["nft", "delete", "table", "inet", "jflab"])
    good = apply(lab, node.name, pillar(pebble, [node.fqdn, www]))
    assert good.res.ok and not failed(good.results), failed(good.results)
    cert = good.results[STATE_ID]["changes"]["certificate"]
    assert cert["new"]["names"] == sorted([node.fqdn, www]) and cert["old"]["serial"] == before
    assert "the names changed (add " in cert["reason"]
    assert serial(node.ip, www, tmp_path) == cert["new"]["serial"]
    FIGURES["re-issue for a changed name list, certbot (s)"] = cert["seconds"]
    again = apply(lab, node.name, pillar(pebble, [node.fqdn, www]))
    assert again.res.ok and lab.salt_changed(again.results) == []


def test_an_apply_within_renew_before_days_renews(lab, node, pebble, tmp_path):
    """The lab cannot move time, and Pebble's certificates last 5 years: the lineage's current
    certificate (what certbot and the formula read the expiry from) is replaced by one that
    expires in 10 days, with the lineage's key and names; the default threshold is 30 days."""
    names = sorted([node.fqdn, lab.node_fqdn("www-" + node.name)])
    san = ",".join(f"DNS:{name}" for name in names)
    res = lab.run(node.name, ["sh", "-c", 'openssl req -x509 -key /etc/letsencrypt/live/jupyter/privkey.pem '
                              f'-subj "/CN={names[0]}" -addext "subjectAltName={san}" -days 10 '
                              '-out "$(readlink -f /etc/letsencrypt/live/jupyter/cert.pem)" && '
                              'openssl x509 -noout -serial -in /etc/letsencrypt/live/jupyter/cert.pem'])
    assert res.ok, res
    short = res.stdout.strip().split("=", 1)[1].lower().lstrip("0")
    before = serial(node.ip, node.fqdn, tmp_path)
    due = apply(lab, node.name, pillar(pebble, names))
    assert due.res.ok and not failed(due.results), failed(due.results)
    cert = due.results[STATE_ID]["changes"]["certificate"]
    assert cert["old"]["serial"] == short and "within renew_before_days (30)" in cert["reason"], cert
    assert cert["new"]["names"] == names
    assert serial(node.ip, node.fqdn, tmp_path) == cert["new"]["serial"] not in (before, short)
    FIGURES["renewal by an apply, certbot (s)"] = cert["seconds"]
    again = apply(lab, node.name, pillar(pebble, names))
    assert again.res.ok and lab.salt_changed(again.results) == []


def test_clean_deletes_the_formulas_lineage_and_nothing_else(lab, node, pebble):
    # an admin's own certificate, through the formula's webroot (port 80 answers any name)
    other = lab.node_fqdn("other-" + node.name)
    lab.add_dns(other, node.ip)
    res = lab.run(node.name, ["certbot", "certonly", "--non-interactive", "--agree-tos", "--no-eff-email",
                              "--email", EMAIL, "--server", pebble["directory"], "--webroot", "-w", WEBROOT,
                              "--cert-name", "admins", "-d", other],
                  env={"REQUESTS_CA_BUNDLE": CA_IN_NODE, "no_proxy": lab.HOST_IP}, timeout=300)
    assert res.ok, res
    clean = apply(lab, node.name, pillar(pebble, [node.fqdn]), sls="jupyter.clean")
    acme_states = {key: ret for key, ret in clean.results.items() if "jupyter-clean-acme" in key}
    assert acme_states and not failed(acme_states), failed(acme_states)
    left = lab.run(node.name, ["certbot", "certificates"], check=True).stdout
    assert "Certificate Name: admins" in left and "Certificate Name: jupyter" not in left, left
    gone = ["/etc/letsencrypt/renewal/jupyter.conf", "/etc/letsencrypt/live/jupyter", KEY_COPY,
            "/etc/ssl/jupyter/jupyter.crt", "/usr/local/sbin/jupyter-acme-deploy-hook",
            "/var/lib/jupyter-formula-acme", "/etc/systemd/system/certbot.service.d/jupyter-formula.conf"]
    for path in gone:
        assert lab.run(node.name, ["test", "-e", path]).rc != 0, f"{path} is still there"
    for path in ("/etc/letsencrypt/live/admins/fullchain.pem", "/etc/letsencrypt/accounts", "/usr/bin/certbot"):
        assert lab.run(node.name, ["test", "-e", path]).rc == 0, f"{path} was removed"
    assert lab.run(node.name, ["systemctl", "is-enabled", "certbot.timer"]).stdout.strip() == "enabled"
    # and the whole of jupyter.clean passed
    assert clean.res.ok and not failed(clean.results), failed(clean.results)
