"""
The pillar validator (_modules/jupyter_pillar.py), table-driven: every class of danger of
issue 10 with at least one refused case naming the key, every value of the issue's own
table as a regression case, the rules between instances, the rules that need host facts
(synthetic facts, plus gather_facts on real files), and pillars that must pass.
"""

import copy
import datetime
import json
import os
import re
from pathlib import Path

import pytest
import yaml
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from salt.exceptions import SaltInvocationError

from support.loader import REPO, load, settings_module

jp = load("_modules", "jupyter_pillar")

STRONG = "Xk8#mQ2v!Lp9zR-quiet-otter"  # zxcvbn 4 of 4
HASH = "argon2:$argon2id$v=19$m=10240,t=10,p=8$c2FsdHNhbHQ$aGFzaGhhc2hoYXNo"
NOW = datetime.datetime.now(datetime.timezone.utc)


def merge(base, patch):
    out = copy.deepcopy(base)
    for key, value in patch.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def defaults(os_family="Debian"):
    top = yaml.safe_load((REPO / "jupyter/defaults.yaml").read_text())["jupyter"]
    osmap = yaml.safe_load((REPO / "jupyter/osfamilymap.yaml").read_text())[os_family]
    return merge(top, osmap)


BASE = merge(defaults(), {"password": STRONG})


def errors_for(patch, facts=None, base=BASE, require_password=True):
    """What the pipeline does for a pillar without instances: check the merged top
    layer, then the one instance."""
    layer, errors = jp.check_layer(merge(base, patch), "jupyter", True)
    if errors:
        return errors
    return jp.check_instance(layer, "jupyter", facts, require_password)


def make_pair(days=90, start=-1, key=None):
    """A self-signed certificate and its key, PEM text."""
    key = key or ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "nb.example.org")])
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(NOW + datetime.timedelta(days=start))
        .not_valid_after(NOW + datetime.timedelta(days=days))
        .sign(key, hashes.SHA256())
    )
    key_pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    ).decode()
    return cert.public_bytes(serialization.Encoding.PEM).decode(), key_pem


CERT, KEY = make_pair()
OTHER_CERT, OTHER_KEY = make_pair()
EXPIRED_CERT, EXPIRED_KEY = make_pair(days=-1, start=-30)
ENCRYPTED_KEY = ec.generate_private_key(ec.SECP256R1()).private_bytes(
    serialization.Encoding.PEM,
    serialization.PrivateFormat.PKCS8,
    serialization.BestAvailableEncryption(b"passphrase"),
).decode()
ACME = {"email": "admin@example.org"}

# A host as gather_facts would see it: the accounts the rules look at.
ACCOUNTS = {
    "sys_uid_max": 999,
    "users": {
        "daemon": {"uid": 1, "gid": 1, "groups": ["daemon"]},
        "toor": {"uid": 0, "gid": 0, "groups": ["root"]},
        "jupyter": {"uid": 998, "gid": 998, "groups": ["jupyter"]},
        "alice": {"uid": 1001, "gid": 1001, "groups": ["alice", "sudo"]},
        "carol": {"uid": 1002, "gid": 1002, "groups": ["carol"]},
        "guest": {"uid": 65534, "gid": 65534, "groups": ["nogroup"]},
    },
    "groups": {"wheel0": {"gid": 0, "members": []}},
    "paths": {},
    "created_accounts": [],
    "created_directories": [],
}


def facts(**extra):
    return merge(ACCOUNTS, extra)


# --------------------------------------------------------------------------------------
# refused: (id, pillar patch, facts, texts the error must contain)

ISSUE_TABLE = [
    ("issue-published-password", {"password": "change-me-please"}, None, ["jupyter:password", "published"]),
    ("issue-root-dir-holds-venv", {"root_dir": "/opt/jupyter"}, None, ["jupyter:root_dir", "jupyter:venv"]),
    ("issue-venv-in-root-dir", {"venv": "/srv/jupyter/.venv"}, None, ["jupyter:root_dir", "jupyter:venv ("]),
    ("issue-config-file-dot", {"config_file": "/etc/jupyter/./x.json"}, None, ["jupyter:config_file", "/etc/jupyter is read"]),
    ("issue-subclass-token", {"config": {"PasswordIdentityProvider": {"token": "abc"}}}, None,
     ["jupyter:config: PasswordIdentityProvider.token"]),
    ("issue-ip-any", {"server": {"ip": "0.0.0.0"}}, None, ["jupyter:server:ip", "loopback", "expose"]),
    ("issue-nginx-worker", {"user": "www-data"}, None, ["jupyter:user", "nginx worker"]),
    ("issue-empty-packages", {"packages": []}, None, ["jupyter:packages"]),
    ("issue-empty-server-name", {"nginx": {"server_name": []}}, None, ["jupyter:nginx:server_name"]),
    ("issue-base-url-traversal", {"server": {"base_url": "/../"}}, None, ["jupyter:server:base_url", ".."]),
    # the narrative under the table: a system dir as root_dir, a system account, '//'
    ("issue-system-root-dir", {"root_dir": "/usr/share"}, None, ["jupyter:root_dir", "system directory"]),
    ("issue-system-account", {"user": "daemon"}, ACCOUNTS, ["jupyter:user", "system account (uid 1)"]),
    ("issue-config-file-double-slash", {"config_file": "//etc/jupyter/x.json"}, None, ["jupyter:config_file", "/etc/jupyter"]),
]

