"""
Two instances on THIS host (no systemd, cgroup v1 writable): each its own login, user,
files and program; A's memory limit holds for its kernels (the OOM killer takes A's
kernel, B's kernel and A's server go on); removing and adding an instance leaves the
other one running; jupyter.clean takes everything away but the notebooks.

Own names, ports and paths throughout, so that a real deployment on the host is never
touched. The systemd side (slices) is proven on lab nodes (tests/lab/test_instances.py).
"""

import json
import os
import pwd
import shutil
import subprocess
import threading
from pathlib import Path

import pytest

from support.deployment import Deployment, changed, failed, host_lock
from support.jupyter_http import JupyterClient

pytestmark = pytest.mark.e2e

LISTEN = 8096
MEMORY = 300 * 1024 * 1024
PASSWORDS = {"a": "Inst-A-Quartz-71-lantern", "b": "Inst-B-Harbor-38-violet"}
CGROUP_MEMORY = Path("/sys/fs/cgroup/memory/jupyter-formula")


def instance(name, port, **extra):
    return {"user": f"jinst{name}", "password": PASSWORDS[name], "server": {"port": port, "base_url": f"/{name}/"},
            **extra}


PILLAR = {
    "packages": ["jupyterlab==4.6.6"],
    "root_dir": "/srv/jupyter-inst",
    "venv": "/opt/jupyter-inst/venv",
    "venv_store": "/opt/jupyter-inst/venvs",
    "state_dir": "/var/lib/jupyter-formula-inst",
    "config_file": "/etc/jupyter-inst/jupyter.json",
    "supervisor": {"program": "jupyter-inst", "log_dir": "/var/log/jupyter-inst"},
    "nginx": {"site": "jupyter-inst", "listen": LISTEN, "default_server": False,
              "login_rate_limit": {"rate": "300r/m", "burst": 100}},
    "instances": {
        "a": instance("a", 8911, limits={"memory": MEMORY, "tasks": 256}),
        "b": instance("b", 8912),
    },
}


def url(name):
    return f"http://127.0.0.1:{LISTEN}/{name}/"


def login(name, password=None):
    client = JupyterClient(url(name), timeout=60)
    assert client.login(password or PASSWORDS[name]), f"{name}: login refused ({client.last_login_status})"
    return client


def program_pid(dep, program):
    status = dep.salt_call("supervisor_rpc.status", program, "--out=json")
    (info,) = json.loads(status.stdout)["local"].values()
    return info["pid"] if info["state"] in ("RUNNING", "STARTING") else None


@pytest.fixture(scope="module")
def site():
    with host_lock():
        shutil.rmtree(PILLAR["root_dir"], ignore_errors=True)  # this test's own notebooks of an earlier run
        dep = Deployment("inst", PILLAR)
        proc = dep.deploy()
        assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-3000:]
        for name in ("a", "b"):
            login(name)
        yield dep
        dep.update_pillar({"clean": {"user": True}})
        cleaned = dep.apply(sls="jupyter.clean")
        assert not failed(cleaned), failed(cleaned)
        # the notebooks stay, out of reach of whoever gets the removed accounts' uids
        for name in ("a", "b"):
            kept = os.stat(f"{PILLAR['root_dir']}/{name}")
            assert (kept.st_uid, kept.st_mode & 0o777) == (0, 0o700)
        shutil.rmtree(PILLAR["root_dir"])
        # the record of the notebooks, deploy.sh's config dir, pillar file and Salt cache (the test's own)
        shutil.rmtree(PILLAR["state_dir"], ignore_errors=True)
        dep.forget()


def test_each_instance_logs_in_with_its_own_password_only(site):
    for name, other in (("a", "b"), ("b", "a")):
        client = login(name)
        kernel = client.start_kernel()
        try:
            assert client.execute(kernel, "6*7") == "42"
        finally:
            client.delete_kernel(kernel)
        assert not JupyterClient(url(name)).login(PASSWORDS[other])


