"""
Three Jupyter instances on one systemd host (issue 12's proof, on a bookworm lab node).

- A and B: two users under one server name (team.lab, at /a/ and /b/); A has limits.
- C: a server name of its own (solo.lab, at /).

Everything is checked from the host through nginx, with the Host header the name would
bring (a browser maps the names to the node's address with --host-resolver-rules). The
tests share the node and run in order: logins and kernels, a browser, file isolation,
A's slice, a re-apply, C removed, D added, and jupyter.clean last. Enforcement of the
limits is proven on the host (tests/e2e/test_instances_host.py): inside a node the
cgroup v1 controllers are read-only, so here the proof is that the units carry the limits.
"""

import json
import re
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
import requests
import yaml

from lab.conftest import REPO_IN_NODE
from lab.conftest import apply_in_node as apply
from support.figures import Section
from support.jupyter_http import NamedClient

pytestmark = pytest.mark.lab

NODE = "inst12"
REPO = Path(__file__).resolve().parents[2]
TEAM, SOLO = "team.lab", "solo.lab"
# strong enough for the formula's password check, and each one only its instance's
PASSWORDS = {
    "a": "Alder-Quiver-58-mosaic",
    "b": "Birch-Lantern-73-harbor",
    "c": "Cedar-Compass-41-meadow",
    "d": "Dune-Ember-29-willow",
}
PLACES = {"a": (TEAM, "/a/"), "b": (TEAM, "/b/"), "c": (SOLO, "/"), "d": (TEAM, "/d/")}
PORTS = {"a": 8901, "b": 8902, "c": 8903, "d": 8904}
LIMITS = {"memory": "1G", "cpu": 1.5, "tasks": 512}
SLICE_PROPS = {"MemoryMax": "1073741824", "MemorySwapMax": "0", "CPUQuotaPerSecUSec": "1.500000s", "TasksMax": "512"}
FIGURES = Section("instances on a systemd node")
CGROUP_LINE = r"^(?:\d+:name=systemd|0:):"  # systemd's hierarchy in /proc/PID/cgroup (hybrid or unified)


def instance(name, **extra):
    return {"user": f"j{name}", "password": PASSWORDS[name],
            "server": {"port": PORTS[name], "base_url": PLACES[name][1]}, **extra}


def pillar(*names):
    every = {
        "a": instance("a", limits=LIMITS),
        "b": instance("b"),
        "c": instance("c", nginx={"server_name": [SOLO]}),
        "d": instance("d"),
    }
    return {
        "packages": ["jupyterlab==4.6.6"],
        # the tests log in many times from one address
        "nginx": {"server_name": [TEAM], "login_rate_limit": {"rate": "300r/m", "burst": 100}},
        "instances": {name: every[name] for name in names},
    }


def programs(lab, node):
    """{program: (state, pid or None)} from supervisord."""
    out = {}
    for line in lab.run(node, ["supervisorctl", "status"]).stdout.splitlines():
        fields = line.split()
        if len(fields) >= 2:
            pid = re.search(r"\bpid (\d+),", line)
            out[fields[0]] = (fields[1], int(pid.group(1)) if pid else None)
    return out


def pids(lab, node, *names):
    """{instance: pid} of running programs (supervisord gives a STARTING one its pid too:
    an apply returns once Jupyter listens, before supervisord's startsecs)."""
    res = lab.run(node, ["supervisorctl", "pid", *[f"jupyter-{name}" for name in names]])
    found = res.stdout.split()
    assert len(found) == len(names) and all(p.isdigit() and p != "0" for p in found), res
    return dict(zip(names, map(int, found)))


def instance_changes(results, name):
    """IDs of the changed states that belong to instance NAME (their IDs end with -NAME)."""
    return [sid for sid in _changed(results) if sid.endswith(f"-{name}")]


def _changed(results):
    return sorted(ret["__id__"] for ret in results.values() if ret.get("changes"))


def login(node, name, password=None):
    host, base = PLACES[name]
    client = NamedClient(node.ip, host, base)
    assert client.login(password or PASSWORDS[name]), f"{name}: login refused ({client.last_login_status})"
    return client


def compute(client, code="6*7"):
    kernel = client.start_kernel()
    try:
        return client.execute(kernel, code)
    finally:
        client.delete_kernel(kernel)


def exists(lab, node, path):
    return lab.run(node, ["sh", "-c", 'test -e "$1" || test -L "$1"', "exists", path]).ok


