"""
A bad pillar stops the run before anything on the host changes: every sls renders a
failing jupyter_config.invalid_pillar state whose message names the bad key, and the
nginx, supervisor, config and virtualenv trees are byte for byte what they were.
"""

import pytest

from hardening.common import HTTP_PORT, HTTPS_PORT, assert_same_trees, tree_checksums
from support.deployment import merge

DROP = object()  # a key removed from the base pillar
SHORT_SECRET = "Xq7z"  # a too-short password: the message must not show it

# (id, pillar patch, text the failure message must contain)
CASES = [
    ("port-as-string", {"server": {"port": "8891"}}, "jupyter:server:port"),
    ("port-zero", {"server": {"port": 0}}, "jupyter:server:port"),
    ("port-too-big", {"server": {"port": 70000}}, "jupyter:server:port"),
    ("port-is-nginx-listen", {"server": {"port": HTTP_PORT}}, "jupyter:server:port"),
    ("port-is-nginx-tls", {"server": {"port": HTTPS_PORT}}, "jupyter:server:port"),
    ("listen-bool", {"nginx": {"listen": True}}, "jupyter:nginx:listen"),
    ("tls-listen-is-listen", {"nginx": {"tls": {"listen": HTTP_PORT}}}, "jupyter:nginx:tls:listen"),
    ("user-int", {"user": 1000}, "jupyter:user"),
    ("packages-string", {"packages": "jupyterlab"}, "jupyter:packages"),
    ("package-option", {"packages": ["--index-url=http://127.0.0.1/x jupyterlab"]}, "jupyter:packages"),
    ("server-name-semicolon", {"nginx": {"server_name": ["a.example; include /etc/passwd"]}},
     "jupyter:nginx:server_name"),
    ("server-name-braces", {"nginx": {"server_name": "a.example { }"}}, "jupyter:nginx:server_name"),
    ("server-name-newline", {"nginx": {"server_name": ["a.example\nlisten 81"]}}, "jupyter:nginx:server_name"),
    ("base-url-semicolon", {"server": {"base_url": "/nb;/"}}, "jupyter:server:base_url"),
    ("base-url-quote", {"server": {"base_url": '/nb"/'}}, "jupyter:server:base_url"),
    ("base-url-space", {"server": {"base_url": "/nb x/"}}, "jupyter:server:base_url"),
    ("base-url-brace", {"server": {"base_url": "/nb}/"}}, "jupyter:server:base_url"),
    ("root-dir-space", {"root_dir": "/srv/jupyter hardening"}, "jupyter:root_dir"),
    ("venv-semicolon", {"venv": "/opt/x;rm/venv"}, "jupyter:venv"),
    ("log-dir-newline", {"supervisor": {"log_dir": "/var/log/x\n[program:evil]"}}, "jupyter:supervisor:log_dir"),
    ("config-file-quote", {"config_file": "/etc/jupyter-hardening/'x.json"}, "jupyter:config_file"),
    ("program-brackets", {"supervisor": {"program": "x]\n[program:y"}}, "jupyter:supervisor:program"),
    ("directive-braces", {"nginx": {"extra_directives": ["} server { listen 9;"]}}, "jupyter:nginx:extra_directives"),
    ("body-size-injection", {"nginx": {"client_max_body_size": "1m; return 200"}},
     "jupyter:nginx:client_max_body_size"),
    ("rate-injection", {"nginx": {"login_rate_limit": {"rate": "1r/s burst=9"}}}, "jupyter:nginx:login_rate_limit:rate"),
    ("relative-root-dir", {"root_dir": "srv/jupyter"}, "jupyter:root_dir"),
    ("relative-venv", {"venv": "opt/venv"}, "jupyter:venv"),
    ("relative-certificate", {"nginx": {"tls": {"certificate": "certs/site.pem"}}}, "jupyter:nginx:tls:certificate"),
    ("dotdot-log-dir", {"supervisor": {"log_dir": "/var/log/../../etc"}}, "jupyter:supervisor:log_dir"),
    ("typo-top", {"pasword": "whatever-long"}, "jupyter:pasword: unknown key; did you mean 'password'?"),
    ("typo-server", {"server": {"prot": 9000}}, "jupyter:server:prot: unknown key; did you mean 'port'?"),
    ("typo-nginx", {"nginx": {"lisen": 8080}}, "jupyter:nginx:lisen: unknown key; did you mean 'listen'?"),
    ("no-password", {"password": DROP}, "jupyter:password"),
    ("short-password", {"password": SHORT_SECRET}, "jupyter:password"),
    ("legacy-sha1-hash", {"password": DROP, "hashed_password": "sha1:0123456789ab:" + "ab" * 20},
     "jupyter:hashed_password: legacy"),
    ("malformed-argon2-hash", {"password": DROP,
                               "hashed_password": "argon2:$argon2id$v=19$m=10240,t=10,p=8$not base64!$x"},
     "jupyter:hashed_password"),
    ("root-user", {"user": "root"}, "jupyter:user: the server must not run as root"),
    ("env-double-quote", {"supervisor": {"environment": {"TZ": 'UTC",EVIL="1'}}}, "jupyter:supervisor:environment"),
    ("env-single-quote", {"supervisor": {"environment": {"TZ": "'UTC'"}}}, "jupyter:supervisor:environment"),
    ("env-newline", {"supervisor": {"environment": {"TZ": "UTC\n[program:evil]"}}}, "jupyter:supervisor:environment"),
    ("env-comment", {"supervisor": {"environment": {"TZ": "UTC ;x"}}}, "jupyter:supervisor:environment"),
    ("env-bad-name", {"supervisor": {"environment": {"A B": "1"}}}, "jupyter:supervisor:environment"),
    ("owned-trait", {"config": {"ServerApp": {"port": 9999}}}, "jupyter:config"),
]


def patched(base, patch):
    out = merge(base, {k: v for k, v in patch.items() if v is not DROP})
    for key in [k for k, v in patch.items() if v is DROP]:
        out.pop(key)
    return out


@pytest.fixture(scope="module")
def trees(deployed):
    """Checksums of the trees with the base pillar applied, taken once for all cases."""
    return tree_checksums()


@pytest.mark.parametrize("patch,expected", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_bad_pillar_changes_nothing(deployed, trees, patch, expected):
    results = deployed.apply_pillar(patched(deployed.base, patch))
    assert_same_trees(trees, tree_checksums())
    # nothing but the invalid_pillar states ran, and each of them failed
    funs = {key.split("_|-")[0] + "." + key.split("_|-")[-1] for key in results}
    assert funs == {"jupyter_config.invalid_pillar"}, sorted(results)
    comments = [ret["comment"] for ret in results.values()]
    assert all(ret["result"] is False for ret in results.values())
    assert all(expected in comment for comment in comments), comments[0]
    assert all("nothing was changed" in comment for comment in comments)
    assert not any(SHORT_SECRET in comment or deployed.base["password"] in comment for comment in comments)
