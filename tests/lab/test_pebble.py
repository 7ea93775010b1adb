"""The lab's ACME test server: Pebble on the bridge issues a certificate to a node.

A bookworm node with Debian's certbot and nginx (installed through the lab's proxy)
obtains a certificate for its lab name with the webroot method. Pebble validates
over http on port 80 of the node, after resolving the name through the lab's DNS
(pebble-challtestsrv). This proves the lab part only; the formula's own ACME
support is tested on top of it.
"""

import subprocess
from types import SimpleNamespace

import pytest

pytestmark = pytest.mark.lab

NODE = "acme"
WEBROOT = "/var/www/html"  # Debian nginx's default site serves it on port 80
CA_IN_NODE = "/root/pebble-api-ca.pem"


@pytest.fixture(scope="module")
def acme(lab, pebble):
    ip = lab.boot(NODE)
    try:
        with lab.phase("install certbot and nginx in acme"):
            res = lab.run(NODE, "apt-get update -q && DEBIAN_FRONTEND=noninteractive "
                                "apt-get install -y -q --no-install-recommends certbot nginx", timeout=600)
            assert res.ok, res
        assert lab.run(NODE, ["systemctl", "is-active", "nginx"]).stdout.strip() == "active"
        lab.put(NODE, CA_IN_NODE, open(pebble["ca_bundle"]).read())
        fqdn = lab.node_fqdn(NODE)
        lab.add_dns(fqdn, ip)
        # what an ACME client in a node sees when something exports the lab's proxy
        env = {"https_proxy": lab.PROXY_URL, "no_proxy": pebble["no_proxy"], "REQUESTS_CA_BUNDLE": CA_IN_NODE}
        yield SimpleNamespace(name=NODE, ip=ip, fqdn=fqdn, env=env)
    finally:
        lab.remove(NODE)


def certbot(lab, acme, pebble, domain):
    return lab.run(acme.name, ["certbot", "certonly", "--non-interactive", "--agree-tos", "--no-eff-email",
                               "--email", "admin@lab.test", "--server", pebble["directory"],
                               "--webroot", "-w", WEBROOT, "-d", domain], env=acme.env, timeout=300)


def openssl(*args, input=None):
    return subprocess.run(["openssl", *args], input=input, capture_output=True, text=True)


def test_pebble_is_reached_directly_not_through_the_proxy(lab, acme, pebble):
    curl = ["curl", "-sS", "-o", "/dev/null", "-w", "%{http_code}", "--cacert", CA_IN_NODE, pebble["directory"]]
    direct = lab.run(acme.name, curl, env=acme.env)
    assert direct.ok and direct.stdout == "200", direct
    # without no_proxy the request goes to tinyproxy, which only CONNECTs to port 443
    proxied = lab.run(acme.name, curl, env={"https_proxy": lab.PROXY_URL})
    assert not proxied.ok and "CONNECT tunnel failed, response 403" in proxied.stderr, proxied


def test_certbot_gets_a_certificate_that_chains_to_pebbles_root(lab, acme, pebble, tmp_path):
    with lab.phase("certbot webroot from pebble"):
        res = certbot(lab, acme, pebble, acme.fqdn)
    assert res.ok, res
    live = f"/etc/letsencrypt/live/{acme.fqdn}"
    cert, chain = (tmp_path / "cert.pem", tmp_path / "chain.pem")
    cert.write_text(lab.run(acme.name, ["cat", f"{live}/cert.pem"], check=True).stdout)
    chain.write_text(lab.run(acme.name, ["cat", f"{live}/chain.pem"], check=True).stdout)
    root = tmp_path / "root.pem"
    root.write_text(lab.pebble_root())
    assert "BEGIN CERTIFICATE" in root.read_text()

    verified = openssl("verify", "-CAfile", str(root), "-untrusted", str(chain), str(cert))
    assert verified.returncode == 0 and f"{cert}: OK" in verified.stdout, verified
    # the check can fail: the same certificate does not chain to another root
    other = openssl("verify", "-CAfile", pebble["ca_bundle"], "-untrusted", str(chain), str(cert))
    assert other.returncode != 0, other
    names = openssl("x509", "-noout", "-ext", "subjectAltName", "-in", str(cert))
    assert f"DNS:{acme.fqdn}" in names.stdout, names

    # Pebble's VA fetched the token from the node's port 80, from the bridge address
    access = lab.run(acme.name, ["cat", "/var/log/nginx/access.log"]).stdout
    fetched = [line for line in access.splitlines() if "/.well-known/acme-challenge/" in line]
    assert fetched, access
    for line in fetched:
        assert line.startswith(f"{lab.HOST_IP} ") and '" 200 ' in line and "LetsEncrypt-Pebble-VA" in line, line


def test_a_name_without_a_record_is_refused(lab, acme, pebble):
    ghost = lab.node_fqdn("ghost")  # never added to the lab's DNS
    res = certbot(lab, acme, pebble, ghost)
    assert not res.ok, res
    assert f'could not resolve URL "http://{ghost}:80/.well-known/acme-challenge/' in res.stdout + res.stderr, res
    assert lab.run(acme.name, ["test", "-e", f"/etc/letsencrypt/live/{ghost}"]).rc != 0
