"""
The quick start for real, on each target (this host without systemd, a systemd lab
node): deploy.sh applied the formula masterless (conftest.py), then everything is
checked from outside, through nginx, in the order an admin lives it: use, re-apply,
change the password, change nginx, change the program, upgrade the packages, move
under a prefix. Every edge of the watch graph is asserted by its effect (which pids
changed, what serves), never by the wording of a state's comment.
"""

import re
import time

import requests

from e2e.conftest import FIRST, PILLAR, PORT, SECOND
from support.deployment import JUPYTERLAB, changed, failed

MB = 1024 * 1024


def logged_in(dep, password=FIRST):
    client = dep.client()
    assert client.login(password), f"login refused ({client.last_login_status})"
    return client


def check_login_kernel_upload(dep):
    """Anonymous users get the login page; the password logs in; a kernel computes; a
    20 MB notebook is saved and read back, under whatever base_url the deployment has."""
    anonymous = requests.get(dep.url(), timeout=10)
    assert anonymous.history and anonymous.url.startswith(dep.url("login"))
    assert requests.get(dep.url("api/status"), timeout=10).status_code == 403
    assert not dep.client().login("not-the-password")
    client = logged_in(dep)
    assert client.api("GET", "status").status_code == 200
    kernel = client.start_kernel()
    try:
        assert client.execute(kernel, "6*7") == "42"
    finally:
        client.delete_kernel(kernel)
    saved = client.save_notebook("e2e-20mb.ipynb", 20 * MB)
    assert saved.status_code in (200, 201), saved.text[:300]
    assert client.api("GET", "contents/e2e-20mb.ipynb?content=0").json()["size"] > 20 * MB


def wait_for_new_workers(target, old_workers, timeout=30):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        master, workers = target.nginx_pids()
        if workers and not set(workers) & set(old_workers):
            return master, workers
        time.sleep(0.2)
    raise AssertionError("nginx workers were not replaced: no reload happened")


def test_deploy_serves_login_kernel_and_large_notebooks(e2e):
    check_login_kernel_upload(e2e)


def test_services_run_and_start_at_boot(e2e):
    target = e2e.target
    assert target.nginx_pids()[0] and target.supervisord_pid()
    if target.systemd:
        res = target.run(["systemctl", "is-enabled", "nginx", "supervisor"])
        assert res.stdout.split() == ["enabled", "enabled"], res
    else:  # the init scripts' links (update-rc.d) for the default runlevels
        for unit in ("nginx", "supervisor"):
            assert target.run(["sh", "-c", f"ls /etc/rc2.d/S*{unit}"]).ok, unit


def test_second_apply_changes_and_restarts_nothing(e2e):
    target = e2e.target
    e2e.wait_settled()
    jupyter, nginx = e2e.jupyter_pid(), target.nginx_pids()
    results = e2e.apply()
    assert not failed(results)
    assert changed(results) == {}
    assert e2e.jupyter_pid() == jupyter
    assert target.nginx_pids() == nginx


def test_new_password_restarts_jupyter_only(base):
    target = base.target
    base.wait_settled()
    jupyter, nginx = base.jupyter_pid(), target.nginx_pids()
    base.update_pillar({"password": SECOND})
    results = base.apply()
    assert not failed(results)
    assert set(changed(results)) == {"jupyter-config-file", "jupyter-supervisor-program"}
    assert base.jupyter_pid() not in (None, jupyter)
    assert target.nginx_pids() == nginx
    base.wait_for_jupyter()
    assert not base.client().login(FIRST)
    assert logged_in(base, SECOND)


def test_nginx_setting_reloads_nginx_only(base):
    target = base.target
    base.wait_settled()
    jupyter = base.jupyter_pid()
    master, workers = target.nginx_pids()
    base.update_pillar({"nginx": {"client_max_body_size": "100m"}})
    results = base.apply()
    assert not failed(results)
    assert set(changed(results)) == {"jupyter-nginx-site", "jupyter-nginx-service"}
    site = target.read(f"/etc/nginx/sites-available/{PILLAR['nginx']['site']}.conf")
    assert "client_max_body_size 100m;" in site
    new_master, _ = wait_for_new_workers(target, workers)
    assert new_master == master  # reloaded, not restarted
    assert base.jupyter_pid() == jupyter