CLASS_CASES = [
    # 1. passwords
    ("password-published-case-spaces", {"password": "Change Me Please"}, None, ["jupyter:password", "published"]),
    ("password-published-design", {"password": "S3CRET-pass"}, None, ["jupyter:password", "published"]),
    ("password-weak", {"password": "password123"}, None, ["jupyter:password", "too easy to guess"]),
    # strong (4 of 4) for zxcvbn alone, weak once it knows the user or the host name
    ("password-user-name", {"user": "qwzplorbix", "password": "qwzplorbix1999"}, None, ["jupyter:password", "too easy"]),
    ("password-server-name", {"password": "vexmorplin2024", "nginx": {"server_name": "vexmorplin.example.org"}},
     None, ["jupyter:password", "too easy"]),
    ("password-short", {"password": "Xq7z"}, None, ["jupyter:password", "at least 8"]),
    ("password-missing", {"password": None}, None, ["jupyter:password: set jupyter:password or jupyter:hashed_password"]),
    ("password-both", {"hashed_password": HASH}, None, ["jupyter:hashed_password", "not both"]),
    ("password-legacy-hash", {"password": None, "hashed_password": "sha1:0123456789ab:" + "0" * 40}, None,
     ["jupyter:hashed_password: legacy"]),
    # 2. paths
    ("path-root", {"root_dir": "/"}, None, ["jupyter:root_dir", "/ is a system directory"]),
    ("path-ancestor-of-system", {"venv_store": "/usr/../var"}, None, ["jupyter:venv_store", "/var is a system directory"]),
    ("path-holds-system", {"supervisor": {"log_dir": "/etc/.."}}, None, ["jupyter:supervisor:log_dir"]),
    ("path-log-dir-system", {"supervisor": {"log_dir": "/var/log"}}, None, ["jupyter:supervisor:log_dir", "system directory"]),
    ("path-dotdot-log-dir", {"supervisor": {"log_dir": "/var/log/../../etc"}}, None, ["jupyter:supervisor:log_dir", "/etc"]),
    ("path-python-dir", {"python": "/usr/bin"}, None, ["jupyter:python", "system directory"]),
    ("path-state-dir-system", {"state_dir": "/var/lib"}, None, ["jupyter:state_dir", "system directory"]),
    ("path-home-in-etc", {"home": "/etc/jupyterhome"}, None, ["jupyter:home", "inside /etc"]),
    ("path-root-dir-in-tmp", {"root_dir": "/tmp/notebooks"}, None, ["jupyter:root_dir", "inside /tmp"]),
    ("path-root-dir-in-var-log", {"root_dir": "/var/log/jupyter/nb"}, None, ["jupyter:root_dir", "inside /var/log"]),
    ("path-root-dir-is-log-dir", {"root_dir": "/data/nb", "supervisor": {"log_dir": "/data/nb"}}, None,
     ["jupyter:root_dir", "is jupyter:supervisor:log_dir"]),
    ("path-home-holds-config", {"home": "/data/home", "config_file": "/data/home/.j/c.json"}, None,
     ["jupyter:home", "jupyter:config_file"]),
    ("path-python-in-home", {"python": "/home/jupyter/bin/python3"}, None, ["jupyter:home", "jupyter:python"]),
    ("path-root-dir-inside-venv", {"root_dir": "/opt/jupyter/venv/nb"}, None, ["jupyter:root_dir", "is inside jupyter:venv"]),
    ("path-state-dir-in-root-dir", {"state_dir": "/srv/jupyter/.state"}, None, ["jupyter:root_dir", "jupyter:state_dir"]),
    ("path-tls-key-in-home", {"nginx": {"tls": {"certificate": "/home/jupyter/c.pem", "certificate_key": "/etc/ssl/x.key"}}},
     None, ["jupyter:home", "jupyter:nginx:tls:certificate"]),
    ("path-ca-bundle-in-root-dir", {"nginx": {"server_name": "nb.example.org",
                                              "tls": {"acme": {**ACME, "ca_bundle": "/srv/jupyter/ca.pem"}}}},
     None, ["jupyter:root_dir", "jupyter:nginx:tls:acme:ca_bundle"]),
    ("path-config-file-in-etc", {"config_file": "/etc/jupyter-x.json"}, None, ["jupyter:config_file", "straight into the system directory /etc"]),
    ("path-config-file-usr-local", {"config_file": "/usr/local/etc/jupyter/x.json"}, None, ["jupyter:config_file", "/usr/local/etc/jupyter"]),
    ("path-config-file-in-venv", {"config_file": "/opt/jupyter/venv/etc/jupyter/x.json"}, None, ["jupyter:config_file", "/opt/jupyter/venv"]),
    ("path-config-file-venv-store", {"config_file": "/opt/jupyter/venvs/x.json"}, None, ["jupyter:config_file", "venvs"]),
    ("path-config-file-python-prefix", {"python": "/opt/py/bin/python3", "config_file": "/opt/py/etc/jupyter/x.json"},
     None, ["jupyter:config_file", "/opt/py/etc/jupyter"]),
    ("path-distro-default-site-elsewhere", {"nginx": {"distro_default_site": "/etc/passwd"}}, None, ["jupyter:nginx:distro_default_site"]),
    ("path-tls-pem-into-etc", {"nginx": {"tls_dir": "/etc", "tls": {"certificate_pem": CERT, "certificate_key_pem": KEY}}},
     None, ["jupyter:nginx:tls_dir", "system directory"]),
    ("path-relative", {"root_dir": "srv/jupyter"}, None, ["jupyter:root_dir: expected an absolute path"]),
    ("path-space", {"root_dir": "/srv/jupyter x"}, None, ["jupyter:root_dir: expected an absolute path"]),
    # 2 with facts
    ("fact-root-dir-symlink", {}, facts(paths={"/srv/jupyter": {"exists": True, "realpath": "/etc", "uid": 0}}),
     ["jupyter:root_dir", "resolves to /etc through a symbolic link"]),
    ("fact-root-dir-parent-symlink", {"root_dir": "/srv/nb"},
     facts(paths={"/srv/nb": {"exists": False, "realpath": "/usr/lib/nb"}}), ["jupyter:root_dir", "symbolic link"]),
    ("fact-root-dir-foreign-owner", {"root_dir": "/srv/postgres"},
     facts(paths={"/srv/postgres": {"exists": True, "realpath": "/srv/postgres", "uid": 105, "owner": "postgres"}}),
     ["jupyter:root_dir", "belongs to postgres"]),
    ("fact-home-root-owned", {"user": "carol"},
     facts(paths={"/home/carol": {"exists": True, "realpath": "/home/carol", "uid": 0, "owner": "root"}}),
     ["jupyter:home", "belongs to root"]),
    ("fact-parent-owned-by-another-user", {"user": "carol", "root_dir": "/srv/jupyter/carol"},
     facts(paths={"/srv/jupyter": {"exists": True, "uid": 998, "owner": "jupyter", "mode": 0o750}}),
     ["jupyter:root_dir", "inside /srv/jupyter (owned by jupyter)"]),
    ("fact-parent-world-writable", {"root_dir": "/data/shared/nb"},
     facts(created_accounts=["jupyter"], paths={"/data/shared": {"exists": True, "uid": 0, "mode": 0o777}}),
     ["jupyter:root_dir", "/data/shared (world-writable)"]),
    ("fact-venv-real-location-in-root-dir", {},
     facts(paths={"/opt/jupyter/venv": {"exists": True, "realpath": "/srv/jupyter/v", "uid": 0}}),
     ["jupyter:root_dir", "real location /srv/jupyter/v of jupyter:venv"]),
    # 3. config passthrough
    ("config-owned-port", {"config": {"ServerApp": {"port": 1}}}, None,
     ["jupyter:config: ServerApp.port is set by the formula; use jupyter:server:port"]),
    ("config-notebookapp-token", {"config": {"NotebookApp": {"token": ""}}}, None, ["NotebookApp.token"]),
    ("config-nested-section", {"config": {"ServerApp": {"IdentityProvider": {"token": "x"}}}}, None,
     ["ServerApp.IdentityProvider.token"]),
    ("config-dotted-key", {"config": {"ServerApp": {"IdentityProvider.token": "x"}}}, None,
     ["ServerApp.IdentityProvider.token: not a trait"]),
    ("config-identity-class", {"config": {"ServerApp": {"identity_provider_class": "x.Y"}}}, None, ["identity_provider_class", "weakens"]),
    ("config-authorizer-class", {"config": {"ServerApp": {"authorizer_class": "x.Y"}}}, None, ["authorizer_class"]),
    ("config-xsrf", {"config": {"ServerApp": {"disable_check_xsrf": True}}}, None, ["disable_check_xsrf"]),
    ("config-origin", {"config": {"ServerApp": {"allow_origin": "*"}}}, None, ["allow_origin"]),
    ("config-origin-pat", {"config": {"LabApp": {"allow_origin_pat": ".*"}}}, None, ["LabApp.allow_origin_pat"]),
    ("config-unauthenticated", {"config": {"ServerApp": {"allow_unauthenticated_access": True}}}, None,
     ["allow_unauthenticated_access"]),
    ("config-password-required", {"config": {"PasswordIdentityProvider": {"password_required": False}}}, None,
     ["password_required"]),
    ("config-cookie-secret", {"config": {"ServerApp": {"cookie_secret": "abc"}}}, None, ["cookie_secret"]),
    ("config-kernel-ip", {"config": {"KernelManager": {"ip": "0.0.0.0"}}}, None, ["KernelManager.ip"]),
    ("config-contents-root", {"config": {"FileContentsManager": {"root_dir": "/"}}}, None, ["FileContentsManager.root_dir"]),
    ("config-session-key", {"config": {"Session": {"key": ""}}}, None, ["Session.key"]),
    ("config-static-paths", {"config": {"ServerApp": {"extra_static_paths": ["/srv/jupyter"]}}}, None, ["extra_static_paths"]),
    ("config-prometheus", {"config": {"ServerApp": {"authenticate_prometheus": False}}}, None, ["authenticate_prometheus"]),
    ("config-tornado-xsrf", {"config": {"ServerApp": {"tornado_settings": {"xsrf_cookies": False}}}}, None,
     ["ServerApp.tornado_settings.xsrf_cookies"]),
    ("config-tornado-login-url", {"config": {"ServerApp": {"tornado_settings": {"login_url": "/x"}}}}, None, ["login_url"]),
    ("config-tornado-cors-header", {"config": {"ServerApp": {"tornado_settings": {"headers": {"Access-Control-Allow-Origin": "*"}}}}},
     None, ["tornado_settings.headers", "Access-Control-Allow-Origin"]),
    ("config-tornado-csp", {"config": {"ServerApp": {"tornado_settings": {"headers": {"Content-Security-Policy": "frame-ancestors *"}}}}},
     None, ["Content-Security-Policy"]),
    ("config-cookie-samesite-none", {"config": {"IdentityProvider": {"cookie_options": {"samesite": "None"}}}}, None,
     ["IdentityProvider.cookie_options", "samesite"]),
    ("config-cookie-domain", {"config": {"IdentityProvider": {"cookie_options": {"domain": "example.org"}}}}, None, ["domain"]),
    ("config-xsrf-cookie-insecure", {"config": {"ServerApp": {"tornado_settings": {"xsrf_cookie_kwargs": {"secure": False}}}}},
     None, ["xsrf_cookie_kwargs", "secure"]),
    # 4. exposure
    ("ip-lan", {"server": {"ip": "192.0.2.10"}}, None, ["jupyter:server:ip", "not a loopback"]),
    ("ip-v6-any", {"server": {"ip": "::"}}, None, ["jupyter:server:ip", "not a loopback"]),
    ("ip-scope-id", {"server": {"ip": "::1%lo"}}, None, ["jupyter:server:ip", "no scope ID"]),
    ("ip-extra-text", {"server": {"ip": "127.0.0.1 "}}, None, ["jupyter:server:ip"]),
    ("ip-name", {"server": {"ip": "localhost"}}, None, ["jupyter:server:ip"]),
    ("ip-integer", {"server": {"ip": 2130706433}}, None, ["jupyter:server:ip"]),
    ("expose-not-bool", {"server": {"expose": "yes"}}, None, ["jupyter:server:expose"]),
    # 5. accounts
    ("user-root", {"user": "root"}, None, ["jupyter:user: the server must not run as root"]),
    ("user-nobody", {"user": "nobody"}, None, ["jupyter:user", "nobody"]),
    ("user-nginx-user-key", {"user": "webby", "nginx": {"user": "webby"}}, None, ["jupyter:user", "nginx worker"]),
    ("user-uid-0-alias", {"user": "toor"}, ACCOUNTS, ["jupyter:user", "uid 0"]),
    ("user-nobody-uid", {"user": "guest"}, ACCOUNTS, ["jupyter:user", "uid 65534"]),
    ("user-system-not-adopted", {}, ACCOUNTS, ["jupyter:user", "jupyter is an existing system account"]),
    ("user-in-sudo", {"user": "alice"}, ACCOUNTS, ["jupyter:user", "privileged group(s) sudo"]),
    ("group-privileged", {"group": "adm"}, None, ["jupyter:group", "privileged group"]),
    ("group-docker", {"group": "docker"}, None, ["jupyter:group"]),
    ("group-gid-0", {"group": "wheel0"}, ACCOUNTS, ["jupyter:group", "gid 0"]),
    # 6. lists
    ("packages-none", {"packages": None}, None, ["jupyter:packages"]),
    # 7. TLS
    ("tls-key-in-cert", {"nginx": {"tls": {"certificate_pem": CERT + KEY, "certificate_key_pem": KEY}}}, None,
     ["jupyter:nginx:tls:certificate_pem", "holds a private key"]),
    ("tls-path-and-pem", {"nginx": {"tls": {"certificate": "/etc/ssl/certs/ca-certificates.crt", "certificate_pem": CERT,
                                            "certificate_key_pem": KEY}}}, None,
     ["jupyter:nginx:tls:certificate", "not both"]),
    ("tls-key-path-and-pem", {"nginx": {"tls": {"certificate_pem": CERT, "certificate_key": "/etc/ssl/k.key",
                                                "certificate_key_pem": KEY}}}, None,
     ["jupyter:nginx:tls:certificate_key", "not both"]),
    ("tls-acme-and-pem", {"nginx": {"server_name": "nb.example.org",
                                    "tls": {"acme": ACME, "certificate_pem": CERT, "certificate_key_pem": KEY}}}, None,
     ["jupyter:nginx:tls:acme", "not both"]),
    ("tls-acme-and-path", {"nginx": {"server_name": "nb.example.org",
                                     "tls": {"acme": ACME, "certificate": "/etc/ssl/a.crt"}}}, None,
     ["jupyter:nginx:tls:acme", "not both"]),
    ("tls-acme-no-email", {"nginx": {"server_name": "nb.example.org", "tls": {"acme": {"renew_before_days": 20}}}}, None,
     ["jupyter:nginx:tls:acme:email: required"]),
    ("tls-acme-catch-all", {"nginx": {"tls": {"acme": ACME}}}, None, ["jupyter:nginx:server_name", "acme needs"]),
    ("tls-acme-not-port-80", {"nginx": {"server_name": "nb.example.org", "listen": 8080, "tls": {"acme": ACME}}}, None,
     ["jupyter:nginx:listen", "always come to port 80"]),
    ("tls-acme-http-directory", {"nginx": {"server_name": "nb.example.org",
                                           "tls": {"acme": {**ACME, "directory": "http://acme.example/dir"}}}}, None,
     ["jupyter:nginx:tls:acme:directory"]),
    ("tls-acme-bad-email", {"nginx": {"server_name": "nb.example.org", "tls": {"acme": {"email": "admin"}}}}, None,
     ["jupyter:nginx:tls:acme:email"]),
    ("tls-mismatch", {"nginx": {"tls": {"certificate_pem": CERT, "certificate_key_pem": OTHER_KEY}}}, None,
     ["jupyter:nginx:tls:certificate_key_pem", "does not match"]),
    ("tls-expired", {"nginx": {"tls": {"certificate_pem": EXPIRED_CERT, "certificate_key_pem": EXPIRED_KEY}}}, None,
     ["jupyter:nginx:tls:certificate_pem", "expired"]),
    ("tls-garbage-cert", {"nginx": {"tls": {"certificate_pem": "-----BEGIN CERTIFICATE-----\nx\n-----END CERTIFICATE-----\n",
                                            "certificate_key_pem": KEY}}}, None,
     ["jupyter:nginx:tls:certificate_pem", "not a PEM certificate"]),
    ("tls-encrypted-key", {"nginx": {"tls": {"certificate_pem": CERT, "certificate_key_pem": ENCRYPTED_KEY}}}, None,
     ["jupyter:nginx:tls:certificate_key_pem", "encrypted"]),
    ("tls-files-mismatch", {"nginx": {"tls": {"certificate": "/etc/ssl/n/c.pem", "certificate_key": "/etc/ssl/n/k.pem"}}},
     {"files": {"/etc/ssl/n/c.pem": CERT, "/etc/ssl/n/k.pem": OTHER_KEY}}, ["jupyter:nginx:tls:certificate_key:", "does not match"]),
    ("tls-file-expired", {"nginx": {"tls": {"certificate": "/etc/ssl/n/c.pem", "certificate_key": "/etc/ssl/n/k.pem"}}},
     {"files": {"/etc/ssl/n/c.pem": EXPIRED_CERT}}, ["jupyter:nginx:tls:certificate:", "expired"]),
    ("tls-no-key", {"nginx": {"tls": {"certificate_pem": CERT}}}, None, ["jupyter:nginx:tls:certificate_key: give a path"]),
    ("tls-listen-is-listen", {"nginx": {"tls": {"listen": 80, "certificate_pem": CERT, "certificate_key_pem": KEY}}}, None,
     ["jupyter:nginx:tls:listen: must differ"]),
    # 8. base_url
    ("base-url-double-slash", {"server": {"base_url": "/a//b/"}}, None, ["jupyter:server:base_url", "'//'"]),
    ("base-url-dot", {"server": {"base_url": "/a/./b/"}}, None, ["jupyter:server:base_url", "'.'"]),
    ("base-url-encoded", {"server": {"base_url": "/%2e%2e/"}}, None, ["jupyter:server:base_url"]),
    ("base-url-semicolon", {"server": {"base_url": "/nb;/"}}, None, ["jupyter:server:base_url"]),
    ("base-url-quote", {"server": {"base_url": '/nb"/'}}, None, ["jupyter:server:base_url"]),
    # the rest: ports, host, schema
    ("port-is-nginx", {"server": {"port": 80}}, None, ["jupyter:server:port: 80 is also a port nginx listens on"]),
    ("ipv6-without-ipv6", {}, {"has_ipv6": False}, ["jupyter:nginx:ipv6", "no IPv6"]),
    ("typo-hint", {"server": {"prot": 1}}, None, ["jupyter:server:prot: unknown key; did you mean 'port'?"]),
    ("limits-memory-unit", {"limits": {"memory": "1T"}}, None, ["jupyter:limits:memory"]),
    ("limits-memory-too-small", {"limits": {"memory": 512}}, None, ["jupyter:limits:memory"]),
    ("limits-cpu-zero", {"limits": {"cpu": 0}}, None, ["jupyter:limits:cpu"]),
    ("limits-cpu-bool", {"limits": {"cpu": True}}, None, ["jupyter:limits:cpu"]),
    ("limits-tasks-float", {"limits": {"tasks": 1.5}}, None, ["jupyter:limits:tasks"]),
    ("upgrade-keep-zero", {"upgrade": {"keep": 0}}, None, ["jupyter:upgrade:keep"]),
]