@pytest.fixture(scope="module")
def node(lab):
    ip = lab.boot(NODE, binds_ro=[f"{REPO}:{REPO_IN_NODE}"])
    _, seconds = apply(lab, NODE, pillar("a", "b", "c"))
    FIGURES.append(f"first apply of 3 instances (one shared venv, pip through the lab proxy): {seconds:.1f} s")
    yield SimpleNamespace(name=NODE, ip=ip)
    lab.remove(NODE)


def test_each_logs_in_with_its_own_password_and_runs_a_kernel(lab, node):
    for name in ("a", "b", "c"):
        uid = lab.run(NODE, ["id", "-u", f"j{name}"], check=True).stdout.strip()
        client = login(node, name)
        assert compute(client, "import os; print(os.getuid(), os.getcwd(), 6*7)") == f"{uid} /srv/jupyter/{name} 42"
        for other in sorted(set(PASSWORDS) - {name, "d"}):
            host, base = PLACES[name]
            assert not NamedClient(node.ip, host, base).login(PASSWORDS[other]), f"{name} took {other}'s password"


def test_a_browser_runs_a_cell_in_each(node):
    sync_api = pytest.importorskip("playwright.sync_api")
    expect = sync_api.expect
    expect.set_options(timeout=60_000)
    args = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
            "--disable-background-networking", "--disable-component-update", "--disable-sync",
            "--no-proxy-server", f"--host-resolver-rules=MAP {TEAM} {node.ip}, MAP {SOLO} {node.ip}"]
    with sync_api.sync_playwright() as pw, tempfile.TemporaryDirectory() as profile:
        context = pw.chromium.launch_persistent_context(profile, executable_path="/usr/bin/chromium", args=args,
                                                        headless=True, viewport={"width": 1280, "height": 800})
        try:
            for name in ("a", "b", "c"):
                host, base = PLACES[name]
                url = f"http://{host}{base}"
                started = time.monotonic()
                page = context.new_page()
                page.set_default_timeout(60_000)
                page.goto(url + "login")
                page.fill("#password_input", PASSWORDS[name])
                page.click("#login_submit")
                page.wait_for_url(re.compile(r"/lab\b"))
                page.goto(url + "lab?reset")  # a launcher, not tabs of an earlier session
                with page.expect_websocket(lambda ws: "/api/kernels/" in ws.url) as kernel_ws:
                    page.locator('.jp-LauncherCard[data-category="Notebook"]').first.click()
                assert kernel_ws.value.url.startswith(f"ws://{host}{base}api/kernels/"), kernel_ws.value.url
                kernel_ws.value.wait_for_event("framereceived")  # a cell run before this is dropped
                expect(page.locator(".jp-StatusBar-TextItem[title^='Change kernel']")).to_have_text(
                    re.compile(r"\| Idle$"))
                notebook = page.locator(".jp-NotebookPanel:not(.lm-mod-hidden)")
                notebook.locator(".jp-Cell .cm-content").first.click()
                page.keyboard.type("import os; print(6*7, os.getcwd())")
                page.keyboard.press("Shift+Enter")
                expect(notebook.locator(".jp-OutputArea-output").first).to_have_text(
                    re.compile(rf"^\s*42 /srv/jupyter/{name}\s*$"))
                FIGURES.append(f"browser: {name} at {url}: login to a cell's output in "
                               f"{time.monotonic() - started:.1f} s")
                page.close()
        finally:
            context.close()


def test_a_user_cannot_read_b_notebooks(lab, node):
    b = login(node, "b")
    assert b.save_notebook("private-b.ipynb").status_code in (200, 201)
    path = "/srv/jupyter/b/private-b.ipynb"
    assert lab.run(NODE, ["runuser", "-u", "jb", "--", "cat", path]).ok  # B can
    for cmd in (["cat", path], ["ls", "/srv/jupyter/b"]):
        res = lab.run(NODE, ["runuser", "-u", "ja", "--", *cmd])
        assert not res.ok and "Permission denied" in res.stderr, res
    # and from A's Jupyter itself: a kernel runs any code as A's user
    a = login(node, "a")
    answer = compute(a, f"try:\n    open({path!r}).read()\n    print('read')\n"
                        "except PermissionError as exc:\n    print('refused', exc.errno)")
    assert answer == "refused 13"