def test_program_file_change_updates_the_program_only(base):
    target = base.target
    base.wait_settled()
    jupyter, nginx = base.jupyter_pid(), target.nginx_pids()
    base.update_pillar({"supervisor": {"environment": {"TZ": "UTC"}}})
    results = base.apply()
    assert not failed(results)
    assert set(changed(results)) == {"jupyter-supervisor-program-file", "jupyter-supervisor-program"}
    pid = base.jupyter_pid()
    assert pid not in (None, jupyter)
    environ = target.environ(pid)
    user = PILLAR["user"]
    assert {"TZ=UTC", f"USER={user}", f"HOME=/home/{user}"} <= set(environ)
    assert target.nginx_pids() == nginx


def test_new_packages_build_a_venv_beside_and_restart_jupyter_only(base, wheelhouse):
    """packages changed -> a venv built beside the live one, the link switched, Jupyter
    restarted once; nginx untouched. Back to the old packages: the kept venv is live
    again, nothing is built."""
    target = base.target
    base.wait_settled()
    jupyter, nginx = base.jupyter_pid(), target.nginx_pids()
    link = PILLAR["venv"]
    old_venv = target.run(["readlink", "-f", link], check=True).stdout.strip()
    base.update_pillar({"packages": [JUPYTERLAB, "jfv-good-ext==1.0"],
                        "pip": {"extra_index_urls": [wheelhouse["extra_index_url"]]}})
    results = base.apply()
    assert not failed(results), failed(results)
    ids = set(changed(results))
    assert {"jupyter-package-venv", "jupyter-supervisor-program"} <= ids
    assert [i for i in ids if i.startswith("jupyter-package-venv-")], ids  # one new venv built
    assert ids <= {"jupyter-package-venv", "jupyter-supervisor-program", "jupyter-record"} | {
        i for i in ids if i.startswith("jupyter-package-venv-")}, ids
    new_venv = target.run(["readlink", "-f", link], check=True).stdout.strip()
    assert new_venv != old_venv and target.exists(old_venv)
    assert base.jupyter_pid() not in (None, jupyter)
    assert target.nginx_pids() == nginx
    base.wait_for_jupyter()
    client = logged_in(base)
    assert client.session.get(base.url("jfv-good-ext"), timeout=10).text == "jfv-good-ext 1.0"

    # back: the old venv is still in the store, so only the link moves
    base.write_pillar(PILLAR)
    results = base.apply()
    assert not failed(results), failed(results)
    assert not [i for i in changed(results) if i.startswith("jupyter-package-venv-")]
    assert target.run(["readlink", "-f", link], check=True).stdout.strip() == old_venv
    base.wait_for_jupyter()
    assert logged_in(base).session.get(base.url("jfv-good-ext"), timeout=10).status_code == 404


def test_base_url_prefix(base):
    base.update_pillar({"server": {"base_url": "/nb/"}})
    assert not failed(base.apply())
    base.wait_for_jupyter()
    check_login_kernel_upload(base)
    root = base.url().rsplit("/nb/", 1)[0]
    bare = requests.get(root + "/nb", allow_redirects=False, timeout=10)
    assert bare.status_code == 301 and bare.headers["Location"].endswith("/nb/")


def test_listens_on_loopback_as_the_user_with_a_private_config(e2e):
    target = e2e.target
    pid = e2e.jupyter_pid()
    mine = [address for address, pids in target.listeners(PORT) if pid in pids]
    assert mine == [f"127.0.0.1:{PORT}"], target.listeners(PORT)
    assert target.proc_owner(pid) == PILLAR["user"]
    config = PILLAR["config_file"]
    mode, uid = target.run(["stat", "-c", "%a %u", config], check=True).stdout.split()
    assert int(mode, 8) & 0o007 == 0 and uid == "0"
    # the server's user can read it, the web server's user cannot
    reads = target.run(["runuser", "-u", "www-data", "--", "cat", config])
    assert reads.rc != 0 and "Permission denied" in reads.stderr
    assert target.run(["runuser", "-u", PILLAR["user"], "--", "cat", config]).ok
    text = target.read(config)
    assert FIRST not in text and re.search(r'"hashed_password": "argon2:\$argon2id\$', text)


def test_program_file_is_private(e2e):
    """The program file holds the server's environment: root's, readable by nobody else."""
    path = f"/etc/supervisor/conf.d/{PILLAR['supervisor']['program']}.conf"
    mode, uid = e2e.target.run(["stat", "-c", "%a %u", path], check=True).stdout.split()
    assert int(mode, 8) & 0o007 == 0 and uid == "0", (mode, uid)
    reads = e2e.target.run(["runuser", "-u", "www-data", "--", "cat", path])
    assert reads.rc != 0 and "Permission denied" in reads.stderr
