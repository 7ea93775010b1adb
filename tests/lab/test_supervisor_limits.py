"""
supervisord killed hard on a systemd host, with and without limits (issues 11 and 12).

A has limits: supervisord runs it in a scope of A's slice, outside supervisor.service's
cgroup, bound to the service (BindsTo=supervisor.service). B has none: it runs inside
supervisor.service's cgroup, where the formula's drop-in (KillMode=mixed, RestartSec=5s)
makes systemd kill what the dead supervisord leaves. One SIGKILL to supervisord (as the
OOM killer would send it), then, measured from the host: A's scope stopped and A's and
B's old processes gone before supervisord comes back, supervisord back by itself, and
both serving again (login + kernel through nginx) with no apply.

A scope that outlives its supervisord anyway (emulated: the program's own command and
environment started by hand while supervisord does not run it) is healed by one apply.

Last, the slice's own life: dropping A's limits, or A itself, leaves no slice behind
(no file, and no unit that systemd still holds active).
"""

import re
import time
from pathlib import Path
from types import SimpleNamespace

import pytest

from lab.conftest import REPO_IN_NODE
from lab.conftest import apply_in_node as apply
from support.figures import Section
from support.jupyter_http import JupyterClient

pytestmark = pytest.mark.lab

NODE = "svkill12"
REPO = Path(__file__).resolve().parents[2]
PASSWORDS = {"a": "Aspen-Kestrel-62-orbit", "b": "Basalt-Heron-47-tundra"}
PORTS = {"a": 8911, "b": 8912}
PILLAR = {
    "packages": ["jupyterlab==4.6.6"],
    "nginx": {"login_rate_limit": {"rate": "600r/m", "burst": 200}},  # the probes log in often
    "instances": {
        "a": {"user": "ka", "password": PASSWORDS["a"], "server": {"port": PORTS["a"], "base_url": "/a/"},
              "limits": {"memory": "512M", "cpu": 1, "tasks": 256}},
        "b": {"user": "kb", "password": PASSWORDS["b"], "server": {"port": PORTS["b"], "base_url": "/b/"}},
    },
}
CGROUP_LINE = r"^(?:\d+:name=systemd|0:):"  # systemd's hierarchy in /proc/PID/cgroup (hybrid or unified)
HEAL_TIMEOUT = 120
FIGURES = Section("supervisord SIGKILL on a systemd node")

# Starts a program as supervisord would (its command, directory and environment, plus the
# SUPERVISOR_* variables supervisord adds, in a process group of its own) without
# supervisord knowing: what a scope that outlived its supervisord looks like. Exits once
# systemd-run has moved the process into its scope (the caller's unit may then end).
ORPHAN = r"""
import configparser, os, shlex, subprocess, sys, time
from supervisor.datatypes import dict_of_key_value_pairs
program = sys.argv[1]
conf = configparser.RawConfigParser()
conf.read(f"/etc/supervisor/conf.d/{program}.conf")
section = conf[f"program:{program}"]
env = dict_of_key_value_pairs(section["environment"])
env.update(SUPERVISOR_ENABLED="1", SUPERVISOR_SERVER_URL="unix:///var/run/supervisor.sock",
           SUPERVISOR_PROCESS_NAME=program, SUPERVISOR_GROUP_NAME=program)
proc = subprocess.Popen(shlex.split(section["command"]), cwd=section["directory"], env=env,
                        start_new_session=True, stdin=subprocess.DEVNULL,
                        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
for _ in range(100):
    with open(f"/proc/{proc.pid}/cgroup") as f:
        if ".scope" in f.read():
            break
    time.sleep(0.1)
else:
    sys.exit("the process never reached its scope")
print(proc.pid)
"""


def parse_status(text):
    """{program: (state, pid or None)} from `supervisorctl status`."""
    out = {}
    for line in text.splitlines():
        fields = line.split()
        if len(fields) >= 2 and fields[0].startswith("jupyter-"):
            pid = re.search(r"\bpid (\d+),", line)
            out[fields[0]] = (fields[1], int(pid.group(1)) if pid else None)
    return out


def running_pids(lab):
    """{instance: pid} of the running programs (supervisord gives a STARTING one its pid
    too: an apply returns once Jupyter listens, before supervisord's startsecs)."""
    res = lab.run(NODE, ["supervisorctl", "pid", *[f"jupyter-{name}" for name in PORTS]])
    found = res.stdout.split()
    assert len(found) == len(PORTS) and all(p.isdigit() and p != "0" for p in found), res
    return dict(zip(PORTS, map(int, found)))


def scope_of(lab, pid):
    """The scope unit of A's slice that process pid is in, or None."""
    cgroup = lab.run(NODE, ["cat", f"/proc/{pid}/cgroup"]).stdout
    found = re.search(CGROUP_LINE + r"/jupyter\.slice/jupyter-a\.slice/(run-[^/\s]+\.scope)$", cgroup, re.M)
    return found.group(1) if found else None


def url(node, name):
    return f"http://{node.ip}/{name}/"