@pytest.mark.parametrize(
    "patch, facts_, expected",
    [case[1:] for case in ISSUE_TABLE + CLASS_CASES],
    ids=[case[0] for case in ISSUE_TABLE + CLASS_CASES],
)
def test_refused(patch, facts_, expected):
    errors = errors_for(patch, facts_)
    assert errors, "accepted"
    assert any(all(text in err for text in expected) for err in errors), errors
    # a secret never shows in a message
    for secret in (patch.get("password"), KEY, OTHER_KEY, ENCRYPTED_KEY):
        if isinstance(secret, str) and len(secret) >= 4:
            assert not any(secret in err for err in errors)


def test_issue_table_is_all_refused_in_one_pillar():
    """The first nine values of the issue at once (well formed): each error names its own key."""
    patch = {}
    for _, case, _, _ in ISSUE_TABLE[:9]:
        patch = merge(patch, case)
    layer, errors = jp.check_layer(merge(BASE, patch), "jupyter", True)
    assert errors == [], errors  # well formed: only the danger classes refuse them
    errors = jp.check_instance(layer, "jupyter")
    for key in ("password", "root_dir", "config_file", "config", "server:ip", "user", "packages",
                "nginx:server_name"):
        assert any(err.startswith(f"jupyter:{key}:") for err in errors), (key, errors)
    # base_url: refused by the schema walk alone
    assert any("jupyter:server:base_url" in e for e in jp.check_layer({"server": {"base_url": "/../"}})[1])


