"""A fleet: a salt-master node, minions node1 and node2 that get Jupyter, and other1 that does not.

The master runs in a node rather than on the host: it is the same baked Salt as the
minions, under a systemd unit as on a real server; its keys, caches and job data live
in the node's overlay and vanish with it; nothing is written on the host and no port
is opened there; and the file_roots are this checkout, bind-mounted read-only.
"""

from types import SimpleNamespace

import pytest
import yaml

from support.jupyter_http import JupyterClient

pytestmark = pytest.mark.lab

MINIONS = ["node1", "node2", "other1"]
NODE1_PASSWORD = "fleet-common-password-1"
NODE2_PASSWORD = "node2-own-password-2"
TOP = {"base": {"node*": ["jupyter"], "node2": ["node2"]}}
PILLARS = {
    "jupyter": {"jupyter": {"password": NODE1_PASSWORD}},
    "node2": {"jupyter": {"password": NODE2_PASSWORD, "server": {"port": 8899},
                          "nginx": {"server_name": ["node2.lab"], "listen": 8080}}},
}


def master_conf(ip, repo):
    return yaml.safe_dump({
        "interface": ip,
        "auto_accept": True,
        "file_roots": {"base": [repo]},
        "file_ignore_regex": [r"/\.git($|/)", r"/\.venv($|/)", r"/__pycache__($|/)"],
        "pillar_roots": {"base": ["/srv/pillar"]},
    })


@pytest.fixture(scope="module")
def fleet(lab, repo_bind):
    repo_in_node = repo_bind.split(":", 1)[1]
    addrs = lab.boot_many({"master": {"binds_ro": [repo_bind]}, **{m: {} for m in MINIONS}})
    with lab.phase("salt master and minions"):
        lab.put("master", "/etc/salt/master.d/lab.conf", master_conf(addrs["master"], repo_in_node))
        lab.put("master", "/srv/pillar/top.sls", yaml.safe_dump(TOP))
        for name, pillar in PILLARS.items():
            lab.put("master", f"/srv/pillar/{name}.sls", yaml.safe_dump(pillar), mode="0600")
        lab.run("master", ["systemctl", "enable", "--now", "salt-master"], check=True)
        lab.wait_for("the master's ports", lambda: all(
            f":{port} " in lab.run("master", ["ss", "-Hltn"]).stdout for port in (4505, 4506)), 60)
        for minion in MINIONS:
            lab.put(minion, "/etc/salt/minion.d/lab.conf",
                    yaml.safe_dump({"master": addrs["master"], "id": minion, "acceptance_wait_time": 2}))
            lab.run(minion, ["systemctl", "enable", "--now", "salt-minion"], check=True)
        lab.wait_for("all minions to answer", lambda: pinged(lab, "*") == {m: True for m in MINIONS}, 120, 1)
    fleet = SimpleNamespace(addrs=addrs, salt=lambda *args, **kw: salt(lab, *args, **kw))
    with lab.phase("apply node* from the master"):
        fleet.sync = fleet.salt("node*", "saltutil.sync_all")
        fleet.apply = fleet.salt("node*", "state.apply", "jupyter", timeout=900)
    yield fleet
    lab.remove("master", *MINIONS)  # stops every salt-minion before any node goes down


def salt(lab, target, *args, timeout=300):
    """salt TARGET ARGS on the master; {minion: return}."""
    res = lab.run("master", ["/opt/salt/bin/salt", target, *args, "--out=json", "--static", f"--timeout={timeout}"],
                  timeout=timeout + 60)
    try:
        return lab.first_json(res.stdout)
    except ValueError:
        raise AssertionError(f"salt {target} {' '.join(args)} gave no JSON: {res}") from None


def pinged(lab, target):
    res = lab.run("master", ["/opt/salt/bin/salt", target, "test.ping", "--out=json", "--static", "--timeout=5"])
    try:
        return lab.first_json(res.stdout)
    except ValueError:
        return {}


def test_apply_from_the_master_reaches_node_minions_only(lab, fleet):
    assert sorted(fleet.apply) == ["node1", "node2"]
    for minion, results in fleet.apply.items():
        assert isinstance(results, dict), f"{minion}: {results}"
        assert not lab.salt_failed(results), f"{minion}: {lab.salt_failed(results)}"
        assert lab.salt_changed(results), f"{minion}: nothing changed on the first apply"
    for minion in ("node1", "node2"):
        res = lab.run(minion, ["systemctl", "is-active", "nginx", "supervisor"])
        assert res.stdout.split() == ["active", "active"], f"{minion}: {res}"


def test_other_minion_is_untouched(lab, fleet):
    assert pinged(lab, "other1") == {"other1": True}
    res = lab.run("other1", "dpkg-query -W nginx supervisor; ls -d /opt/jupyter /etc/jupyter /srv/jupyter; "
                            "systemctl list-unit-files nginx.service supervisor.service --no-legend")
    assert "\tnginx" not in res.stdout and "\tsupervisor" not in res.stdout, res
    assert "/opt/jupyter" not in res.stdout and "/etc/jupyter" not in res.stdout, res
    assert "enabled" not in res.stdout, res


def test_settings_differ_per_host(lab, fleet):
    settings = fleet.salt("node*", "jupyter.settings")
    node1, node2 = settings["node1"], settings["node2"]
    assert (node1["server"]["port"], node1["nginx"]["listen"]) == (8888, 80)
    assert (node2["server"]["port"], node2["nginx"]["listen"]) == (8899, 8080)
    assert node2["nginx"]["server_name"] == ["node2.lab"]
    assert node1["nginx"]["server_name"] != node2["nginx"]["server_name"]
    for host in (node1, node2):  # the plaintext never shows
        assert NODE1_PASSWORD not in str(host) and NODE2_PASSWORD not in str(host)
    site = lab.run("node2", ["nginx", "-T"]).stdout
    assert "listen 8080" in site and "server_name node2.lab" in site and "127.0.0.1:8899" in site


def test_each_node_logs_in_with_its_own_password(lab, fleet, jupyter_login):
    node1 = f"http://{fleet.addrs['node1']}/"
    node2 = f"http://{fleet.addrs['node2']}:8080/"
    with lab.phase("checks fleet over http"):
        for url in (node1, node2):
            lab.wait_http(url + "login")
        jupyter_login(node1, NODE1_PASSWORD)
        jupyter_login(node2, NODE2_PASSWORD)
        assert not JupyterClient(node1).login(NODE2_PASSWORD)
        assert not JupyterClient(node2).login(NODE1_PASSWORD), "node2 accepted node1's password"