def serves(node, name, timeout=60):
    """Login and a kernel computing 6*7 through nginx; False (not an exception) while it cannot."""
    client = JupyterClient(url(node, name), timeout=timeout)
    client.session.trust_env = False
    return client.serves(PASSWORDS[name], timeout=timeout)


def node_epoch(lab):
    return lab.run(NODE, ["date", "+%s.%N"], check=True).stdout.strip()


def journal(lab, since):
    return lab.run(NODE, ["journalctl", f"--since=@{since}", "-o", "short-precise", "--no-pager"]).stdout


@pytest.fixture(scope="module")
def node(lab):
    ip = lab.boot(NODE, binds_ro=[f"{REPO}:{REPO_IN_NODE}"])
    _, seconds = apply(lab, NODE, PILLAR)
    FIGURES.append(f"first apply (A with limits, B without): {seconds:.1f} s")
    node = SimpleNamespace(name=NODE, ip=ip)
    for name in PORTS:
        assert serves(node, name), f"{name} does not serve after the first apply"
    yield node
    lab.remove(NODE)


@pytest.fixture(scope="module")
def sigkill(lab, node):
    """supervisord SIGKILLed once: what followed, in seconds since the kill, seen from the host."""
    old = running_pids(lab)
    scope = scope_of(lab, old["a"])
    assert scope, "A's Jupyter is not in a scope of jupyter-a.slice"
    bound = lab.run(NODE, ["systemctl", "show", scope, "-pBindsTo", "--value"]).stdout.strip()
    assert bound == "supervisor.service", bound
    old_main = int(lab.run(NODE, ["systemctl", "show", "-pMainPID", "--value", "supervisor"]).stdout)
    since = node_epoch(lab)
    probe = (f'test -d /proc/{old["a"]} && echo a_alive; test -d /proc/{old["b"]} && echo b_alive; '
             f'echo "scope=$(systemctl is-active {scope})"; '
             'echo "unit=$(systemctl is-active supervisor)"; '
             'echo "main=$(systemctl show -pMainPID --value supervisor)"; '
             'supervisorctl status 2>/dev/null')
    seen = {}

    def mark(event, happened):
        if happened and event not in seen:
            seen[event] = round(time.monotonic() - t0, 1)

    t0 = time.monotonic()
    lab.run(NODE, ["systemctl", "kill", "-s", "KILL", "--kill-whom=main", "supervisor"], check=True)
    while time.monotonic() - t0 < HEAL_TIMEOUT and not {"a serves", "b serves"} <= set(seen):
        out = lab.run(NODE, probe).stdout
        status = parse_status(out)
        main = re.search(r"^main=(\d+)$", out, re.M)
        mark("a's old process gone", "a_alive" not in out)
        mark("b's old process gone", "b_alive" not in out)
        mark("a's scope stopped", re.search(r"^scope=(inactive|failed)$", out, re.M))
        mark("supervisord back", "unit=active" in out and main and int(main.group(1)) not in (0, old_main))
        for name in PORTS:
            state, pid = status.get(f"jupyter-{name}", (None, None))
            mark(f"{name} RUNNING again", state == "RUNNING" and pid != old[name])
            if "supervisord back" in seen and f"{name} serves" not in seen:
                mark(f"{name} serves", serves(node, name, timeout=10))
        time.sleep(0.2)
    return SimpleNamespace(old=old, scope=scope, seen=seen, journal=journal(lab, since))


def test_a_scope_stops_with_supervisord_and_a_serves_again_without_apply(lab, node, sigkill):
    seen = sigkill.seen
    FIGURES.append("after SIGKILL to supervisord, seconds: " + ", ".join(f"{k} {v}" for k, v in seen.items()))
    assert "a's scope stopped" in seen and "a's old process gone" in seen, (seen, sigkill.journal[-3000:])
    assert "supervisord back" in seen, f"supervisord did not come back by itself: {seen}"
    # BindsTo: the scope went when supervisor.service failed, before its restart
    assert seen["a's old process gone"] < seen["supervisord back"], seen
    assert re.search(rf"systemd\[1\]: Stopping {re.escape(sigkill.scope)}", sigkill.journal), sigkill.journal[-3000:]
    # the drop-in's RestartSec=5s, not Debian's 50 s
    assert 4 <= seen["supervisord back"] <= 20, seen
    assert "a serves" in seen, f"A did not serve again within {HEAL_TIMEOUT} s without an apply: {seen}"
    new = running_pids(lab)["a"]
    assert new != sigkill.old["a"]
    assert scope_of(lab, new) not in (None, sigkill.scope), "A came back outside a new scope of its slice"


def test_b_is_killed_with_supervisord_and_serves_again_without_apply(lab, node, sigkill):
    seen = sigkill.seen
    assert "b's old process gone" in seen and "supervisord back" in seen, seen
    assert seen["b's old process gone"] < seen["supervisord back"], seen
    # KillMode=mixed: systemd itself killed what supervisord left in its cgroup
    assert (f"supervisor.service: Killing process {sigkill.old['b']} (jupyter-lab) with signal SIGKILL"
            in sigkill.journal), sigkill.journal[-3000:]
    assert "b serves" in seen, f"B did not serve again within {HEAL_TIMEOUT} s without an apply: {seen}"


