"""
Every os family the formula names (jupyter/osfamilymap.yaml) renders every template of
the formula with Salt's own Jinja, not only its paths: the nginx sites (checked by the
real `nginx -t` inside a minimal http block), the supervisor program (read back as an
ini file), the systemd slice of an instance with limits. The RedHat family is rendered
here only; Debian 12 and 13 are applied in the end-to-end and lab tests.
"""

import configparser
import shutil
import subprocess
from pathlib import Path

import pytest
import salt.config
import salt.utils.templates
import yaml

from support.loader import REPO, settings_module

FAMILIES = sorted(yaml.safe_load((REPO / "jupyter/osfamilymap.yaml").read_text()))
PASSWORD = "Render-test-Quartz-71-lantern"
PILLARS = {
    "single": {"password": PASSWORD},
    "tls-prefix": {"password": PASSWORD, "server": {"base_url": "/nb/"},
                   "nginx": {"server_name": ["nb.example.org", "www.nb.example.org"],
                             "tls": {"certificate": "/etc/pki/nb/fullchain.pem",
                                     "certificate_key": "/etc/pki/nb/privkey.pem"}}},
    "instances": {
        "nginx": {"server_name": "nb.example.org"},
        "instances": {
            "a": {"user": "render_a", "password": PASSWORD + "-a", "server": {"port": 8901, "base_url": "/a/"},
                  "limits": {"memory": "1G", "cpu": 1.5, "tasks": 512}},
            "b": {"user": "render_b", "password": PASSWORD + "-b", "server": {"port": 8902, "base_url": "/b/"}},
            "c": {"user": "render_c", "password": PASSWORD + "-c", "server": {"port": 8903},
                  "nginx": {"server_name": "c.example.org"}},
        },
    },
}


@pytest.fixture(scope="module")
def opts():
    return salt.config.minion_config(None)


def render(opts, name, **context):
    text = (REPO / "jupyter/files" / name).read_text()
    return salt.utils.templates.render_jinja_tmpl(text, {"opts": opts, "saltenv": "base", **context})


def nginx_accepts(tmp_path, sites):
    """`nginx -t` of the rendered sites in a minimal http block (certificates made up)."""
    conf = tmp_path / "nginx.conf"
    includes = []
    for index, text in enumerate(sites):
        # the certificate paths do not exist here: point them at a throwaway pair
        site = tmp_path / f"site{index}.conf"
        lines = []
        for line in text.splitlines():
            if line.strip().startswith(("ssl_certificate ", "ssl_certificate_key ")):
                key = "ssl_certificate_key" if "_key " in line else "ssl_certificate"
                line = f"    {key} {tmp_path / ('key.pem' if key.endswith('key') else 'cert.pem')};"
            lines.append(line)
        site.write_text("\n".join(lines) + "\n")
        includes.append(f"    include {site};")
    subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
                    "-nodes", "-days", "1", "-subj", "/CN=render", "-keyout", str(tmp_path / "key.pem"),
                    "-out", str(tmp_path / "cert.pem")], check=True, capture_output=True)
    conf.write_text(f"pid {tmp_path}/nginx.pid;\nerror_log stderr;\nevents {{}}\nhttp {{\n" + "\n".join(includes) + "\n}\n")
    return subprocess.run(["nginx", "-t", "-q", "-c", str(conf), "-p", str(tmp_path)],
                          capture_output=True, text=True, check=False)


@pytest.mark.skipif(not shutil.which("nginx"), reason="needs Debian's nginx package")
@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("variant", sorted(PILLARS))
def test_sites_render_and_nginx_accepts_them(tmp_path, opts, family, variant):
    s = settings_module(PILLARS[variant], family).settings()
    texts = [render(opts, "nginx-site.conf.jinja", site=site) for site in s["sites"].values()]
    proc = nginx_accepts(tmp_path, texts)
    assert proc.returncode == 0, proc.stderr
    for site, text in zip(s["sites"].values(), texts):
        for loc in site["locations"]:
            assert f"location {loc['base_url']} {{" in text
            assert f"server {loc['ip']}:{loc['port']};" in text


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("variant", sorted(PILLARS))
def test_supervisor_programs_render_as_ini_files(opts, family, variant):
    s = settings_module(PILLARS[variant], family).settings()
    for inst in s["instances"].values():
        parser = configparser.ConfigParser(interpolation=None)
        parser.read_string(render(opts, "supervisor-program.conf.jinja", inst=inst,
                                  limits_runner="/usr/local/libexec/jupyter-formula/jupyter-limits-runner"))
        program = parser[f"program:{inst['program']}"]
        assert program["command"].endswith(f"{inst['jupyter_bin']} --no-browser --config={inst['config_file']}")
        assert program["directory"] == inst["root_dir"]
        assert program["stderr_logfile"] == inst["log_files"][1]
        if inst["limits_enforcement"]:
            assert "--init-groups" in program["command"] and "user" not in program
        else:
            assert program["user"] == inst["user"]


def test_a_slice_carries_the_instance_limits(opts):
    s = settings_module(PILLARS["instances"], "Debian").settings()
    text = render(opts, "instance.slice.jinja", inst=s["instances"]["a"])
    slice_ = configparser.ConfigParser(interpolation=None)
    slice_.read_string(text)
    assert dict(slice_["Slice"]) == {"memorymax": str(1024 ** 3), "memoryswapmax": "0",
                                     "cpuquota": "150%", "tasksmax": "512"}


def test_static_files_exist_for_every_state_that_names_them():
    for name in ("supervisor-service-dropin.conf", "jupyter-limits-runner.sh"):
        assert (REPO / "jupyter/files" / name).is_file()
    assert Path(REPO / "jupyter/files/jupyter-limits-runner.sh").stat().st_mode & 0o111
