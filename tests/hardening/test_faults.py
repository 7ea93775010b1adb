"""
Failure behaviour: processes killed or restarted under the deployment, a site nginx
rejects, a pip install that fails, and test=True. The module holds the host lock: it
kills and restarts daemons that other deployments share.
"""

import hashlib
import os
import signal
import subprocess
import time
from pathlib import Path

from hardening.common import (
    SITE_FILES,
    assert_same_trees,
    site_answers,
    supervisor_status,
    tree_checksums,
    wait_for,
)
from support.deployment import changed, failed, merge, nginx_pids

STARTSECS = 5  # supervisor:startsecs, the formula's default


def supervisord_pid():
    return int(Path("/var/run/supervisord.pid").read_text().strip())


def running_again(old_pid):
    def check():
        """the program RUNNING with a new pid"""
        state, pid = supervisor_status()
        return state == "RUNNING" and pid not in (None, old_pid)

    return check


def sha256(path):
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def test_killed_jupyter_is_restarted_by_supervisor(deployed, figures):
    state, pid = supervisor_status()
    assert state == "RUNNING"
    start = time.monotonic()
    os.kill(pid, signal.SIGKILL)
    took = wait_for(running_again(pid), STARTSECS + 5)
    wait_for(lambda: site_answers(deployed), STARTSECS + 5 - (time.monotonic() - start))
    serving = time.monotonic() - start
    figures.append(f"kill -9 of Jupyter: RUNNING again after {took:.1f} s, serving after {serving:.1f} s")


def test_jupyter_comes_back_after_supervisord_restart(deployed, figures):
    old_daemon, (_, old_pid) = supervisord_pid(), supervisor_status()
    start = time.monotonic()
    subprocess.run(["service", "supervisor", "stop"], check=True, capture_output=True, timeout=120)
    wait_for(lambda: not os.path.exists(f"/proc/{old_daemon}"), 60)  # the init script does not wait
    subprocess.run(["service", "supervisor", "start"], check=True, capture_output=True, timeout=120)
    wait_for(running_again(old_pid), 60)
    wait_for(lambda: site_answers(deployed), 60)
    assert supervisord_pid() != old_daemon
    figures.append(f"supervisord stop+start: Jupyter serving again after {time.monotonic() - start:.1f} s")


def test_supervisor_init_script_restart_then_apply(deployed):
    """Debian 12's init script "restart" only stops supervisord: the next apply starts it."""
    _, old_pid = supervisor_status()
    subprocess.run(["service", "supervisor", "restart"], check=True, capture_output=True, timeout=120)
    results = deployed.apply()
    assert not failed(results)
    wait_for(running_again(old_pid), 30)
    wait_for(lambda: site_answers(deployed), 30)
    assert not changed(deployed.apply())  # and all is settled


def test_killed_nginx_is_back_after_next_apply(deployed, figures):
    master, workers = nginx_pids()
    for pid in (master, *workers):
        os.kill(pid, signal.SIGKILL)
    # gone, reaped by PID 1 too (a zombie master still counts as running for the init script)
    wait_for(lambda: not any(os.path.exists(f"/proc/{pid}") for pid in (master, *workers)), 10)
    assert not site_answers(deployed)
    start = time.monotonic()
    results = deployed.apply()
    assert not failed(results)
    assert changed(results) == {"jupyter-nginx-service": {"nginx": "started"}}
    wait_for(lambda: site_answers(deployed), 10)
    assert nginx_pids()[0] != master
    figures.append(f"nginx killed: the next apply had it serving again after {time.monotonic() - start:.1f} s")


def test_site_that_nginx_rejects_never_goes_live(deployed):
    site_before, master = sha256(SITE_FILES[0]), nginx_pids()[0]
    results = deployed.apply_pillar(merge(deployed.base, {"nginx": {"extra_directives": ["bogus_directive on;"]}}))
    errors = failed(results)
    assert 'unknown directive "bogus_directive"' in errors["jupyter-nginx-site"]
    assert "jupyter-nginx-service" not in changed(results)  # no reload
    assert sha256(SITE_FILES[0]) == site_before
    assert nginx_pids()[0] == master
    assert site_answers(deployed)

    results = deployed.apply_pillar(deployed.base)
    assert not failed(results)
    deployed.applied_base = True
    assert site_answers(deployed)


def test_failed_pip_install_keeps_jupyter_serving(deployed):
    _, pid = supervisor_status()
    results = deployed.apply_pillar(merge(deployed.base, {"packages": ["jupyterlab==0.0.0.999"]}))
    errors = failed(results)
    assert "jupyterlab==0.0.0.999" in errors["jupyter-package-pip"], errors
    assert "jupyter-supervisor-program" in errors  # its requisite failed: no restart
    assert supervisor_status() == ("RUNNING", pid)
    assert site_answers(deployed)

    results = deployed.apply_pillar(deployed.base)
    assert not failed(results) and not changed(results)
    deployed.applied_base = True
    assert supervisor_status() == ("RUNNING", pid)


def test_test_mode_changes_nothing_and_says_what_would(deployed):
    trees, jupyter, nginx = tree_checksums(), supervisor_status(), nginx_pids()
    pillar = merge(deployed.base, {
        "nginx": {"client_max_body_size": "256m"},
        "supervisor": {"environment": {"TZ": "UTC"}},
        "config": {"MappingKernelManager": {"cull_idle_timeout": 3600}},
    })
    results = deployed.apply_pillar(pillar, "test=True")
    assert_same_trees(trees, tree_checksums())
    assert (supervisor_status(), nginx_pids()) == (jupyter, nginx)

    predicted = {ret["__id__"]: ret for ret in results.values() if ret["result"] is None}
    assert set(predicted) == {
        "jupyter-config-file", "jupyter-supervisor-program-file", "jupyter-supervisor-program",
        "jupyter-nginx-site", "jupyter-nginx-config-test", "jupyter-nginx-service",
    }, {key: ret["comment"] for key, ret in predicted.items()}
    assert predicted["jupyter-config-file"]["changes"]["settings"] == ["MappingKernelManager.cull_idle_timeout"]
    assert "client_max_body_size 256m;" in predicted["jupyter-nginx-site"]["changes"]["diff"]
    assert 'TZ="UTC"' in predicted["jupyter-supervisor-program-file"]["changes"]["diff"]
    assert "would be restarted" in predicted["jupyter-supervisor-program"]["comment"]
    assert "would reload" in predicted["jupyter-nginx-service"]["comment"]
    # the host still has the base pillar's state
    deployed.write_pillar(deployed.base)
    deployed.applied_base = True