def test_an_apply_after_the_fault_has_nothing_to_heal(lab, node, sigkill):
    before = running_pids(lab)
    results, seconds = apply(lab, NODE, PILLAR)
    FIGURES.append(f"apply after the fault: {seconds:.1f} s, changes: {lab.salt_changed(results)}")
    assert lab.salt_changed(results) == []
    assert running_pids(lab) == before


def test_a_scope_that_outlives_supervisord_is_healed_by_one_apply(lab, node, sigkill):
    lab.run(NODE, ["supervisorctl", "stop", "jupyter-a"], check=True)
    res = lab.run(NODE, ["python3", "-", "jupyter-a"], input=ORPHAN)
    assert res.ok and res.stdout.strip().isdigit(), res
    orphan = int(res.stdout)
    assert scope_of(lab, orphan), "the orphan is not in a scope of A's slice"
    lab.wait_for("the orphan on A's port", lambda: f":{PORTS['a']} " in lab.run(NODE, ["ss", "-Hltn"]).stdout, 60)
    # what a restarted supervisord then makes of A: the port is taken, A ends FATAL
    lab.run(NODE, ["supervisorctl", "start", "jupyter-a"])
    lab.wait_for("A to be FATAL", lambda: parse_status(
        lab.run(NODE, ["supervisorctl", "status"]).stdout).get("jupyter-a", ("",))[0] == "FATAL", 60)

    results, seconds = apply(lab, NODE, PILLAR)
    FIGURES.append(f"one apply healed A's orphaned scope in {seconds:.1f} s")
    (program,) = [r for r in results.values() if r["__id__"] == "jupyter-supervisor-program-a"]
    stale = program["changes"].get("stale") or {}
    assert (stale.get("pid"), stale.get("user")) == (orphan, "ka"), program
    assert not lab.run(NODE, ["test", "-d", f"/proc/{orphan}"]).ok, "the orphan is still alive"
    new = running_pids(lab)["a"]
    assert new != orphan and scope_of(lab, new)
    assert serves(node, "a")
    assert not [sid for sid in lab.salt_changed(results) if sid.endswith("-b")]


def slice_state(lab):
    """What is left of jupyter-a.slice: its file, whether systemd holds the unit (listed),
    and systemd's idea of it. (`systemctl show` of ANY slice name says LoadState=loaded:
    slices need no file, so that the hierarchy's parents exist implicitly; what tells a
    slice that is gone is no fragment, inactive, and not held: not in list-units --all.)"""
    listed = lab.run(NODE, ["systemctl", "list-units", "--all", "--plain", "--no-legend", "jupyter-a.slice"]).stdout
    unit = lab.run(NODE, ["systemctl", "show", "jupyter-a.slice", "-pFragmentPath", "-pActiveState",
                          "-pNeedDaemonReload"]).stdout.split("\n")
    return {"file": lab.run(NODE, ["test", "-e", "/etc/systemd/system/jupyter-a.slice"]).ok,
            "listed": bool(listed.strip()), **dict(p.split("=", 1) for p in unit if "=" in p)}


GONE = {"file": False, "listed": False, "FragmentPath": "", "ActiveState": "inactive", "NeedDaemonReload": "no"}


def test_dropping_a_limits_takes_a_out_of_its_slice(lab, node):
    apply(lab, NODE, PILLAR)
    unlimited = {**PILLAR, "instances": {**PILLAR["instances"],
                                         "a": {k: v for k, v in PILLAR["instances"]["a"].items() if k != "limits"}}}
    b_before = running_pids(lab)["b"]
    results, _ = apply(lab, NODE, unlimited)
    pid = running_pids(lab)["a"]
    cgroup = lab.run(NODE, ["cat", f"/proc/{pid}/cgroup"]).stdout
    assert re.search(CGROUP_LINE + r"/system\.slice/supervisor\.service$", cgroup, re.M), cgroup
    assert serves(node, "a")
    assert running_pids(lab)["b"] == b_before
    assert slice_state(lab) == GONE, f"A's slice after its limits were dropped: {slice_state(lab)}; " \
                                     f"changed: {lab.salt_changed(results)}"


def test_removing_an_instance_with_limits_removes_its_slice(lab, node):
    apply(lab, NODE, PILLAR)
    assert slice_state(lab)["ActiveState"] == "active"
    b_before = running_pids(lab)["b"]
    results, _ = apply(lab, NODE, {**PILLAR, "instances": {"b": PILLAR["instances"]["b"]}})
    assert "jupyter-a" not in parse_status(lab.run(NODE, ["supervisorctl", "status"]).stdout)
    assert lab.run(NODE, ["supervisorctl", "pid", "jupyter-b"]).stdout.strip() == str(b_before)
    assert slice_state(lab) == GONE, f"A's slice after A was removed: {slice_state(lab)}; " \
                                     f"changed: {lab.salt_changed(results)}"
