"""A fleet: a salt-master node, minions node1 and node2 that get Jupyter, and other1 that does not.

The master runs in a node rather than on the host: it is the same baked Salt as the
minions, under a systemd unit as on a real server; its keys, caches and job data live
in the node's overlay and vanish with it; nothing is written on the host and no port
is opened there; and the file_roots are this checkout, bind-mounted read-only.

node1 takes the fleet's defaults (the default server of port 80, any name); node2 has its
own password, port and server name, and is not the default server of its port (Debian's
default site keeps that). The tests run in order: apply, settings, logins, routing by
name, a re-apply, the fleet view (jupyter.doctor), a password rotation on node2 and the
doctor right after it, and last a search for the plaintext passwords in the master's job
cache and on every minion.
"""

import json
import subprocess
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
import requests
import yaml

from support.figures import Section
from support.jupyter_http import NamedClient

pytestmark = pytest.mark.lab

REPO = Path(__file__).resolve().parents[2]
REPO_IN_NODE = "/srv/jupyter-formula"
MINIONS = ["node1", "node2", "other1"]
NODE1_PASSWORD = "fleet-common-password-1"
NODE2_PASSWORD = "node2-own-password-2"
NODE2_ROTATED = "node2-rotated-password-3"
NODE2_NAME = "node2.lab"
TOP = {"base": {"node*": ["jupyter"], "node2": ["node2"]}}


def node2_pillar(password):
    return {"jupyter": {"password": password, "server": {"port": 8899},
                        "nginx": {"server_name": [NODE2_NAME], "default_server": False}}}


PILLARS = {"jupyter": {"jupyter": {"password": NODE1_PASSWORD}}, "node2": node2_pillar(NODE2_PASSWORD)}
FIGURES = Section("fleet")


def master_conf(ip, repo):
    return yaml.safe_dump({
        "interface": ip,
        "auto_accept": True,
        "file_roots": {"base": [repo]},
        "file_ignore_regex": [r"/\.git($|/)", r"/\.venv($|/)", r"/__pycache__($|/)"],
        "pillar_roots": {"base": ["/srv/pillar"]},
    })


@pytest.fixture(scope="module")
def fleet(lab):
    addrs = lab.boot_many({"master": {"binds_ro": [f"{REPO}:{REPO_IN_NODE}"]}, **{m: {} for m in MINIONS}})
    with lab.phase("salt master and minions"):
        lab.put("master", "/etc/salt/master.d/lab.conf", master_conf(addrs["master"], REPO_IN_NODE))
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
        started = time.monotonic()
        fleet.apply = fleet.salt("node*", "state.apply", "jupyter", timeout=900)
        FIGURES.append(f"first apply of node1 and node2 from the master: {time.monotonic() - started:.1f} s")
    yield fleet
    lab.remove("master", *MINIONS)  # stops every salt-minion before any node goes down


def salt_cli(lab, target, *args, timeout=300):
    """salt TARGET ARGS on the master: (Result, {minion: return}).

    Not --static: with it, salt 3008 exits 0 whatever the minions' exit codes (its
    batch path drops them), and monitoring reads the exit code. Without it, each
    minion's return is a JSON document of its own."""
    res = lab.run("master", ["/opt/salt/bin/salt", target, *args, "--out=json", f"--timeout={timeout}"],
                  timeout=timeout + 60)
    returns, text, decoder = {}, res.stdout, json.JSONDecoder()
    start = text.find("{")
    while start >= 0:
        doc, end = decoder.raw_decode(text, start)
        returns.update(doc)
        start = text.find("{", end)
    if not returns:
        raise AssertionError(f"salt {target} {' '.join(args)} gave no JSON: {res}")
    return res, returns


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


def jupyter_pid(lab, minion):
    res = lab.run(minion, ["supervisorctl", "pid", "jupyter"])
    assert res.stdout.strip().isdigit() and res.stdout.strip() != "0", res
    return int(res.stdout)


def client(fleet, minion):
    """A client for the minion's Jupyter as its users reach it: node2 by its name."""
    if minion == "node2":
        return NamedClient(fleet.addrs["node2"], NODE2_NAME)
    return NamedClient(fleet.addrs[minion], fleet.addrs[minion])


def computes(fleet, minion, password):
    """Logged in with password, a kernel computes 6*7."""
    jupyter = client(fleet, minion)
    assert jupyter.login(password), f"{minion} refused its password ({jupyter.last_login_status})"
    kernel = jupyter.start_kernel()
    try:
        return jupyter.execute(kernel, "6*7") == "42"
    finally:
        jupyter.delete_kernel(kernel)


