"""
Rows 2 and 6: systemd-nspawn nodes of the lab (tests/jflab), under the lab's session lock.

  2  first apply on a fresh lab node vs the bare commands it wraps              <= 1.3x
  6  salt 'node*' state.apply jupyter test=True on 1, 4, 8 lab minions: time per minion
"""

import contextlib
import shlex
import time

import jflab
import proof
import yaml

from bench import REPO
from bench.common import Row, attempt, crashed_rows, interleave, median, secs

NODE_REPO = "/srv/jupyter-formula"  # where lab nodes see this repository (read-only)
PACKAGES = proof.PACKAGES  # nodes install what the proof deployment does (from the lab's proxy)


def lab_module():
    """The lab package jflab, or why it cannot be used here."""
    problems = jflab.preflight()
    if problems:
        return None, "; ".join(problems)
    return jflab, None


def node_pillar(password="bench-password-1"):
    return yaml.safe_dump({"jupyter": {"password": password, "packages": PACKAGES}})


def node_run(lab, name, cmd, timeout=1800, **kw):
    res = lab.run(name, cmd, timeout=timeout, **kw)
    if not res.ok:
        raise RuntimeError(f"{name}: {cmd if isinstance(cmd, str) else shlex.join(cmd)} failed: {res}")
    return res


FORMULA_FIRST_APPLY = f"JUPYTER_FORMULA_VENV=/opt/salt {NODE_REPO}/deploy.sh /root/jupyter-pillar.sls"

BARE_COMMANDS = "\n".join([
    "set -e",
    "export DEBIAN_FRONTEND=noninteractive",
    "apt-get update -qq",
    "apt-get install -y -qq nginx supervisor python3-venv >/dev/null",
    "python3 -m venv /opt/jupyter/venv",
    "/opt/jupyter/venv/bin/pip install -q " + " ".join(shlex.quote(p) for p in PACKAGES),
])


def fresh_node_seconds(lab, name, kind):
    """Boot a fresh node (not timed), time the formula's first apply or the bare commands."""
    lab.boot(name, binds_ro=[f"{REPO}:{NODE_REPO}"])
    try:
        if kind == "formula":
            lab.put(name, "/root/jupyter-pillar.sls", node_pillar(), mode="0600")
            cmd = FORMULA_FIRST_APPLY
        else:
            cmd = BARE_COMMANDS
        start = time.perf_counter()
        node_run(lab, name, cmd)
        elapsed = time.perf_counter() - start
        if kind == "formula":  # it did what it says: Jupyter answers behind nginx
            node_run(lab, name, "curl -fsS -o /dev/null http://127.0.0.1/login", timeout=60)
    except BaseException:
        with contextlib.suppress(Exception):  # the first error is the one to report
            lab.remove(name)
        raise
    lab.remove(name)
    return elapsed


def measure_fresh_apply(lab, reps=3):
    """Fresh nodes in turn, formula and bare alternating; the warm-up round fills the
    lab's shared apt and pip caches, so every counted round downloads the same (nothing)."""
    counter = iter(range(1000))
    base, subj = interleave(
        reps,
        lambda: fresh_node_seconds(lab, f"bench-bare{next(counter)}", "bare"),
        lambda: fresh_node_seconds(lab, f"bench-frm{next(counter)}", "formula"),
    )
    return [
        Row("2", "first apply on a fresh node vs bare apt/venv/pip commands",
            secs(median(base)), secs(median(subj)), median(subj) / median(base), 1.3,
            f"{reps} each, lab nodes, warm caches", {"baseline": base, "subject": subj})
    ]


MASTER_CONF = f"""\
auto_accept: True
file_roots:
  base:
    - {NODE_REPO}
pillar_roots:
  base:
    - /srv/pillar
"""


def fleet_up(lab, minions):
    """A master node and minion nodes (ids node1..nodeN), keys accepted, modules synced."""
    master = "bench-master"
    specs = {master: {"binds_ro": [f"{REPO}:{NODE_REPO}"]}}
    specs.update({name: {} for name in minions.values()})
    lab.boot_many(specs)
    master_ip = lab.node_ip(master)
    lab.put(master, "/etc/salt/master.d/bench.conf", MASTER_CONF)
    lab.put(master, "/srv/pillar/top.sls", "base:\n  '*':\n    - jupyter\n")
    lab.put(master, "/srv/pillar/jupyter.sls", node_pillar(), mode="0600")
    node_run(lab, master, "systemctl start salt-master.service")
    for minion_id, name in minions.items():
        # the package lists a real host has (the rootfs ships none); not timed
        node_run(lab, name, "apt-get update -qq")
        lab.put(name, "/etc/salt/minion.d/bench.conf", f"master: {master_ip}\nid: {minion_id}\n")
        node_run(lab, name, "systemctl start salt-minion.service")
    deadline = time.monotonic() + 180
    while True:
        res = lab.run(master, "/opt/salt/bin/salt -t 10 --out=json --static 'node*' test.ping")
        try:
            answered = lab.first_json(res.stdout)
        except ValueError:
            answered = {}
        if all(answered.get(mid) is True for mid in minions):
            break
        if time.monotonic() > deadline:
            raise RuntimeError(f"minions did not answer the master: {res}")
        time.sleep(2)
    node_run(lab, master, "/opt/salt/bin/salt -t 300 'node*' saltutil.sync_all")
    return master