def test_a_slice_carries_a_limits_and_holds_a_processes(lab, node):
    res = lab.run(NODE, ["systemctl", "show", "jupyter-a.slice", *[f"-p{p}" for p in SLICE_PROPS],
                         "-pFragmentPath", "-pActiveState"])
    props = dict(line.split("=", 1) for line in res.stdout.splitlines())
    assert {p: props[p] for p in SLICE_PROPS} == SLICE_PROPS, props
    assert (props["FragmentPath"], props["ActiveState"]) == ("/etc/systemd/system/jupyter-a.slice", "active")

    pid = pids(lab, NODE, "a")["a"]
    cgroup = lab.run(NODE, ["cat", f"/proc/{pid}/cgroup"], check=True).stdout
    scope = re.search(CGROUP_LINE + r"/jupyter\.slice/jupyter-a\.slice/(run-[^/\s]+\.scope)$", cgroup, re.M)
    assert scope, f"A's Jupyter (pid {pid}) is not in jupyter-a.slice:\n{cgroup}"
    unit = lab.run(NODE, ["systemctl", "show", scope.group(1), "-pSlice", "-pBindsTo"]).stdout
    assert dict(line.split("=", 1) for line in unit.splitlines()) == {
        "Slice": "jupyter-a.slice", "BindsTo": "supervisor.service"}, unit
    user = lab.run(NODE, ["ps", "-o", "user=", "-p", str(pid)]).stdout.strip()
    assert user == "ja"

    # A's kernels are in A's scope too
    a = login(node, "a")
    kernel = a.start_kernel()
    try:
        kernel_pid = a.execute(kernel, "import os; print(os.getpid())")
        kernel_cgroup = lab.run(NODE, ["cat", f"/proc/{kernel_pid}/cgroup"], check=True).stdout
        assert f"/jupyter-a.slice/{scope.group(1)}" in kernel_cgroup, kernel_cgroup
    finally:
        a.delete_kernel(kernel)

    # B has no limits: no slice of its own, it runs in supervisor.service
    assert not exists(lab, NODE, "/etc/systemd/system/jupyter-b.slice")
    b_cgroup = lab.run(NODE, ["cat", f"/proc/{pids(lab, NODE, 'b')['b']}/cgroup"], check=True).stdout
    assert re.search(CGROUP_LINE + r"/system\.slice/supervisor\.service$", b_cgroup, re.M), b_cgroup


def test_reapply_changes_nothing(lab, node):
    before = pids(lab, NODE, "a", "b", "c")
    nginx = lab.service_pids(NODE, "nginx")
    results, seconds = apply(lab, NODE, pillar("a", "b", "c"))
    FIGURES.append(f"re-apply of 3 instances (no change): {seconds:.1f} s (deploy.sh, sync included)")
    assert _changed(results) == []
    assert pids(lab, NODE, "a", "b", "c") == before
    assert lab.service_pids(NODE, "nginx") == nginx


def test_removing_c_removes_only_c(lab, node):
    c = login(node, "c")
    assert c.save_notebook("keep-c.ipynb").status_code in (200, 201)
    before = pids(lab, NODE, "a", "b")
    results, seconds = apply(lab, NODE, pillar("a", "b"))
    FIGURES.append(f"apply that removes C: {seconds:.1f} s")
    changed = _changed(results)
    assert not instance_changes(results, "a") and not instance_changes(results, "b"), changed
    assert "jupyter-removed-program-jupyter-c" in changed

    assert "jupyter-c" not in programs(lab, NODE)
    for path in ("/etc/supervisor/conf.d/jupyter-c.conf", "/etc/jupyter-server/c.json",
                 "/var/log/jupyter/jupyter-c.log", "/var/log/jupyter/jupyter-c.err.log",
                 "/etc/nginx/sites-available/jupyter-c.conf", "/etc/nginx/sites-enabled/jupyter-c.conf"):
        assert not exists(lab, NODE, path), f"{path} is left behind"
    live = lab.run(NODE, ["nginx", "-T"]).stdout
    assert SOLO not in live and f"127.0.0.1:{PORTS['c']}" not in live
    assert f":{PORTS['c']} " not in lab.run(NODE, ["ss", "-Hltn"]).stdout
    assert exists(lab, NODE, "/srv/jupyter/c/keep-c.ipynb"), "C's notebooks went with it"
    # solo.lab now falls to team.lab's server block, which has nothing at /
    resp = requests.get(f"http://{node.ip}/login", headers={"Host": SOLO}, timeout=10)
    assert resp.status_code == 404 and "password_input" not in resp.text

    assert pids(lab, NODE, "a", "b") == before
    for name in ("a", "b"):
        assert compute(login(node, name)) == "42"