def test_each_instance_runs_as_its_user_in_its_own_files(site):
    for name in ("a", "b"):
        pid = program_pid(site, f"jupyter-inst-{name}")
        assert pwd.getpwuid(os.stat(f"/proc/{pid}").st_uid).pw_name == f"jinst{name}"
        root = Path(f"/srv/jupyter-inst/{name}")
        assert root.stat().st_mode & 0o777 == 0o750 and pwd.getpwuid(root.stat().st_uid).pw_name == f"jinst{name}"
    reads = subprocess.run(["runuser", "-u", "jinsta", "--", "ls", "/srv/jupyter-inst/b"],
                           capture_output=True, text=True, check=False)
    assert reads.returncode != 0 and "Permission denied" in reads.stderr


def oom_kills(name):
    for line in (CGROUP_MEMORY / name / "memory.oom_control").read_text().splitlines():
        if line.startswith("oom_kill "):
            return int(line.split()[1])
    raise AssertionError("this kernel does not count OOM kills per cgroup")


def test_a_kernel_past_its_memory_limit_is_killed_and_only_it(site):
    a_pid = program_pid(site, "jupyter-inst-a")
    assert "memory:/jupyter-formula/a" in Path(f"/proc/{a_pid}/cgroup").read_text()
    assert int((CGROUP_MEMORY / "a" / "memory.limit_in_bytes").read_text()) == MEMORY
    a, b = login("a"), login("b")
    a_kernel, b_kernel = a.start_kernel(), b.start_kernel()
    try:
        assert b.execute(b_kernel, "x = 1; 6*7") == "42"
        before = oom_kills("a")
        outcome = {}

        def hog():
            try:
                outcome["a"] = a.execute(a_kernel, "big = bytearray(600 * 1024 * 1024); 'survived'", timeout=30)
            except Exception as exc:  # noqa: BLE001 - the kernel dies under it: any end will do
                outcome["a"] = repr(exc)

        worker = threading.Thread(target=hog)
        worker.start()
        worker.join(45)
        assert oom_kills("a") > before, "no OOM kill in A's cgroup"
        assert outcome.get("a") != "survived"
        # B's kernel (its state kept) and A's server go on
        assert b.execute(b_kernel, "x + 41") == "42"
        assert a.api("GET", "status").status_code == 200
        fresh = a.start_kernel()
        assert a.execute(fresh, "6*7") == "42"
        a.delete_kernel(fresh)
        assert program_pid(site, "jupyter-inst-a") == a_pid
    finally:
        a.delete_kernel(a_kernel)
        b.delete_kernel(b_kernel)


def test_second_apply_changes_nothing(site):
    pids = {name: program_pid(site, f"jupyter-inst-{name}") for name in ("a", "b")}
    results = site.apply()
    assert not failed(results) and changed(results) == {}
    assert {name: program_pid(site, f"jupyter-inst-{name}") for name in ("a", "b")} == pids


def test_removing_an_instance_removes_only_it_and_adding_it_back_restarts_nothing_else(site):
    a_pid = program_pid(site, "jupyter-inst-a")
    Path("/srv/jupyter-inst/b/keep.ipynb").write_text("{}")
    pillar = {**PILLAR, "instances": {"a": PILLAR["instances"]["a"]}}
    site.write_pillar(pillar)
    results = site.apply()
    assert not failed(results), failed(results)
    assert not Path("/etc/supervisor/conf.d/jupyter-inst-b.conf").exists()
    assert not Path("/etc/jupyter-inst/b.json").exists()
    assert not Path("/var/log/jupyter-inst/jupyter-inst-b.log").exists()
    assert "/b/" not in Path("/etc/nginx/sites-available/jupyter-inst.conf").read_text()
    assert Path("/srv/jupyter-inst/b/keep.ipynb").exists()  # notebooks stay
    assert program_pid(site, "jupyter-inst-a") == a_pid
    login("a")

    site.write_pillar(PILLAR)
    results = site.apply()
    assert not failed(results), failed(results)
    assert program_pid(site, "jupyter-inst-a") == a_pid
    assert not any(key.startswith("jupyter-supervisor-program-a") or key == "jupyter-package-venv-a"
                   for key in changed(results))
    login("b")
