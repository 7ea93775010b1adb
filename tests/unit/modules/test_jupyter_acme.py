"""jupyter_acme (execution module) with the loader mocked: what certbot's output means,
masking, certificates read with cryptography, certbot's renewal files, the decision to
obtain or re-issue, the deploy hook (the real script, with nginx and service faked),
the local challenge probe, and certbot itself faked by a script on disk."""

import datetime
import http.server
import os
import shlex
import socket
import stat
import subprocess
import threading
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from support.loader import REPO, load

HOOK = REPO / "jupyter" / "files" / "acme-deploy-hook.sh"
NOW = datetime.datetime(2030, 1, 1, tzinfo=datetime.timezone.utc)
SERVER = "https://198.51.100.1:14000/dir"


def make_cert(names, days=90, start=NOW):
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, names[0])]))
        .issuer_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "Pebble Intermediate CA 1234")]))
        .public_key(key.public_key())
        .serial_number(0xABC123)
        .not_valid_before(start - datetime.timedelta(days=1))
        .not_valid_after(start + datetime.timedelta(days=days))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(n) for n in names]), critical=False)
        .sign(key, hashes.SHA256())
    )
    key_pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption()).decode()
    return cert.public_bytes(serialization.Encoding.PEM).decode(), key_pem


RENEWAL_CONF = """\
# renew_before_expiry = 30 days
version = 2.1.0
archive_dir = {config}/archive/{name}
cert = {config}/live/{name}/cert.pem
privkey = {config}/live/{name}/privkey.pem
chain = {config}/live/{name}/chain.pem
fullchain = {config}/live/{name}/fullchain.pem

# Options used in the renewal process
[renewalparams]
account = 0123456789abcdef0123456789abcdef
authenticator = webroot
webroot_path = /var/lib/jupyter-formula-acme/webroot,
server = {server}
key_type = ecdsa
renew_hook = {hook}
[[webroot_map]]
nb.example.org = /var/lib/jupyter-formula-acme/webroot
"""


def module(**salt):
    return load("_modules", "jupyter_acme", salt=salt)


@pytest.fixture
def acme_site(tmp_path):
    """A derived site (as jupyter.settings gives it) whose paths are all under tmp_path."""
    config = tmp_path / "letsencrypt"
    tls_dir = tmp_path / "ssl"
    hook = f"/usr/local/sbin/jupyter-acme-deploy-hook {tls_dir}/jupyter.crt {tls_dir}/jupyter.key nginx"
    site = {
        "name": "jupyter", "file": str(tmp_path / "sites-available/jupyter.conf"),
        "enabled": str(tmp_path / "sites-enabled/jupyter.conf"), "server_name": ["nb.example.org"],
        "listen": 80, "default_server": True, "ipv6": False,
        "tls": {
            "listen": 443, "redirect_http": True,
            "certificate": str(tls_dir / "jupyter.crt"), "certificate_key": str(tls_dir / "jupyter.key"),
            "acme": {
                "email": "admin@example.org", "directory": SERVER, "ca_bundle": None, "renew_before_days": 30,
                "server": SERVER, "lineage": "jupyter", "names": ["nb.example.org"],
                "live_dir": str(config / "live/jupyter"), "renewal_conf": str(config / "renewal/jupyter.conf"),
                "webroot": str(tmp_path / "webroot"), "ca_file": None, "deploy_hook": hook,
                "direct": "198.51.100.1", "certificate": None,
            },
        },
    }
    site["config_dir"] = config  # for the tests' own use
    return site