def apply_from_master(fleet):
    started = time.monotonic()
    results = fleet.salt("node*", "state.apply", "jupyter", timeout=900)
    return results, time.monotonic() - started


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
    assert (node1["server"]["port"], node1["nginx"]["listen"], node1["nginx"]["default_server"]) == (8888, 80, True)
    assert (node2["server"]["port"], node2["nginx"]["listen"], node2["nginx"]["default_server"]) == (8899, 80, False)
    assert node2["nginx"]["server_name"] == [NODE2_NAME]
    assert node1["nginx"]["server_name"] != node2["nginx"]["server_name"]
    for host in (node1, node2):  # the plaintext never shows
        assert NODE1_PASSWORD not in str(host) and NODE2_PASSWORD not in str(host)
    site = lab.run("node2", ["nginx", "-T"]).stdout
    assert f"server_name {NODE2_NAME};" in site and "127.0.0.1:8899" in site
    # not the default server: Debian's default site keeps that on node2, and only there
    assert lab.run("node2", ["test", "-e", "/etc/nginx/sites-enabled/default"]).ok
    assert not lab.run("node1", ["test", "-e", "/etc/nginx/sites-enabled/default"]).ok


def test_each_node_logs_in_with_its_own_password(lab, fleet):
    with lab.phase("checks fleet over http"):
        lab.wait_http(f"http://{fleet.addrs['node1']}/login")
        assert computes(fleet, "node1", NODE1_PASSWORD)
        assert computes(fleet, "node2", NODE2_PASSWORD)
        assert not client(fleet, "node1").login(NODE2_PASSWORD)
        assert not client(fleet, "node2").login(NODE1_PASSWORD), "node2 accepted node1's password"


def test_routing_by_name(fleet):
    ip = fleet.addrs["node2"]
    named = requests.get(f"http://{ip}/login", headers={"Host": NODE2_NAME}, timeout=10)
    assert named.status_code == 200 and 'id="password_input"' in named.text, named.text[:300]
    # an unknown name, or none: nginx's own answer (Debian's default site), never Jupyter
    for host in ("unknown.lab", ip):
        login = requests.get(f"http://{ip}/login", headers={"Host": host}, timeout=10)
        assert login.status_code == 404 and "<center>nginx" in login.text, (host, login.status_code, login.text)
        home = requests.get(f"http://{ip}/", headers={"Host": host}, timeout=10)
        assert home.status_code == 200 and "Welcome to nginx!" in home.text, (host, home.text[:300])
        api = requests.get(f"http://{ip}/api/status", headers={"Host": host}, timeout=10)
        assert api.status_code == 404 and "jupyter" not in api.text.lower(), (host, api.text[:300])


def test_reapply_from_the_master_changes_nothing(lab, fleet):
    before = {m: (jupyter_pid(lab, m), lab.service_pids(m, "nginx")) for m in ("node1", "node2")}
    results, seconds = apply_from_master(fleet)
    FIGURES.append(f"re-apply of node1 and node2 from the master (no change): {seconds:.1f} s")
    assert sorted(results) == ["node1", "node2"]
    for minion, states in results.items():
        assert isinstance(states, dict) and not lab.salt_failed(states), f"{minion}: {states}"
        assert lab.salt_changed(states) == [], f"{minion}: {lab.salt_changed(states)}"
    assert {m: (jupyter_pid(lab, m), lab.service_pids(m, "nginx")) for m in ("node1", "node2")} == before


def test_doctor_is_the_fleet_view(lab, fleet):
    fleet.salt("node*", "saltutil.sync_modules")
    res, report = salt_cli(lab, "node*", "jupyter.doctor")
    assert sorted(report) == ["node1", "node2"], res
    for minion, found in report.items():
        summary = found["summary"]
        assert summary["ok"] and summary["failed"] == 0 and summary["passed"] > 0, f"{minion}: {found}"
    assert res.rc == 0, res
    FIGURES.append("jupyter.doctor on node*: " + ", ".join(
        f"{m} {r['summary']['passed']}/{r['summary']['checks']} passed in {r['summary']['seconds']} s"
        for m, r in sorted(report.items())))

    # a node that stops serving shows, and salt's exit code says so
    lab.run("node2", ["supervisorctl", "stop", "jupyter"], check=True)
    try:
        res, report = salt_cli(lab, "node*", "jupyter.doctor")
        assert res.rc != 0, res
        assert report["node1"]["summary"]["ok"], report["node1"]
        assert not report["node2"]["summary"]["ok"], report["node2"]
        assert any(f.startswith("program ") for f in report["node2"]["summary"]["failures"]), report["node2"]
    finally:
        lab.run("node2", ["supervisorctl", "start", "jupyter"], check=True)
    assert computes(fleet, "node2", NODE2_PASSWORD)


