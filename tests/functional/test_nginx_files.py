"""
jupyter_nginx.replace_files against the real nginx binary, on a private configuration
in a temp dir (the host's nginx is not touched): a set of files is kept only when
`nginx -t` accepts the whole configuration, and is put back exactly as it was otherwise.
"""

import os
import shutil
import stat
from pathlib import Path

import pytest

from support.loader import load

pytestmark = pytest.mark.skipif(not shutil.which("nginx"), reason="needs Debian's nginx package")

SITE = """server {
    listen 127.0.0.1:%(port)d%(default)s;
    server_name %(name)s;
    location / { return 204; }
}
"""


@pytest.fixture
def conf(tmp_path):
    """A private nginx configuration with one site already live, and an `nginx` command
    that tests it (what the module runs as `nginx -t`)."""
    (tmp_path / "sites").mkdir()
    (tmp_path / "nginx.conf").write_text(
        f"pid {tmp_path}/nginx.pid;\nerror_log {tmp_path}/error.log;\nevents {{}}\n"
        f"http {{\n    access_log off;\n    include {tmp_path}/sites/*.conf;\n}}\n"
    )
    (tmp_path / "sites" / "other.conf").write_text(SITE % {"port": 18080, "default": " default_server", "name": "other"})
    wrapper = tmp_path / "nginx"
    wrapper.write_text(f'#!/bin/sh\nexec nginx -c {tmp_path}/nginx.conf -p {tmp_path} "$@"\n')
    wrapper.chmod(0o755)
    return tmp_path


@pytest.fixture
def nginx():
    return load("_modules", "jupyter_nginx")


def snapshot(root):
    """Every file and link under root: (kind, mode, contents or target)."""
    out = {}
    for path in sorted(Path(root).rglob("*")):
        if path.name in ("error.log", "nginx.pid"):
            continue
        st = os.lstat(path)
        if stat.S_ISLNK(st.st_mode):
            out[str(path)] = ("link", os.readlink(path))
        elif stat.S_ISREG(st.st_mode):
            out[str(path)] = ("file", stat.S_IMODE(st.st_mode), path.read_bytes())
    return out


def test_accepted_files_are_kept_with_their_modes(conf, nginx):
    site = conf / "sites" / "jupyter.conf"
    key = conf / "tls" / "jupyter.key"
    files = {
        str(site): {"contents": SITE % {"port": 18081, "default": "", "name": "nb"}, "mode": 0o644},
        str(key): {"contents": "-----BEGIN PRIVATE KEY-----\nx\n", "mode": 0o600},
        str(conf / "sites" / "link.conf"): {"link": str(site)},
    }
    result = nginx.replace_files(files, str(conf / "nginx"))
    assert result["ok"], result["message"]
    assert set(result["changed"]) == set(files)
    assert stat.S_IMODE(os.stat(key).st_mode) == 0o600
    assert os.readlink(conf / "sites" / "link.conf") == str(site)
    assert nginx.pending(files) == {}  # a second call changes nothing
    assert nginx.replace_files(files, str(conf / "nginx"))["changed"] == {}


def test_a_site_that_breaks_the_full_configuration_is_put_back(conf, nginx):
    # alone this site is fine; with the live one, two default servers on one port
    site = conf / "sites" / "jupyter.conf"
    site.write_text(SITE % {"port": 18082, "default": "", "name": "nb"})
    before = snapshot(conf)
    files = {
        str(site): {"contents": SITE % {"port": 18080, "default": " default_server", "name": "nb"}, "mode": 0o644},
        str(conf / "sites" / "new.conf"): {"contents": "# new\n", "mode": 0o644},
    }
    result = nginx.replace_files(files, str(conf / "nginx"))
    assert not result["ok"]
    assert "duplicate default server" in result["message"]
    assert result["changed"] == {}
    assert snapshot(conf) == before  # the old site is back, the new file gone


def test_a_removal_is_undone_when_nginx_rejects_the_rest(conf, nginx):
    before = snapshot(conf)
    files = {
        str(conf / "sites" / "other.conf"): None,
        str(conf / "sites" / "broken.conf"): {"contents": "server { bogus_directive on; }\n", "mode": 0o644},
    }
    result = nginx.replace_files(files, str(conf / "nginx"))
    assert not result["ok"] and 'unknown directive "bogus_directive"' in result["message"]
    assert snapshot(conf) == before


def test_config_test_names_the_problem(conf, nginx):
    assert nginx.config_test(str(conf / "nginx"))["ok"]
    (conf / "sites" / "broken.conf").write_text("server { listen 127.0.0.1:18083; bogus_directive on; }\n")
    result = nginx.config_test(str(conf / "nginx"))
    assert not result["ok"] and 'unknown directive "bogus_directive"' in result["message"]