def issue(site, names=("nb.example.org",), days=90, server=SERVER, deploy=True, hook=None, before=None):
    """What certbot leaves on disk after issuing site's lineage (and its hook deployed it)."""
    config, name = site["config_dir"], site["tls"]["acme"]["lineage"]
    cert, key = make_cert(list(names), days)
    live = config / "live" / name
    live.mkdir(parents=True, exist_ok=True)
    for fname, text in (("cert.pem", cert), ("fullchain.pem", cert), ("privkey.pem", key)):
        (live / fname).write_text(text)
    (config / "renewal").mkdir(parents=True, exist_ok=True)
    text = RENEWAL_CONF.format(config=config, name=name, server=server,
                               hook=hook or site["tls"]["acme"]["deploy_hook"])
    if before:
        text = text.replace("# renew_before_expiry = 30 days", f"renew_before_expiry = {before}")
    Path(site["tls"]["acme"]["renewal_conf"]).write_text(text)
    if deploy:
        Path(site["tls"]["certificate"]).parent.mkdir(parents=True, exist_ok=True)
        Path(site["tls"]["certificate"]).write_text(cert)
        Path(site["tls"]["certificate_key"]).write_text(key)
    return cert, key


# ---------------------------------------------------------------------------
# masking and classification

KEY_PEM = make_cert(["x.example.org"])[1]


def test_mask_hides_key_material_and_keeps_what_explains_the_failure():
    token = "LoqXcYV8q5ONbJQxbmR7SCTNo3tiAXDfowyjxAjEuX0"
    text = (
        f"Fetching http://nb.example.org/.well-known/acme-challenge/{token}: Connection refused\n"
        f"{KEY_PEM}"
        '{"protected": "eyJhbGciOiJFUzI1NiJ9", "payload": "e30", "signature": "c2lnbmF0dXJl", "d": "c2VjcmV0"}\n'
        "See the logfile /var/log/letsencrypt/letsencrypt.log; server https://198.51.100.1:14000/dir\n"
    )
    masked = module().mask(text)
    assert "PRIVATE KEY" not in masked.replace("<private key <hidden>>", "")
    assert KEY_PEM.splitlines()[1] not in masked
    assert token not in masked
    for secret in ("eyJhbGciOiJFUzI1NiJ9", "c2lnbmF0dXJl", "c2VjcmV0"):
        assert secret not in masked
    for kept in ("nb.example.org", "Connection refused", "/var/log/letsencrypt/letsencrypt.log",
                 "https://198.51.100.1:14000/dir"):
        assert kept in masked


def failed_authz(typ, detail, domain="nb.example.org"):
    """certbot 2.x's report of failed authorizations (auth_handler._report_failed_authzrs)."""
    return (
        "Saving debug log to /var/log/letsencrypt/letsencrypt.log\n"
        f"Requesting a certificate for {domain}\n\n"
        "Certbot failed to authenticate some domains (authenticator: webroot). "
        "The Certificate Authority reported these problems:\n"
        f"  Domain: {domain}\n  Type:   {typ}\n  Detail: {detail}\n\n"
        "Hint: The Certificate Authority failed to download the temporary challenge files created by Certbot. "
        "Ensure that the listed domains serve their content from the provided --webroot-path/-w and that files "
        "created there can be downloaded from the internet.\n\n"
        "Some challenges have failed.\n"
        "Ask for help or search for solutions at https://community.letsencrypt.org. See the logfile "
        "/var/log/letsencrypt/letsencrypt.log or re-run Certbot with -v for more details.\n"
    )