# --------------------------------------------------------------------------------------
# must pass


PASS_CASES = [
    ("defaults", {}, None),
    ("hashed-password", {"password": None, "hashed_password": HASH}, None),
    ("no-password-when-not-required", {"password": None}, "no-password"),
    ("expose-opt-in", {"server": {"ip": "0.0.0.0", "expose": True}}, None),
    ("loopback-other", {"server": {"ip": "127.0.0.2"}}, None),
    ("loopback-v6", {"server": {"ip": "::1"}}, None),
    ("loopback-v4-mapped", {"server": {"ip": "::ffff:127.0.0.1"}}, None),
    ("own-dirs", {"root_dir": "/data/notebooks", "home": "/var/lib/jupyter", "venv": "/opt/jupyter/v2",
                  "config_file": "/etc/jupyter-server/x.json", "supervisor": {"log_dir": "/var/log/jupyter-x"}}, None),
    ("harmless-config", {"config": {"MappingKernelManager": {"cull_idle_timeout": 3600},
                                    "ServerApp": {"terminals_enabled": False,
                                                  "tornado_settings": {"headers": {"X-Frame-Options": "DENY"}}},
                                    "IdentityProvider": {"cookie_options": {"expires_days": 7, "samesite": "Strict"}}}}, None),
    ("safe-value-kept", {"config": {"ServerApp": {"authenticate_prometheus": True}}}, None),
    ("tls-good-pair", {"nginx": {"tls": {"certificate_pem": CERT, "certificate_key_pem": KEY}}}, None),
    ("tls-good-files", {"nginx": {"tls": {"certificate": "/etc/ssl/n/c.pem", "certificate_key": "/etc/ssl/n/k.pem"}}},
     {"files": {"/etc/ssl/n/c.pem": CERT, "/etc/ssl/n/k.pem": KEY}}),
    ("tls-files-not-there-yet", {"nginx": {"tls": {"certificate": "/etc/ssl/n/c.pem", "certificate_key": "/etc/ssl/n/k.pem"}}},
     {"files": {}}),
    ("tls-acme", {"nginx": {"server_name": ["nb.example.org", "www.nb.example.org"],
                            "tls": {"acme": {**ACME, "directory": "https://198.51.100.1:14000/dir",
                                             "ca_bundle": "/etc/ssl/pebble/ca.pem", "renew_before_days": 20}}}}, None),
    ("ipv6-off", {"nginx": {"ipv6": False}}, {"has_ipv6": False}),
    ("limits", {"limits": {"memory": "1G", "cpu": 1.5, "tasks": 512}}, None),
    # facts: accounts the formula made, or an earlier version made (config file root:<its group>)
    ("created-account", {}, facts(created_accounts=["jupyter"])),
    ("adopted-account", {}, facts(paths={"/etc/jupyter-server/jupyter.json": {"exists": True, "realpath":
                                         "/etc/jupyter-server/jupyter.json", "uid": 0, "gid": 998}})),
    ("regular-account", {"user": "carol"}, facts()),
    ("own-existing-root-dir", {"user": "carol", "root_dir": "/srv/carol"},
     facts(paths={"/srv/carol": {"exists": True, "realpath": "/srv/carol", "uid": 1002, "owner": "carol"}})),
    ("parents-root-or-own", {"user": "carol", "root_dir": "/home/carol/nb"},
     facts(paths={"/home": {"exists": True, "uid": 0, "mode": 0o755},
                  "/home/carol": {"exists": True, "realpath": "/home/carol", "uid": 1002, "owner": "carol", "mode": 0o700},
                  "/tmp": {"exists": True, "uid": 0, "mode": 0o1777}})),
    ("created-root-dir", {"root_dir": "/srv/made"},
     facts(created_accounts=["jupyter"], created_directories=["/srv/made"],
           paths={"/srv/made": {"exists": True, "realpath": "/srv/made", "uid": 0, "owner": "root"}})),
]