def test_rotating_node2_password_restarts_only_node2(lab, fleet):
    node1_pid, node2_pid = jupyter_pid(lab, "node1"), jupyter_pid(lab, "node2")
    node1_nginx = lab.service_pids("node1", "nginx")
    lab.put("master", "/srv/pillar/node2.sls", yaml.safe_dump(node2_pillar(NODE2_ROTATED)), mode="0600")
    results, seconds = apply_from_master(fleet)
    FIGURES.append(f"apply from the master that rotates node2's password: {seconds:.1f} s")
    assert lab.salt_changed(results["node1"]) == [], lab.salt_changed(results["node1"])
    assert not lab.salt_failed(results["node2"]), lab.salt_failed(results["node2"])
    assert "jupyter-config-file" in lab.salt_changed(results["node2"]), lab.salt_changed(results["node2"])
    assert jupyter_pid(lab, "node1") == node1_pid and lab.service_pids("node1", "nginx") == node1_nginx
    assert jupyter_pid(lab, "node2") != node2_pid, "node2's Jupyter was not restarted"
    assert computes(fleet, "node2", NODE2_ROTATED)
    assert not client(fleet, "node2").login(NODE2_PASSWORD), "node2 still takes its old password"
    assert computes(fleet, "node1", NODE1_PASSWORD)


def doctor_verdicts(lab):
    """salt 'node*' jupyter.doctor: (exit code, {minion: summary})."""
    res, report = salt_cli(lab, "node*", "jupyter.doctor")
    return res.rc, {minion: found["summary"] for minion, found in report.items()}


def test_doctor_after_a_rotation_logs_in_with_the_new_password(lab, fleet):
    """Right after the rotating apply, as an admin would check it: the doctor logs in
    with the password pillar has now (saltutil.refresh_pillar only afterwards, to tell a
    stale in-memory pillar from a real failure)."""
    rc, summaries = doctor_verdicts(lab)
    fleet.salt("node*", "saltutil.refresh_pillar")
    rc_refreshed, refreshed = doctor_verdicts(lab)
    assert rc_refreshed == 0 and all(s["ok"] for s in refreshed.values()), refreshed
    assert rc == 0 and all(s["ok"] for s in summaries.values()), (
        f"jupyter.doctor right after the rotation: {summaries}; after saltutil.refresh_pillar: {refreshed}")


def _grep(paths, passwords, excluded=()):
    """Files under paths (on this host) holding any of the passwords; patterns on stdin."""
    cmd = ["grep", "-rlF", "-f", "-", *[f"--exclude-dir={d}" for d in excluded], "--", *paths]
    found = subprocess.run(cmd, input="\n".join(passwords) + "\n", capture_output=True, text=True, check=False)
    assert found.returncode in (0, 1), found.stderr  # 1: nothing found
    return found.stdout.split()


def _grep_in_node(lab, node, paths, passwords):
    """The same inside a node, for what its overlay does not hold (tmpfs: /run, /tmp, /dev/shm)."""
    res = lab.run(node, ["sh", "-c", 'grep -rlF -f - -- "$@"; test $? -le 1', "grep", *paths],
                  input="\n".join(passwords) + "\n")
    assert res.ok, res
    return res.stdout.split()


def test_no_plaintext_password_in_the_job_cache_or_on_any_minion(lab, fleet):
    passwords = [NODE1_PASSWORD, NODE2_PASSWORD, NODE2_ROTATED]
    # the master's job cache: every job of this module, the state runs included
    jobs = "/var/cache/salt/master/jobs"
    listed = lab.run("master", ["find", jobs, "-type", "f"]).stdout.split()
    assert len(listed) > 20, f"the job cache is nearly empty: {listed}"
    assert _grep_in_node(lab, "master", [jobs], ["jupyter-supervisor-program"]), "no state return in the job cache"
    assert _grep_in_node(lab, "master", [jobs], passwords) == []
    # what else on the master holds them, besides the pillar this test wrote (reported)
    upper = lab.node_dir("master") / "upper"
    elsewhere = [p for p in _grep([str(upper)], passwords) if not p.startswith(f"{upper}/srv/pillar/")]
    FIGURES.append(f"plaintext on the master outside /srv/pillar: "
                   f"{[p[len(str(upper)):] for p in elsewhere] or 'none'}")

    for minion in MINIONS:
        upper = lab.node_dir(minion) / "upper"
        if minion != "other1":  # the search reads what the formula wrote: the hash is there
            assert _grep([str(upper / "etc/jupyter-server")], ["argon2:$argon2id$"]), minion
        assert _grep([str(upper)], passwords) == [], f"{minion}: plaintext on disk"
        assert _grep_in_node(lab, minion, ["/run", "/tmp", "/dev/shm"], passwords) == [], f"{minion}: in a tmpfs"