@pytest.mark.parametrize("output, cause", [
    (failed_authz("connection", "198.51.100.2: Fetching http://nb.example.org/.well-known/acme-challenge/x: "
                                "Connection refused"), "port_80"),
    (failed_authz("connection", "198.51.100.2: Fetching http://nb.example.org/.well-known/acme-challenge/x: "
                                "Timeout during connect (likely firewall problem)"), "port_80"),
    (failed_authz("dns", "DNS problem: NXDOMAIN looking up A for nb.example.org - check that a DNS record "
                         "exists for this domain"), "dns"),
    (failed_authz("unauthorized", "203.0.113.9: Invalid response from "
                                  "http://nb.example.org/.well-known/acme-challenge/x: 404"), "dns"),
    ("An unexpected error occurred:\nError creating new order :: too many certificates (5) already issued for "
     "this exact set of domains in the last 168h0m0s, retry after 2030-01-02 00:00:00 UTC: see "
     "https://letsencrypt.org/docs/rate-limits/\n", "rate_limit"),
    ("An unexpected error occurred:\nError creating new order :: Cannot issue for \"nb.example.org\": The ACME "
     "server refuses to issue a certificate for this domain name, because it is forbidden by policy\n", "refused"),
    (failed_authz("caa", "CAA record for nb.example.org prevents issuance"), "refused"),
    ("An unexpected error occurred:\nrequests.exceptions.ConnectionError: HTTPSConnectionPool(host='198.51.100.1', "
     "port=14000): Max retries exceeded with url: /dir (Caused by NewConnectionError(...: Failed to establish a "
     "new connection: [Errno 111] Connection refused'))\n", "ca_unreachable"),
    ("An unexpected error occurred:\nrequests.exceptions.SSLError: HTTPSConnectionPool(host='198.51.100.1', "
     "port=14000): Max retries exceeded with url: /dir (Caused by SSLError(SSLCertVerificationError(1, "
     "'[SSL: CERTIFICATE_VERIFY_FAILED] certificate verify failed: unable to get local issuer certificate')))\n",
     "ca_unreachable"),
    # Pebble's words, as the lab saw them
    (failed_authz("connection", 'Get "http://ghost.lab.test:80/.well-known/acme-challenge/x": could not resolve '
                                'URL "http://ghost.lab.test:80/.well-known/acme-challenge/x"', "ghost.lab.test"), "dns"),
    (failed_authz("connection", 'Get "http://www.lab.test:80/.well-known/acme-challenge/x": dial tcp '
                                "198.51.100.10:80: connect: connection refused", "www.lab.test"), "port_80"),
    ("Another instance of Certbot is already running.\n", "busy"),
    ("Something nobody expected.\n", "unknown"),
])
def test_classify_names_the_cause(output, cause):
    got = module().classify(output, ["nb.example.org"], SERVER)
    assert got["cause"] == cause, got
    assert got["why"]


def test_the_cause_names_the_names_the_ca_reported_it_for():
    pebble_dns = ('Get "http://ghost.lab.test:80/.well-known/acme-challenge/x": could not resolve URL '
                  '"http://ghost.lab.test:80/.well-known/acme-challenge/x"')
    refused = 'Get "http://nb.lab.test:80/.well-known/acme-challenge/x": dial tcp 198.51.100.10:80: connection refused'
    report = failed_authz("connection", refused, "nb.lab.test").replace(
        "\n\nHint:", f"\n  Domain: ghost.lab.test\n  Type:   connection\n  Detail: {pebble_dns}\n\nHint:")
    got = module().classify(report, ["nb.lab.test", "ghost.lab.test"])
    # DNS first (nothing else can work for that name), naming only the name without a record
    assert got["cause"] == "dns" and got["names"] == ["ghost.lab.test"]
    assert "could not resolve ghost.lab.test to this host" in got["why"]
    only_port = module().classify(failed_authz("connection", refused, "nb.lab.test"), ["nb.lab.test", "x.lab.test"])
    assert only_port["cause"] == "port_80" and only_port["names"] == ["nb.lab.test"]


def test_each_cause_says_what_it_means():
    acme = module()
    dns = acme.classify(failed_authz("dns", "NXDOMAIN", "a.example.org"), ["a.example.org", "b.example.org"])["why"]
    assert "DNS does not point here" in dns and "a.example.org" in dns and "b.example.org" not in dns
    # no report per name (an error before validation): the site's names
    assert "a.example.org, b.example.org" in acme.classify("no valid A records", ["a.example.org", "b.example.org"])["why"]
    assert "port 80 is unreachable" in acme.classify(failed_authz("connection", "Connection refused"))["why"]
    assert "rate limit" in acme.classify("too many certificates already issued")["why"]
    assert "refused" in acme.classify(failed_authz("rejectedIdentifier", "bad name"))["why"]
    assert SERVER in acme.classify("Max retries exceeded with url: /dir", server=SERVER)["why"]