@pytest.mark.parametrize("patch, facts_", [c[1:] for c in PASS_CASES], ids=[c[0] for c in PASS_CASES])
def test_passes(patch, facts_):
    require = facts_ != "no-password"
    facts_ = None if facts_ == "no-password" else facts_
    assert errors_for(patch, facts_, require_password=require) == []


def test_redhat_defaults_pass():
    assert errors_for({}, base=merge(defaults("RedHat"), {"password": STRONG})) == []


# --------------------------------------------------------------------------------------
# check_layer: normalisation and the layer rules


def test_layer_normalises():
    layer, errors = jp.check_layer(
        {
            "root_dir": "//srv//nb/./x/../y/",
            "config_file": "/etc/jupyter-server/./a.json",
            "server": {"base_url": "nb/x", "ip": "::0001"},
            "limits": {"memory": "512M", "cpu": 2, "tasks": 64},
            "nginx": {"server_name": "nb.example.org"},
        }
    )
    assert errors == []
    assert layer["root_dir"] == "/srv/nb/y"
    assert layer["config_file"] == "/etc/jupyter-server/a.json"
    assert layer["server"] == {"base_url": "/nb/x/", "ip": "::1"}
    assert layer["limits"] == {"memory": 512 * 1024**2, "cpu": 2.0, "tasks": 64}
    assert layer["nginx"]["server_name"] == ["nb.example.org"]


