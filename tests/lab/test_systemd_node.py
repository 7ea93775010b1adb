"""One real systemd host, masterless: the quick start (deploy.sh) inside a node.

The tests run in order and share the node: apply, re-apply, change the site, reboot,
then use Jupyter from the host through nginx.  Once per Debian suite of the lab
(bookworm, then trixie), each on a node of its own.
"""

import http.client
import socket
from types import SimpleNamespace

import pytest

from support.jupyter_http import JupyterClient

pytestmark = pytest.mark.lab

PASSWORD = "solo-lab-password-1"
PILLAR = {"password": PASSWORD, "nginx": {"client_max_body_size": "64m"}}
SMALLER_SITE = {**PILLAR, "nginx": {"client_max_body_size": "32m"}}


@pytest.fixture(scope="module")
def solo(lab, suite, repo_bind, deploy):
    name = f"solo{lab.SUITES[suite]}"  # solo12, solo13
    ip = lab.boot(name, binds_ro=[repo_bind], suite=suite)
    deploy(name, PILLAR)
    yield SimpleNamespace(name=name, ip=ip, url=f"http://{ip}/")
    lab.remove(name)


def refuses_body(ip, size, port=80):
    """True when nginx answers 413 to a POST announcing `size` bytes (none are sent)."""
    conn = http.client.HTTPConnection(ip, port, timeout=3)
    try:
        conn.putrequest("POST", "/login")
        conn.putheader("Content-Type", "application/octet-stream")
        conn.putheader("Content-Length", str(size))
        conn.endheaders()
        return conn.getresponse().status == 413
    except socket.timeout:  # nginx accepted the length and waits for the body
        return False
    finally:
        conn.close()


def jupyter_pid(lab, node):
    res = lab.run(node, ["supervisorctl", "pid", "jupyter"])
    assert res.stdout.strip().isdigit() and res.stdout.strip() != "0", res
    return int(res.stdout)


def test_services_active(lab, solo):
    res = lab.run(solo.name, ["systemctl", "is-active", "nginx", "supervisor"])
    assert res.ok and res.stdout.split() == ["active", "active"], res
    res = lab.run(solo.name, ["systemctl", "is-enabled", "nginx", "supervisor"])
    assert res.ok and res.stdout.split() == ["enabled", "enabled"], res


def test_supervisor_unit_has_the_formulas_dropin(lab, solo):
    """supervisord killed hard must take Jupyter with it and come back by itself (issue 11):
    the formula's drop-in is in force on this suite's supervisor.service."""
    res = lab.run(solo.name, ["systemctl", "show", "supervisor", "-p", "KillMode", "-p", "Restart",
                              "-p", "RestartUSec", "-p", "DropInPaths"])
    props = dict(line.split("=", 1) for line in res.stdout.splitlines())
    assert (props["KillMode"], props["Restart"], props["RestartUSec"]) == ("mixed", "on-failure", "5s"), props
    assert "/etc/systemd/system/supervisor.service.d/jupyter-formula.conf" in props["DropInPaths"].split()


def test_second_apply_changes_nothing(lab, solo, deploy):
    main, workers = lab.service_pids(solo.name, "nginx")
    pid = jupyter_pid(lab, solo.name)
    assert lab.salt_changed(deploy(solo.name, PILLAR)) == []
    assert lab.service_pids(solo.name, "nginx") == (main, workers)
    assert jupyter_pid(lab, solo.name) == pid


def test_site_change_reloads_nginx(lab, solo, deploy):
    size = 40 * 1024 * 1024  # between the old and the new client_max_body_size
    main, workers = lab.service_pids(solo.name, "nginx")
    pid = jupyter_pid(lab, solo.name)
    assert not refuses_body(solo.ip, size)

    changed = lab.salt_changed(deploy(solo.name, SMALLER_SITE))
    assert changed, "changing client_max_body_size changed nothing"

    # reloaded: the same master, new workers, and the new limit is live
    lab.wait_for("nginx's new workers",
                 lambda: not set(lab.service_pids(solo.name, "nginx")[1]) & set(workers), 15)
    assert lab.service_pids(solo.name, "nginx")[0] == main
    assert refuses_body(solo.ip, size)
    site = lab.run(solo.name, ["nginx", "-T"]).stdout
    assert "client_max_body_size 32m;" in site
    assert jupyter_pid(lab, solo.name) == pid, "a site change restarted Jupyter"


def test_jupyter_answers_after_reboot(lab, solo):
    lab.put(solo.name, "/run/jflab-before-reboot", "")  # /run is a tmpfs: gone after a boot
    lab.reboot(solo.name)
    with lab.phase(f"checks {solo.name} after reboot"):
        assert not lab.run(solo.name, ["test", "-e", "/run/jflab-before-reboot"]).ok
        lab.wait_http(solo.url + "login", timeout=90)
        res = lab.run(solo.name, ["systemctl", "is-active", "nginx", "supervisor"])
        assert res.stdout.split() == ["active", "active"], res
        lab.wait_for("jupyter RUNNING under supervisor (startsecs)",
                     lambda: "RUNNING" in lab.run(solo.name, ["supervisorctl", "status", "jupyter"]).stdout, 30)


def test_login_kernel_and_big_notebook_from_the_host(lab, solo, jupyter_login):
    with lab.phase(f"checks {solo.name} over http"):
        lab.wait_http(solo.url + "login")
        assert not JupyterClient(solo.url).login("not-the-password")
        client = jupyter_login(solo.url, PASSWORD)
        size = 20 * 1024 * 1024
        resp = client.save_notebook("lab-20mb.ipynb", payload_bytes=size)
        assert resp.status_code in (200, 201), resp.text[:500]
        model = client.api("GET", "contents/lab-20mb.ipynb", params={"content": "0"}).json()
        assert model["size"] >= size