# ---------------------------------------------------------------------------
# certificates and certbot's files


def test_certificate_info_reads_names_serial_and_expiry(tmp_path):
    cert, _ = make_cert(["nb.example.org", "WWW.example.org"], days=10)
    (tmp_path / "c.pem").write_text(cert)
    info = module().certificate_info(str(tmp_path / "c.pem"))
    assert info["names"] == ["nb.example.org", "www.example.org"]
    assert info["serial"] == "abc123"
    assert info["not_after"] == "2030-01-11T00:00:00Z"
    assert info["issuer"] == "Pebble Intermediate CA 1234"
    assert module().certificate_info(str(tmp_path / "missing.pem")) is None
    (tmp_path / "junk.pem").write_text("not a certificate")
    assert module().certificate_info(str(tmp_path / "junk.pem")) is None


def test_renewal_conf_is_read_and_options_set_in_their_sections(tmp_path, acme_site):
    issue(acme_site)
    acme = module()
    path = acme_site["tls"]["acme"]["renewal_conf"]
    conf = acme.read_renewal_conf(path)
    assert conf["renewalparams"]["server"] == SERVER
    assert conf["renewalparams"]["renew_hook"] == acme_site["tls"]["acme"]["deploy_hook"]
    assert "renew_before_expiry" not in conf["top"]  # certbot's commented default
    assert "nb.example.org" not in conf["renewalparams"]  # the [[webroot_map]] subsection is left out

    text = Path(path).read_text()
    new = acme._set_options(text, {("top", "renew_before_expiry"): "20 days",
                                   ("renewalparams", "renew_hook"): "/usr/local/sbin/jupyter-acme-deploy-hook /a /b nginx"})
    Path(path).write_text(new)
    conf = acme.read_renewal_conf(path)
    assert conf["top"]["renew_before_expiry"] == "20 days"
    assert conf["renewalparams"]["renew_hook"] == "/usr/local/sbin/jupyter-acme-deploy-hook /a /b nginx"
    # the commented default became the option; everything else is as certbot wrote it
    assert new.count("renew_before_expiry") == 1 and new.startswith("renew_before_expiry = 20 days\n")
    assert len(new.splitlines()) == len(text.splitlines())
    assert "[[webroot_map]]\nnb.example.org = /var/lib/jupyter-formula-acme/webroot\n" in new
    # an option certbot did not write is added at the start of its section
    added = acme._set_options(new, {("renewalparams", "pref_challs"): "http-01"})
    assert "[renewalparams]\npref_challs = http-01\n" in added
    with pytest.raises(Exception, match="unquoted"):
        acme._set_options(new, {("renewalparams", "renew_hook"): "a, b"})


def test_lineages_lists_only_the_formulas(tmp_path, acme_site):
    issue(acme_site)
    renewal = acme_site["config_dir"] / "renewal"
    (renewal / "admins.conf").write_text(RENEWAL_CONF.format(
        config=acme_site["config_dir"], name="admins", server=SERVER, hook="systemctl reload apache2"))
    (renewal / "nohook.conf").write_text("version = 2.1.0\n[renewalparams]\nserver = x\n")
    found = module().lineages(str(acme_site["config_dir"]))
    assert list(found) == ["jupyter"]
    assert found["jupyter"]["copies"] == [acme_site["tls"]["certificate"], acme_site["tls"]["certificate_key"]]
    assert found["jupyter"]["server"] == SERVER
    assert module().lineages(str(tmp_path / "nothing")) == {}


# ---------------------------------------------------------------------------
# what an apply has to do


def test_status_without_a_lineage_asks_for_a_first_certificate(acme_site):
    st = module().status(acme_site, now=NOW)
    assert st["exists"] is False and st["reissue"] == ["no certificate yet"]
    assert st["certificate"] is None and st["served"] is None