@pytest.mark.parametrize("memory, expected", [("1G", 1024**3), ("64m", 64 * 1024**2), ("2048K", 2 * 1024**2), (1048576, 1048576)])
def test_memory_sizes(memory, expected):
    layer, errors = jp.check_layer({"limits": {"memory": memory}})
    assert errors == [] and layer["limits"]["memory"] == expected


@pytest.mark.parametrize("key", ["clean", "instances", "upgrade", "venv_store", "state_dir"])
def test_top_only_keys_refused_in_an_instance(key):
    _, errors = jp.check_layer({"instances": {"alice": {key: {}}}})
    assert any(e.startswith(f"jupyter:instances:alice:{key}: set at the top level only") for e in errors), errors


@pytest.mark.parametrize("name", ["a-b", "Alice", "1a", "_a", "a" * 25, "a.b"])
def test_instance_names(name):
    _, errors = jp.check_layer({"instances": {name: {}}})
    assert any(f"jupyter:instances:{name}: expected an instance name" in e for e in errors), errors


def test_instance_layer_typos_and_types():
    _, errors = jp.check_layer({"instances": {"alice": {"sever": {}, "server": {"port": "x"}}, "bob": None}})
    assert "jupyter:instances:alice:sever: unknown key; did you mean 'server'?" in errors
    assert any(e.startswith("jupyter:instances:alice:server:port: expected an integer") for e in errors)
    assert not any("bob" in e for e in errors)  # `bob:` with nothing under it is an empty entry
    assert jp.check_layer({"instances": {}})[1] == ["jupyter:instances: expected at least one instance (leave instances out for one server)"]


def test_tls_and_acme_defaults_survive_the_instance_merge():
    """tls and acme are null by default: check_layer fills their keys where a layer
    opens them, without overriding what an instance inherits from the top level."""
    top, errors = jp.check_layer({
        "nginx": {"tls": {"listen": 8443, "acme": {"email": "a@example.org"}}},
        "instances": {"a": {"nginx": {"tls": {"redirect_http": False}}}, "b": {}},
    })
    assert errors == []
    assert top["nginx"]["tls"]["listen"] == 8443 and top["nginx"]["tls"]["redirect_http"] is True
    assert top["nginx"]["tls"]["acme"]["renew_before_days"] == 30 and top["nginx"]["tls"]["acme"]["directory"] is None
    assert top["instances"]["a"]["nginx"]["tls"] == {"redirect_http": False}  # listen stays the top's 8443
    # no tls at the top: an instance that opens one gets every default
    top, _ = jp.check_layer({"instances": {"a": {"nginx": {"tls": {"acme": {"email": "a@example.org"}}}}}})
    tls = top["instances"]["a"]["nginx"]["tls"]
    assert tls["listen"] == 443 and tls["redirect_http"] is True and tls["acme"]["renew_before_days"] == 30