def test_an_instance_added_later_restarts_no_other(lab, node):
    before = pids(lab, NODE, "a", "b")
    results, seconds = apply(lab, NODE, pillar("a", "b", "d"))
    FIGURES.append(f"apply that adds D (shared venv already built): {seconds:.1f} s")
    assert not instance_changes(results, "a") and not instance_changes(results, "b"), _changed(results)
    assert "jupyter-supervisor-program-d" in _changed(results)
    assert pids(lab, NODE, "a", "b") == before
    assert compute(login(node, "d")) == "42"
    assert not NamedClient(node.ip, TEAM, "/d/").login(PASSWORDS["a"])
    for name in ("a", "b"):
        assert compute(login(node, name)) == "42"


def test_clean_takes_every_instance_away_but_the_notebooks(lab, node):
    """jupyter.clean (with clean:user) after C was removed and D added: every instance the
    formula ever deployed here goes (programs, slices, configs, sites, venvs and their
    links, logs, the accounts it made); the notebooks stay, and the record only names
    their directories."""
    lab.put(NODE, "/root/pillar.sls", yaml.safe_dump({"jupyter": {**pillar("a", "b", "d"), "clean": {"user": True}}}),
            mode="0600")
    res = lab.run(NODE, [f"{lab.SALT_VENV}/bin/salt-call", "--config-dir=/etc/jupyter-formula", "--local",
                         "state.apply", "jupyter.clean", "--out=json"], timeout=600)
    results = lab.first_json(res.stdout)["local"]
    assert res.ok and not lab.salt_failed(results), lab.salt_failed(results) or res

    leftovers = [path for path in (
        "/etc/supervisor/conf.d/jupyter-a.conf", "/etc/supervisor/conf.d/jupyter-b.conf",
        "/etc/supervisor/conf.d/jupyter-d.conf", "/etc/systemd/system/jupyter-a.slice",
        "/etc/systemd/system/supervisor.service.d/jupyter-formula.conf", "/etc/jupyter-server",
        "/etc/nginx/sites-available/jupyter.conf", "/etc/nginx/sites-enabled/jupyter.conf",
        "/opt/jupyter", "/var/log/jupyter",
    ) if exists(lab, NODE, path)]
    # the record may stay, naming only the notebook directories (a later deploy's to reuse)
    state_dir = lab.run(NODE, "ls -A /var/lib/jupyter-formula 2>/dev/null").stdout.split()
    leftovers += [f"/var/lib/jupyter-formula/{entry}" for entry in state_dir if entry != "record.json"]
    if "record.json" in state_dir:
        record = json.loads(lab.run(NODE, ["cat", "/var/lib/jupyter-formula/record.json"], check=True).stdout)
        if set(record) - {"version", "directories"}:
            leftovers.append(f"/var/lib/jupyter-formula/record.json holding {sorted(record)}")
    leftovers += [f"/opt/jupyter/{entry}" for entry in lab.run(NODE, "ls -A /opt/jupyter 2>/dev/null").stdout.split()]
    leftovers += [f"account {user}" for user in ("ja", "jb", "jc", "jd") if lab.run(NODE, ["id", user]).ok]
    leftovers += [f"program {p}" for p in programs(lab, NODE)]
    leftovers += [f"port {port}" for port in PORTS.values() if f":{port} " in lab.run(NODE, ["ss", "-Hltn"]).stdout]
    # (`systemctl show` says LoadState=loaded of any slice name: slices need no file;
    # a slice that is gone has no fragment, is inactive and is not held by systemd)
    if lab.run(NODE, ["systemctl", "list-units", "--all", "--plain", "--no-legend", "jupyter-a.slice"]).stdout.strip():
        leftovers.append("jupyter-a.slice (still held by systemd)")
    unit = lab.run(NODE, ["systemctl", "show", "jupyter-a.slice", "-pFragmentPath", "-pActiveState"]).stdout.split()
    if "FragmentPath=" not in unit or "ActiveState=inactive" not in unit:
        leftovers.append(f"jupyter-a.slice ({' '.join(unit)})")
    details = lab.run(NODE, "ls -lA /opt/jupyter /var/lib/jupyter-formula 2>&1; "
                            "cat /var/lib/jupyter-formula/accounts.json 2>/dev/null; echo; "
                            "systemctl show jupyter-a.slice -pFragmentPath -pNeedDaemonReload").stdout
    reload = [(r["changes"], r["comment"]) for r in results.values()
              if r["__id__"] == "jupyter-clean-supervisor-systemd-reload"]
    assert leftovers == [], f"jupyter.clean left: {leftovers}\n{details}\ndaemon-reload state: {reload}"
    for notebook in ("/srv/jupyter/b/private-b.ipynb", "/srv/jupyter/c/keep-c.ipynb"):
        assert exists(lab, NODE, notebook), f"{notebook} went with the clean"