def test_status_of_a_current_certificate_asks_for_nothing(acme_site):
    issue(acme_site, before="30 days")
    st = module().status(acme_site, now=NOW)
    assert st["exists"] and st["owned"]
    assert st["reissue"] == [] and st["renewal"] == {} and st["deploy"] is False
    assert st["certificate"]["names"] == ["nb.example.org"] and st["served"]["serial"] == "abc123"


@pytest.mark.parametrize("change, reason", [
    ({"server_name": ["nb.example.org", "www.example.org"]}, "the names changed (add www.example.org)"),
    ({"server_name": ["www.example.org"]}, "the names changed (add www.example.org; drop nb.example.org)"),
    ({"server": "https://acme.example.org/directory"}, "the ACME directory changed"),
    ({"renew_before_days": 95}, "within renew_before_days (95)"),
])
def test_status_asks_for_a_reissue(acme_site, change, reason):
    issue(acme_site, before="30 days")
    acme = acme_site["tls"]["acme"]
    if "server_name" in change:
        acme["names"] = change["server_name"]
    if "server" in change:
        acme["server"] = change["server"]
    if "renew_before_days" in change:
        acme["renew_before_days"] = change["renew_before_days"]
    st = module().status(acme_site, now=NOW)
    assert len(st["reissue"]) == 1 and reason in st["reissue"][0], st["reissue"]


def test_status_near_expiry_says_when(acme_site):
    issue(acme_site, days=29, before="30 days")
    st = module().status(acme_site, now=NOW)
    assert st["reissue"] == ["it expires on 2030-01-30T00:00:00Z, within renew_before_days (30)"]
    issue(acme_site, days=31, before="30 days")
    assert module().status(acme_site, now=NOW)["reissue"] == []


def test_status_sees_a_foreign_lineage_and_stale_copies(acme_site):
    issue(acme_site, hook="systemctl reload apache2")
    st = module().status(acme_site, now=NOW)
    assert st["exists"] and not st["owned"]
    issue(acme_site, before="30 days")
    Path(acme_site["tls"]["certificate_key"]).write_text("another key")
    assert module().status(acme_site, now=NOW)["deploy"] is True


def test_configure_renewal_sets_threshold_and_hook_keeping_the_file_mode(acme_site):
    issue(acme_site, hook="/usr/local/sbin/jupyter-acme-deploy-hook /old/x.crt /old/x.key nginx")
    path = Path(acme_site["tls"]["acme"]["renewal_conf"])
    path.chmod(0o600)
    acme_site["tls"]["acme"]["renew_before_days"] = 20
    acme = module()
    changed = acme.configure_renewal(acme_site)
    assert changed == {"renew_hook": acme_site["tls"]["acme"]["deploy_hook"], "renew_before_expiry": "20 days"}
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert acme.status(acme_site, now=NOW)["renewal"] == {}
    assert acme.configure_renewal(acme_site) == {}  # idempotent


def test_environment_trusts_the_ca_file_and_reaches_the_directory_directly():
    acme = module()
    env = acme._environment({"ca_file": "/x/ca.pem", "direct": "198.51.100.1"},
                           base={"PATH": "/bin", "https_proxy": "http://proxy:3128", "no_proxy": "localhost"})
    assert env["REQUESTS_CA_BUNDLE"] == "/x/ca.pem"
    assert env["no_proxy"] == "localhost,198.51.100.1" and env["NO_PROXY"] == "198.51.100.1"
    assert env["https_proxy"] == "http://proxy:3128"
    again = acme._environment({"ca_file": None, "direct": "198.51.100.1"}, base=env)
    assert again["no_proxy"] == "localhost,198.51.100.1"
    # Let's Encrypt (directory: null): the host's proxy settings are left alone
    plain = acme._environment({"ca_file": None, "direct": None}, base={"PATH": "/bin", "https_proxy": "http://p"})
    assert "no_proxy" not in plain and "REQUESTS_CA_BUNDLE" not in plain