# --------------------------------------------------------------------------------------
# passwords: the estimator and the published list


def test_without_zxcvbn_a_plaintext_password_is_refused(monkeypatch):
    monkeypatch.setattr(jp, "_load_zxcvbn", lambda: None)
    errors = errors_for({})
    assert errors == [
        "jupyter:password: cannot rate its strength: install the zxcvbn package for Salt's Python, "
        "or give jupyter:hashed_password instead"
    ]
    assert errors_for({"password": None, "hashed_password": HASH}) == []


def test_published_variants_are_penalised():
    # not equal to a published password, but built on one: zxcvbn knows it (user_inputs)
    assert any("too easy" in e for e in errors_for({"password": "change-me-please1"}))


PASSWORD_IN_TEXT = re.compile(r"""(?<![\w])password\s*[:=]\s*(['"]?)([^\s'"`,}{#\\]+)\1""")
PASSWORD_ON_CLI = re.compile(r"""(?:hash|check)_password\s+(?:'[^']*'\s+)?'([^']+)'""")
NOT_A_PASSWORD = re.compile(r"\.\.\.|null|none|~|<.*|\$.*|\{.*", re.IGNORECASE)


def example_passwords(text):
    found = {m.group(2) for m in PASSWORD_IN_TEXT.finditer(text)} | set(PASSWORD_ON_CLI.findall(text))
    return {p for p in found if not NOT_A_PASSWORD.fullmatch(p)}


def test_the_scanner_finds_example_passwords():
    text = (
        "jupyter:\n  password: s3cret   # plaintext\n  hashed_password: 'argon2:...'\n"
        'lab.put("n", "/p", "jupyter:\\n  password: s3cret-pass\\n")\n'
        "jupyter: {password: ..., server: {port: 1}}\n  password: null\n"
        "salt-call jupyter.hash_password 'Hunter2!'\nsalt-call jupyter.check_password 'argon2:$x' 'pw-on-cli'\n"
    )
    assert example_passwords(text) == {"s3cret", "s3cret-pass", "Hunter2!", "pw-on-cli"}


def documentation_files():
    files = [REPO / "README.md", REPO / "pillar.example", REPO / "tests/lab/README.md"]
    files += [p for p in (REPO / "docs").rglob("*") if p.is_file() and p.suffix in (".md", ".rst", ".txt", ".sls", ".yaml", ".yml", "")]
    files += sorted((REPO / "_modules").glob("*.py")) + sorted((REPO / "_states").glob("*.py"))
    design = Path("/work/shared/DESIGN.md")
    return [p for p in files + [design] if p.is_file()]


def test_every_password_the_docs_show_is_refused():
    found = {}
    for path in documentation_files():
        text = path.read_text(errors="replace")
        passwords = example_passwords(text) if path.suffix != ".py" else set(PASSWORD_ON_CLI.findall(text))
        for password in passwords:
            found.setdefault(password, path.name)
    assert found, "no example password found: the scanner is broken"
    for password, where in sorted(found.items()):
        errors = errors_for({"password": password})
        assert any(e.startswith("jupyter:password:") for e in errors), (password, where)
    for password in jp.PUBLISHED_PASSWORDS:  # (s3cret is refused first for its length)
        assert any(e.startswith("jupyter:password:") for e in errors_for({"password": password}))
        assert any("published" in e for e in jp.check_instance({"password": password}, "jupyter"))


# --------------------------------------------------------------------------------------
# instances (issue 12's pillar contract)


def strong(n):
    return f"Quiet-otter-{n}-plays-Bassoon!"


ISSUE12 = {
    "packages": ["jupyterlab==4.6.6"],
    "nginx": {"server_name": "nb.example.org"},
    "instances": {
        "alice": {"user": "alice", "password": strong(1), "server": {"port": 8901, "base_url": "/alice/"},
                  "limits": {"memory": "1G", "cpu": 1.5, "tasks": 512}},
        "bob": {"user": "bob", "hashed_password": HASH, "server": {"port": 8902, "base_url": "/bob/"}},
    },
}


def derived(pillar):
    """The instances as jupyter.settings derives them (its own _derive) and hands them
    to check_instances."""
    seen = []
    settings_module(pillar, **{
        "jupyter_pillar.check_instance": lambda *args: [],
        "jupyter_pillar.check_instances": lambda instances, facts: seen.append(copy.deepcopy(instances)) or [],
    }).settings(reveal_secrets=True)
    return seen[0]


def pipeline_errors(pillar):
    """Every error jupyter.settings gives for a pillar (the real checks, no host facts)."""
    try:
        settings_module(pillar).settings()
    except SaltInvocationError as exc:
        return str(exc).splitlines()[1:]
    return []


def test_issue12_pillar_passes():
    assert pipeline_errors(ISSUE12) == []
    instances = derived(ISSUE12)
    for name, inst in instances.items():
        assert jp.check_instance(inst, f"jupyter:instances:{name}") == []
    assert jp.check_instances(instances) == []


def test_issue12_three_instances_two_blocks_pass():
    pillar = merge(ISSUE12, {"instances": {"carol": {"user": "carol", "password": strong(3),
                                                      "server": {"port": 8903},
                                                      "nginx": {"server_name": "c.example.org", "default_server": False}}}})
    assert jp.check_instances(derived(pillar)) == []


