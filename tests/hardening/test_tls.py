"""
HTTPS from pillar nginx:tls (the certificate and key given as PEM text): TLS 1.2 and 1.3
only, HTTP redirected, HSTS, and a Jupyter that knows it is behind HTTPS (Secure
cookies, kernels over wss).
"""

import socket
import ssl
import warnings

import pytest
import requests

from hardening.common import HTTP_PORT, HTTPS_PORT, TLS_FILES
from support.deployment import changed, failed


def handshake(address, version):
    """The protocol negotiated with a client that offers only `version`, or the SSLError."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    ctx.set_ciphers("DEFAULT:@SECLEVEL=0")  # let this client offer TLS 1.0/1.1 at all
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        ctx.minimum_version = ctx.maximum_version = version
    try:
        with socket.create_connection((address, HTTPS_PORT), timeout=10) as sock:
            with ctx.wrap_socket(sock) as tls:
                return tls.version()
    except ssl.SSLError as exc:
        return exc


def test_login_and_kernel_over_https(deployed):
    client = deployed.login()
    kernel = client.start_kernel()
    try:
        assert client.websocket_url(kernel, "s").startswith(f"wss://{deployed.target.address}:{HTTPS_PORT}/")
        assert client.execute(kernel, "6*7") == "42"
    finally:
        client.delete_kernel(kernel)


def test_cookies_are_secure(deployed):
    client = deployed.login()
    cookies = {cookie.name: cookie for cookie in client.session.cookies}
    login_cookie = f"username-{deployed.target.address.replace('.', '-')}-{HTTPS_PORT}"
    assert set(cookies) == {"_xsrf", login_cookie}
    assert all(cookie.secure for cookie in cookies.values()), {n: c.secure for n, c in cookies.items()}
    assert cookies[login_cookie].has_nonstandard_attr("HttpOnly")


@pytest.mark.parametrize("path", ["", "lab?reset", "api/status"])
def test_http_redirects_to_https(deployed, path):
    address = deployed.target.address
    resp = requests.get(f"http://{address}:{HTTP_PORT}/{path}", allow_redirects=False, timeout=10)
    assert resp.status_code == 301
    assert resp.headers["Location"] == f"https://{address}:{HTTPS_PORT}/{path}"


def test_hsts_header(deployed):
    client = deployed.client("https")
    for resp in (client.session.get(client.url("login"), timeout=10), client.api("GET", "status")):
        assert resp.headers.get("Strict-Transport-Security") == "max-age=31536000", resp.status_code


@pytest.mark.parametrize("version", ["TLSv1", "TLSv1_1"])
def test_old_tls_refused(deployed, version):
    result = handshake(deployed.target.address, getattr(ssl.TLSVersion, version))
    # the server's alert, not a client that could not offer the version
    assert isinstance(result, ssl.SSLError) and result.reason == "TLSV1_ALERT_PROTOCOL_VERSION", result


@pytest.mark.parametrize("version", ["TLSv1_2", "TLSv1_3"])
def test_current_tls_accepted(deployed, version):
    assert handshake(deployed.target.address, getattr(ssl.TLSVersion, version)) == version.replace("_", ".")


def test_key_file_private(deployed):
    target = deployed.target
    cert, key = (target.run(["stat", "-c", "%a %u %g", path], check=True).stdout.split() for path in TLS_FILES)
    assert key == ["600", "0", "0"]
    assert cert[:2] == ["644", "0"]
    assert target.read(TLS_FILES[1]) == deployed.pillar["nginx"]["tls"]["certificate_key_pem"]
    reads = target.run(["runuser", "-u", "www-data", "--", "cat", TLS_FILES[1]])
    assert reads.rc != 0 and "Permission denied" in reads.stderr


@pytest.mark.parametrize("given", ["paths", "certificate-path-and-key-pem"])
def test_certificate_files_given_as_paths(deployed, given):
    """The files the base pillar's PEM texts made, now named by path: the same site."""
    key_pem = deployed.base["nginx"]["tls"]["certificate_key_pem"]
    tls = {"listen": HTTPS_PORT, "certificate": TLS_FILES[0]}
    tls.update({"certificate_key": TLS_FILES[1]} if given == "paths" else {"certificate_key_pem": key_pem})
    pillar = {**deployed.base, "nginx": {**deployed.base["nginx"], "tls": tls}}
    master, workers = deployed.target.nginx_pids()
    results = deployed.apply_pillar(pillar)
    # the same files, nothing reloaded; only the record changes: files named by path are
    # the admin's, and jupyter.clean leaves them
    assert not failed(results), failed(results)
    assert set(changed(results)) <= {"jupyter-record"}, changed(results)
    assert deployed.target.nginx_pids() == (master, workers)
    assert handshake(deployed.target.address, ssl.TLSVersion.TLSv1_3) == "TLSv1.3"
    deployed.back_to_base()