def test_certbot_command(acme_site):
    acme_site["tls"]["acme"]["names"] = ["nb.example.org", "www.example.org"]
    cmd = module().certbot_command(acme_site)
    joined = shlex.join(cmd)
    for part in ("certonly --non-interactive --agree-tos", f"--server {SERVER}", "--webroot --webroot-path",
                 "--cert-name jupyter", "-d nb.example.org -d www.example.org", "--email admin@example.org"):
        assert part in joined
    assert cmd[cmd.index("--deploy-hook") + 1] == acme_site["tls"]["acme"]["deploy_hook"]
    assert "--force-renewal" not in cmd
    forced = module().certbot_command(acme_site, force=True)
    assert "--force-renewal" in forced and "--renew-with-new-domains" in forced


# ---------------------------------------------------------------------------
# certbot, faked


def fake_certbot(tmp_path, script):
    path = tmp_path / "certbot"
    path.write_text("#!/bin/sh\n" + script)
    path.chmod(0o755)
    return str(path)


def test_obtain_classifies_and_masks_a_failure(tmp_path, acme_site, monkeypatch):
    args = tmp_path / "args"
    key_line = KEY_PEM.splitlines()[1]
    acme = module()
    acme.CERTBOT = fake_certbot(tmp_path, f"""
echo "$@" > {args}
env > {tmp_path}/env
cat <<'EOF'
{failed_authz("connection", "198.51.100.2: Fetching http://nb.example.org/.well-known/acme-challenge/"
                            "LoqXcYV8q5ONbJQxbmR7SCTNo3tiAXDfowyjxAjEuX0: Connection refused")}
EOF
printf '%s' '{KEY_PEM}' >&2
exit 1
""")
    monkeypatch.setenv("https_proxy", "http://198.51.100.1:3128")
    got = acme.obtain(acme_site)
    assert got["ok"] is False and got["cause"] == "port_80"
    assert "Connection refused" in got["details"] and "nb.example.org" in got["details"]
    assert key_line not in repr(got) and "LoqXcYV8q5ONbJQxbmR7SCTNo3tiAXDfowyjxAjEuX0" not in repr(got)
    env = (tmp_path / "env").read_text()
    assert "no_proxy=198.51.100.1" in env.splitlines() or any(
        line.startswith("no_proxy=") and line.endswith("198.51.100.1") for line in env.splitlines())
    assert "--cert-name jupyter" in args.read_text()


def test_obtain_success_and_a_missing_certbot(tmp_path, acme_site):
    acme = module()
    acme.CERTBOT = fake_certbot(tmp_path, "echo 'Successfully received certificate.'\n")
    got = acme.obtain(acme_site, force=True)
    assert got["ok"] is True and "Successfully" in got["output"] and got["seconds"] >= 0
    acme.CERTBOT = str(tmp_path / "no-such-certbot")
    got = acme.obtain(acme_site)
    assert got["ok"] is False and "not installed" in got["details"]


def test_delete_refuses_a_lineage_the_formula_did_not_make(tmp_path, acme_site):
    acme = module()
    acme.CERTBOT = fake_certbot(tmp_path, f"echo \"$@\" > {tmp_path}/args\n")
    issue(acme_site, hook="systemctl reload apache2")
    with pytest.raises(Exception, match="not made by the jupyter formula"):
        acme.delete("jupyter", str(acme_site["config_dir"]))
    assert not (tmp_path / "args").exists()
    issue(acme_site)
    assert acme.delete("jupyter", str(acme_site["config_dir"]))["ok"]
    assert (tmp_path / "args").read_text().startswith("delete --non-interactive --cert-name jupyter")
    assert acme.delete("other", str(acme_site["config_dir"]))["ok"]  # nothing to delete


# ---------------------------------------------------------------------------
# the deploy hook (the real script; nginx and service are fakes on PATH)