def fleet_apply(lab, master, ids, *args):
    """salt -L IDS state.apply jupyter ARGS on the master: (seconds, {id: failed states})."""
    cmd = ["/opt/salt/bin/salt", "-t", "900", "--static", "--out=json", "-L", ",".join(ids),
           "state.apply", "jupyter", *args]
    start = time.perf_counter()
    res = lab.run(master, cmd, timeout=1800)
    elapsed = time.perf_counter() - start
    try:
        returns = lab.first_json(res.stdout)
    except ValueError as exc:
        raise RuntimeError(f"salt gave no JSON: {res}") from exc
    failures = {}
    for mid in ids:
        ret = returns.get(mid)
        if not isinstance(ret, dict):
            failures[mid] = f"did not render: {ret}"
            continue
        bad = {r["__id__"]: r["comment"] for r in ret.values() if r.get("result") is False}
        if bad:
            failures[mid] = bad
    return elapsed, failures


def fleet_test_seconds(lab, master, ids):
    elapsed, failures = fleet_apply(lab, master, ids, "test=True")
    if failures:
        raise RuntimeError(f"state.apply test=True failed: {failures}")
    return elapsed


def measure_fleet_test_apply(lab, reps=3, sizes=(1, 4, 8)):
    """test=True on deployed minions (what an admin previews before a change): the
    minions get the formula applied first, not timed."""
    minions = {f"node{i}": f"bench-min{i}" for i in range(1, max(sizes) + 1)}
    ids = list(minions)
    try:
        master = fleet_up(lab, minions)
        _, fresh_failures = fleet_apply(lab, master, ids[:1], "test=True")
        _, first_failures = fleet_apply(lab, master, ids)
        if first_failures:  # shown in the table; a second apply is what an admin would do
            _, failures = fleet_apply(lab, master, ids)
            if failures:
                raise RuntimeError(f"state.apply jupyter failed on the minions twice: {failures}")
        fleet_test_seconds(lab, master, ids)  # warm-up
        per_size = {n: [] for n in sizes}
        for i in range(reps):
            for n in (sizes if i % 2 == 0 else tuple(reversed(sizes))):
                per_size[n].append(fleet_test_seconds(lab, master, ids[:n]))
    finally:
        lab.remove(*minions.values(), "bench-master")  # minions are stopped first
    one = median(per_size[sizes[0]]) / sizes[0]
    rows = []
    for n in sizes:
        per_minion = median(per_size[n]) / n
        rows.append(Row("6", f"salt 'node*' state.apply jupyter test=True, {n} minion(s): per minion",
                        secs(one) if n != sizes[0] else "", secs(per_minion),
                        per_minion / one if n != sizes[0] else None, None,
                        f"{reps} runs, median wall {secs(median(per_size[n]))}; baseline: 1 minion",
                        {"wall": per_size[n]}))
    for mid, bad in first_failures.items():
        rows[0].note += f"; first apply failed on {mid} (passed on the second): " + "; ".join(
            f"{sid}: {str(comment).splitlines()[0][:160]}" for sid, comment in
            (bad.items() if isinstance(bad, dict) else [("render", bad)])
        )
    for bad in fresh_failures.values():  # worth knowing: a preview of a new host fails
        bad = bad if isinstance(bad, dict) else {"render": str(bad)}
        causes = {sid: comment for sid, comment in bad.items() if not comment.startswith("One or more requisite")}
        rows[0].note += "; on a fresh minion test=True fails: " + "; ".join(
            f"{sid}: {comment.splitlines()[0][:120]}" for sid, comment in causes.items()
        ) + (f" (+{len(bad) - len(causes)} requisites)" if len(bad) > len(causes) else "")
    return rows


def lab_rows(rows, reps):
    wanted = [
        (row, what, fn) for row, what, fn in (
            (2, "first apply on a fresh node vs bare commands", measure_fresh_apply),
            (6, "salt 'node*' state.apply jupyter test=True, 1/4/8 minions", measure_fleet_test_apply),
        ) if row in rows
    ]
    if not wanted:
        return []
    lab, reason = lab_module()
    if lab is None:
        return [Row(str(row), what, note=f"needs lab: {reason}", skipped=True) for row, what, _ in wanted]
    out = []
    try:
        # a lab test session tears every node down at its start and end: take turns with it
        with lab.session_lock():
            lab.build_rootfs()
            lab.ensure_proxy()
            for row, what, fn in wanted:
                out += attempt(row, what, fn, lab, reps.get(row, 3))
    except Exception as exc:  # noqa: BLE001  (the lab itself failed)
        done = {r.row for r in out}
        out += crashed_rows([(row, what) for row, what, _ in wanted if str(row) not in done] or
                            [("2,6", "the lab")], exc)
    return out
