"""
A bad pillar stops the run before anything on the target changes: every sls renders a
failing jupyter_config.invalid_pillar state whose message names the bad key, and the
nginx, supervisor, config, venv, notebook, record and account trees are what they were
(every entry's type, mode, owner, size, times and inode).

The cases of issue 10's table are dangerous if a bug let them through (a system account
taken over, Jupyter exposed, a shared config dir written). On this host a case is applied
only after jupyter.settings refused it, so such a bug fails the test without changing
the machine. On lab nodes (disposable) a sample is applied as it is.
"""

import pytest

from hardening.common import HTTP_PORT, HTTPS_PORT, TREES, assert_same_trees
from support.deployment import merge
from support.target import HOST

DROP = object()  # a key removed from the base pillar
SHORT_SECRET = "Xq7z"  # a too-short password: the message must not show it

# (id, pillar patch, text the failure message must contain)
CASES = [
    ("port-as-string", {"server": {"port": "8923"}}, "jupyter:server:port"),
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
    ("root-dir-space", {"root_dir": "/srv/jft hard"}, "jupyter:root_dir"),
    ("venv-semicolon", {"venv": "/opt/x;rm/venv"}, "jupyter:venv"),
    ("log-dir-newline", {"supervisor": {"log_dir": "/var/log/x\n[program:evil]"}}, "jupyter:supervisor:log_dir"),
    ("config-file-quote", {"config_file": "/etc/jft-hard/'x.json"}, "jupyter:config_file"),
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
    ("root-user", {"user": "root"}, "jupyter:user"),
    ("env-double-quote", {"supervisor": {"environment": {"TZ": 'UTC",EVIL="1'}}}, "jupyter:supervisor:environment"),
    ("env-single-quote", {"supervisor": {"environment": {"TZ": "'UTC'"}}}, "jupyter:supervisor:environment"),
    ("env-newline", {"supervisor": {"environment": {"TZ": "UTC\n[program:evil]"}}}, "jupyter:supervisor:environment"),
    ("env-comment", {"supervisor": {"environment": {"TZ": "UTC ;x"}}}, "jupyter:supervisor:environment"),
    ("env-bad-name", {"supervisor": {"environment": {"A B": "1"}}}, "jupyter:supervisor:environment"),
    ("owned-trait", {"config": {"ServerApp": {"port": 9999}}}, "jupyter:config"),
    # issue 10's table: well-formed and dangerous
    ("published-password", {"password": "change-me-please"}, "jupyter:password"),
    ("root-dir-holds-the-venv", {"root_dir": "/opt/jft-hard"}, "jupyter:root_dir"),
    ("venv-inside-notebooks", {"venv": "/srv/jft-hard/.venv"}, "jupyter:venv"),
    ("config-file-shared-dir", {"config_file": "/etc/jupyter/./x.json"}, "jupyter:config_file"),
    ("token-on-a-subclass", {"config": {"PasswordIdentityProvider": {"token": "abc"}}}, "jupyter:config"),
    ("exposed-ip", {"server": {"ip": "0.0.0.0"}}, "jupyter:server:ip"),
    ("nginx-worker-user", {"user": "www-data"}, "jupyter:user"),
    ("system-account", {"user": "daemon"}, "jupyter:user"),
    ("empty-packages", {"packages": []}, "jupyter:packages"),
    ("empty-server-name", {"nginx": {"server_name": []}}, "jupyter:nginx:server_name"),
    ("base-url-traversal", {"server": {"base_url": "/../"}}, "jupyter:server:base_url"),
    ("system-dir-as-root-dir", {"root_dir": "/usr/share"}, "jupyter:root_dir"),
    ("system-log-dir", {"supervisor": {"log_dir": "/var/log"}}, "jupyter:supervisor:log_dir"),
]
# what a lab node applies: a sample across the classes (this host runs them all; the
# rest is deselected on nodes by conftest.py, not skipped)
NODE_SAMPLE = {"port-is-nginx-tls", "server-name-newline", "typo-server", "short-password", "env-newline",
               "exposed-ip", "nginx-worker-user", "config-file-shared-dir"}


def patched(base, patch):
    out = merge(base, {k: v for k, v in patch.items() if v is not DROP})
    for key in [k for k, v in patch.items() if v is DROP]:
        out.pop(key)
    return out


@pytest.fixture(scope="module")
def trees(deployed):
    """The trees with the base pillar applied, taken once for all cases."""
    return deployed.target.tree_signature(TREES)


def on_this_target(item):
    """False for a case outside NODE_SAMPLE on a lab node (conftest.py deselects it)."""
    params = item.callspec.params
    return params.get("target") == "host" or params["case"][0] in NODE_SAMPLE


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_bad_pillar_changes_nothing(deployed, trees, case):
    _, patch, expected = case
    target = deployed.target
    pillar = patched(deployed.base, patch)
    deployed.write_pillar(pillar)
    deployed.applied_base = False
    refused = deployed.refused()
    if target is HOST:
        # never a plain apply of something dangerous here: only what the validator refuses
        assert refused, "jupyter.settings accepted this pillar: not applied on this host"
    if refused:
        assert expected in refused, refused
    results = deployed.apply()
    assert_same_trees(trees, target.tree_signature(TREES))
    # nothing but the invalid_pillar states ran, and each of them failed
    funs = {key.split("_|-")[0] + "." + key.split("_|-")[-1] for key in results}
    assert funs == {"jupyter_config.invalid_pillar"}, sorted(results)
    comments = [ret["comment"] for ret in results.values()]
    assert all(ret["result"] is False for ret in results.values())
    assert all(expected in comment for comment in comments), comments[0]
    assert all("nothing was changed" in comment for comment in comments)
    assert not any(SHORT_SECRET in comment or deployed.base["password"] in comment for comment in comments)
    # nothing changed: the target still has the base pillar's state (no re-apply needed)
    deployed.write_pillar(deployed.base)
    deployed.applied_base = True