@pytest.fixture
def hook_env(tmp_path):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    calls = tmp_path / "calls"
    for tool in ("nginx", "service", "systemctl"):
        (bin_dir / tool).write_text(f'#!/bin/sh\necho "{tool} $*" >> {calls}\n'
                                    f'[ "{tool} $*" != "nginx -t" ] || [ ! -e {tmp_path}/nginx-fails ] || '
                                    '{ echo "nginx: [emerg] cannot load certificate" >&2; exit 1; }\n')
        (bin_dir / tool).chmod(0o755)
    return {"PATH": f"{bin_dir}:/usr/bin:/bin", "calls": calls, "tmp": tmp_path}


def run_hook(acme_site, hook_env):
    live = acme_site["tls"]["acme"]["live_dir"]
    env = {"PATH": hook_env["PATH"], "RENEWED_LINEAGE": live}
    return subprocess.run(["sh", str(HOOK), acme_site["tls"]["certificate"], acme_site["tls"]["certificate_key"],
                           "nginx"], env=env, capture_output=True, text=True)


@pytest.mark.skipif(os.path.isdir("/run/systemd/system"), reason="the fake service path is for hosts without systemd")
def test_hook_deploys_key_0600_tests_nginx_and_reloads(acme_site, hook_env):
    cert, key = issue(acme_site, deploy=False)
    res = run_hook(acme_site, hook_env)
    assert res.returncode == 0, res
    crt, k = Path(acme_site["tls"]["certificate"]), Path(acme_site["tls"]["certificate_key"])
    assert crt.read_text() == cert and k.read_text() == key
    assert stat.S_IMODE(k.stat().st_mode) == 0o600 and stat.S_IMODE(crt.stat().st_mode) == 0o644
    assert hook_env["calls"].read_text().splitlines() == ["nginx -t", "service nginx status", "service nginx reload"]
    assert sorted(p.name for p in crt.parent.iterdir()) == ["jupyter.crt", "jupyter.key"]  # no temporary files


@pytest.mark.skipif(os.path.isdir("/run/systemd/system"), reason="the fake service path is for hosts without systemd")
def test_hook_puts_the_old_files_back_when_nginx_rejects_them(acme_site, hook_env):
    old_cert, old_key = issue(acme_site)  # deployed
    issue(acme_site, deploy=False)  # a renewal: new files in the lineage
    (hook_env["tmp"] / "nginx-fails").touch()
    res = run_hook(acme_site, hook_env)
    assert res.returncode == 1 and "cannot load certificate" in res.stderr and "put back" in res.stderr
    assert Path(acme_site["tls"]["certificate"]).read_text() == old_cert
    assert Path(acme_site["tls"]["certificate_key"]).read_text() == old_key
    assert "reload" not in hook_env["calls"].read_text()


def test_hook_refuses_to_run_outside_certbot(acme_site, hook_env):
    res = subprocess.run(["sh", str(HOOK), "/tmp/x.crt", "/tmp/x.key"], env={"PATH": hook_env["PATH"]},
                         capture_output=True, text=True)
    assert res.returncode != 0 and "RENEWED_LINEAGE" in res.stderr


def test_deploy_runs_the_hook_with_the_lineage(tmp_path, acme_site):
    acme = module()
    script = fake_certbot(tmp_path, f'echo "$RENEWED_LINEAGE $*" > {tmp_path}/hook-args\n')
    acme_site["tls"]["acme"]["deploy_hook"] = f"{script} /a.crt /a.key nginx"
    assert acme.deploy(acme_site)["ok"]
    assert (tmp_path / "hook-args").read_text().split() == [acme_site["tls"]["acme"]["live_dir"], "/a.crt", "/a.key",
                                                           "nginx"]


# ---------------------------------------------------------------------------
# serving the challenge