INSTANCE_CASES = [
    ("port-shared", {"bob": {"server": {"port": 8901}}}, ["jupyter:instances:bob:server:port", "instance alice"]),
    ("port-is-nginx-tls", {"bob": {"server": {"port": 8443}, "nginx": {"server_name": "b.example.org",
                                                                       "tls": {"listen": 8443, "certificate_pem": CERT,
                                                                               "certificate_key_pem": KEY}}}},
     ["jupyter:instances:bob:server:port", "nginx listens on"]),
    ("base-url-shared", {"bob": {"server": {"base_url": "/alice/"}}}, ["jupyter:instances:bob:server:base_url", "also the base_url"]),
    ("base-url-root-not-alone", {"bob": {"server": {"base_url": "/"}}}, ["jupyter:instances:bob:server:base_url", "/ takes the whole name"]),
    ("base-url-nested", {"bob": {"server": {"base_url": "/alice/bob/"}}}, ["jupyter:instances:bob:server:base_url", "nested"]),
    ("block-disagrees", {"bob": {"nginx": {"hsts_max_age": 0}}}, ["jupyter:instances:bob:nginx:hsts_max_age", "must agree"]),
    ("block-tls-disagrees", {"bob": {"nginx": {"tls": {"certificate_pem": CERT, "certificate_key_pem": KEY}}}},
     ["jupyter:instances:bob:nginx:tls", "must agree"]),
    ("shared-user-same-root", {"bob": {"user": "alice", "root_dir": "/srv/jupyter/alice"}},
     ["jupyter:instances:bob:root_dir", "same user alice"]),
    ("shared-user-other-home", {"bob": {"user": "alice", "home": "/data/alice2"}}, ["jupyter:instances:bob:home", "one account alice"]),
    ("users-nested-paths", {"bob": {"root_dir": "/srv/jupyter/alice/bob"}}, ["jupyter:instances:alice:root_dir", "instance bob's root_dir"]),
    ("users-same-home", {"bob": {"home": "/home/alice"}}, ["jupyter:instances:alice:home", "instance bob's home"]),
    ("root-dir-holds-other-venv", {"bob": {"venv": "/srv/jupyter/alice/venv"}},
     ["jupyter:instances:alice:root_dir", "instance bob's venv"]),
    ("config-file-shared", {"bob": {"config_file": "/etc/jupyter-server/alice.json"}}, ["jupyter:instances:bob:config_file", "instance alice"]),
    ("venv-shared", {"bob": {"venv": "/opt/jupyter/venv-alice"}}, ["jupyter:instances:bob:venv", "instance alice"]),
    ("program-shared", {"bob": {"supervisor": {"program": "jupyter-alice"}}}, ["jupyter:instances:bob:supervisor:program"]),
]


@pytest.mark.parametrize("patch, expected", [c[1:] for c in INSTANCE_CASES], ids=[c[0] for c in INSTANCE_CASES])
def test_instances_refused(patch, expected):
    pillar = merge(ISSUE12, {"instances": patch})
    errors = jp.check_instances(derived(pillar))
    assert any(all(text in err for text in expected) for err in errors), errors
    # and jupyter.settings refuses the pillar with it
    assert any(all(text in err for text in expected) for err in pipeline_errors(pillar))


def test_another_instances_venv_linked_into_a_root_dir_is_refused():
    instances = derived(ISSUE12)
    fact = {"paths": {"/opt/jupyter/venv-bob": {"exists": True, "realpath": "/srv/jupyter/alice/v", "uid": 0}}}
    assert jp.check_instances(instances) == []
    errors = jp.check_instances(instances, fact)
    assert any(e.startswith("jupyter:instances:alice:root_dir:") and "really /srv/jupyter/alice/v" in e for e in errors), errors


def test_instance_rules_apply_per_instance():
    pillar = merge(ISSUE12, {"instances": {"bob": {"server": {"ip": "0.0.0.0"}, "password": "bob12345"}}})
    errors = [e.strip("- ") for e in pipeline_errors(pillar)]
    assert any(e.startswith("jupyter:instances:bob:server:ip:") for e in errors)
    assert any(e.startswith("jupyter:instances:bob:password: too easy") for e in errors)
    assert not any("alice" in e for e in errors)


# --------------------------------------------------------------------------------------
# gather_facts on real files (the one impure function)


def test_gather_facts_reads_the_host(tmp_path):
    real = tmp_path / "real"
    real.mkdir()
    link = tmp_path / "link"
    link.symlink_to(real)
    state = tmp_path / "state"
    state.mkdir()
    (state / "record.json").write_text(json.dumps({"directories": [str(real)]}))
    (state / "accounts.json").write_text(json.dumps(["root"]))
    (tmp_path / "c.pem").write_text(CERT)
    inst = merge(BASE, {"user": "root", "root_dir": str(link), "home": str(real), "state_dir": str(state),
                        "nginx": {"tls": {"certificate": str(tmp_path / "c.pem"), "certificate_key": str(tmp_path / "none.key")}}})
    got = jp.gather_facts({"jupyter": inst})
    assert got["users"]["root"]["uid"] == 0 and "root" in got["users"]["root"]["groups"]
    assert isinstance(got["sys_uid_max"], int) and got["sys_uid_max"] >= 99
    assert got["paths"][str(link)]["realpath"] == str(real)
    assert got["paths"][str(real)]["exists"] and got["paths"][str(real)]["uid"] == os.getuid()
    assert got["paths"]["/opt/jupyter/venv"] is not None
    assert got["paths"][str(tmp_path)]["uid"] == os.getuid() and got["paths"]["/"]["uid"] == 0  # parents
    assert got["files"] == {str(tmp_path / "c.pem"): CERT}
    assert got["created_accounts"] == ["root"] and got["created_directories"] == [str(real)]
    assert isinstance(got["has_ipv6"], bool)
    # the settings result of jupyter.settings works as well as an instances mapping
    assert jp.gather_facts({"mode": "single", "state_dir": str(state), "instances": {"jupyter": inst}})["created_accounts"] == ["root"]
    # and the rules use them: the symlinked root_dir is refused
    errors = jp.check_instance(merge(inst, {"user": "jupyter"}), "jupyter", got)
    assert any(e.startswith("jupyter:root_dir:") and "symbolic link" in e for e in errors), errors