def free_port():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture
def webserver(acme_site):
    """A stand-in for nginx: serves the webroot on 127.0.0.1, every Host alike."""
    root = Path(acme_site["tls"]["acme"]["webroot"])
    root.mkdir(parents=True)
    handler = lambda *a, **k: http.server.SimpleHTTPRequestHandler(*a, directory=str(root), **k)  # noqa: E731
    server = http.server.ThreadingHTTPServer(("127.0.0.1", free_port()), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    acme_site["listen"] = server.server_address[1]
    yield server
    server.shutdown()


def test_probe_fetches_a_file_from_the_webroot_and_removes_it(acme_site, webserver):
    acme_site["tls"]["acme"]["names"] = ["nb.example.org", "www.example.org"]
    got = module().probe(acme_site, timeout=5)
    assert got["ok"], got
    assert list((Path(acme_site["tls"]["acme"]["webroot"]) / ".well-known/acme-challenge").iterdir()) == []


def test_probe_fails_when_nothing_serves_the_webroot(acme_site):
    acme_site["listen"] = free_port()
    got = module().probe(acme_site, timeout=0.5)
    assert not got["ok"] and "does not serve the ACME challenge path" in got["message"]


class Nginx:
    """jupyter_nginx and service stand-ins."""

    def __init__(self, ok=True, running=True):
        self.ok, self.running, self.calls, self.written = ok, running, [], None

    def salt(self):
        return {
            "jupyter_nginx.render": lambda source, context, saltenv: f"rendered {source.rsplit('/', 1)[1]}",
            "jupyter_nginx.pending": lambda files: {path: "update" for path in files},
            "jupyter_nginx.replace_files": self.replace,
            "service.status": lambda name: self.running,
            "service.start": lambda name: self.calls.append(("start", name)) or True,
            "service.reload": lambda name: self.calls.append(("reload", name)) or True,
            "jupyter.settings": lambda **kw: {"nginx": {"service": "nginx", "distro_default_site": "/x/default"},
                                              "removed_sites": {"old": {"files": ["/x/old.conf"]}}},
        }

    def replace(self, files):
        self.written = files
        return {"ok": self.ok, "changed": {} if not self.ok else dict.fromkeys(files, "update"),
                "message": "" if self.ok else 'nginx: [emerg] duplicate default server'}


def test_serve_challenge_puts_a_challenge_only_site_without_a_certificate(acme_site, monkeypatch):
    nginx = Nginx()
    acme = module(**nginx.salt())
    monkeypatch.setattr(acme, "probe", lambda site: {"ok": True, "message": "served"})
    got = acme.serve_challenge(acme_site)
    assert got["ok"] and got["served"] == "challenge-only site"
    assert nginx.written[acme_site["file"]]["contents"] == "rendered acme-challenge-site.conf.jinja"
    assert nginx.written[acme_site["enabled"]] == {"link": acme_site["file"]}
    # as the sites state does: the distribution's default site and an earlier run's sites make way
    assert nginx.written["/x/default"] is None and nginx.written["/x/old.conf"] is None
    assert nginx.calls == [("reload", "nginx")]


def test_serve_challenge_with_a_certificate_puts_the_full_site_and_starts_nginx(acme_site, monkeypatch):
    issue(acme_site)
    nginx = Nginx(running=False)
    acme = module(**nginx.salt())
    monkeypatch.setattr(acme, "probe", lambda site: {"ok": True, "message": "served"})
    got = acme.serve_challenge(acme_site)
    assert got["served"] == "site"
    assert nginx.written[acme_site["file"]]["contents"] == "rendered nginx-site.conf.jinja"
    assert nginx.calls == [("start", "nginx")]


def test_serve_challenge_fails_with_nginxs_words(acme_site, monkeypatch):
    nginx = Nginx(ok=False)
    acme = module(**nginx.salt())
    monkeypatch.setattr(acme, "probe", lambda site: pytest.fail("probed after nginx refused"))
    got = acme.serve_challenge(acme_site)
    assert not got["ok"] and "duplicate default server" in got["message"] and "put back" in got["message"]
    assert nginx.calls == []
