#!/usr/bin/env python3
"""
Benchmarks of the jupyter formula: what the formula and nginx cost over the bare thing.

    .venv/bin/python bench/run.py [--only 1,3,4,5] [--reps N] [--out bench/results.md]

Every figure is a ratio against a baseline measured in the same run, baseline and
subject interleaved (ABBA order), after a warm-up that is not counted; times are
medians unless the row says otherwise. Prints a table with the machine it ran on and
writes it as markdown to bench/results.md.

  1  no-op re-apply of the formula   vs  state.apply of one test.nop state    <= 4x
  2  first apply on a fresh lab node vs  the bare commands it wraps            <= 1.3x
  3  /api/status p50 and p99 via nginx vs straight to Jupyter                  <= 1.15x
  4  websocket execute round trip via nginx vs straight                        <= 1.15x
  5  50 MB upload (contents API PUT) via nginx vs straight                     <= 1.2x
  6  salt 'node*' state.apply jupyter test=True on 1, 4, 8 lab minions: time per minion

Exit status 1 when a figure misses its target. Rows 1, 3-5 deploy the formula to this host as the "proof" deployment (ports 8083 and
8892, supervisor program jupyter-proof), holding the host lock the whole time (nobody
else applies while we measure), and remove its program and site at the end. Rows 2 and
6 boot systemd-nspawn nodes of tests/lab/lab.py. Needs root.
"""

import argparse
import base64
import contextlib
import importlib.util
import json
import os
import platform
import re
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
for sub in ("tests", "tests/browser"):
    sys.path.insert(0, str(REPO / sub))

import proof  # noqa: E402  (tests/browser/proof.py: the proof deployment)
from support.jupyter_http import JupyterClient  # noqa: E402

UPLOAD_BYTES = 50 * 1000 * 1000
NODE_REPO = "/srv/jupyter-formula"  # where lab nodes see this repository (read-only)
PACKAGES = proof.pillar("")["packages"]  # rows 2 and 6 install what the proof deployment does


# --------------------------------------------------------------------------
# Results


@dataclass
class Row:
    row: str
    what: str
    baseline: str = ""
    subject: str = ""
    ratio: float | None = None
    target: float | None = None
    note: str = ""
    samples: dict = field(default_factory=dict)

    @property
    def verdict(self):
        if self.ratio is None or self.target is None:
            return ""
        return "ok" if self.ratio <= self.target else "OVER"

    def cells(self):
        ratio = f"{self.ratio:.3f}x" if self.ratio is not None else ""
        target = f"<= {self.target:g}x" if self.target is not None else ""
        return [self.row, self.what, self.baseline, self.subject, ratio, target, self.verdict, self.note]


HEADER = ["#", "measurement", "baseline", "subject", "ratio", "target", "", "note"]


def attempt(row, what, fn, *args):
    """fn(*args) -> rows; a failure becomes a row that says why, and the run goes on."""
    try:
        return fn(*args)
    except Exception as exc:  # noqa: BLE001
        return [Row(str(row), what, note=f"failed: {type(exc).__name__}: {str(exc)[:600]}")]


# --------------------------------------------------------------------------
# Statistics and timing


def median(values):
    return statistics.median(values)


def percentile(values, pct):
    """Nearest-rank percentile."""
    ordered = sorted(values)
    rank = max(1, -(-len(ordered) * pct // 100))
    return ordered[int(rank) - 1]


def timed(fn):
    """Seconds fn() took (fn's own setup is its business)."""
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def interleave(reps, baseline, subject, warmup=1, block=1):
    """Run baseline() and subject() reps times each, in blocks of `block` calls, ABBA
    order, after warmup calls of each. Both return a duration in seconds.
    Returns (baseline times, subject times)."""
    for _ in range(warmup):
        baseline()
        subject()
    base, subj = [], []
    for i in range(-(-reps // block)):
        pair = [(base, baseline), (subj, subject)]
        if i % 2:
            pair.reverse()
        for out, fn in pair:
            out.extend(fn() for _ in range(min(block, reps - len(out))))
    return base, subj


def ms(seconds):
    return f"{seconds * 1000:.2f} ms"


def secs(seconds):
    return f"{seconds:.2f} s"


# --------------------------------------------------------------------------
# Row 1: no-op re-apply vs a state.apply of one no-op state


def salt_apply_seconds(dep, sls):
    """Wall time of `salt-call --local state.apply SLS`; fails on failed states or on
    changes (a re-apply of the formula must change nothing)."""
    start = time.perf_counter()
    proc = dep.salt_call("state.apply", sls, "--out=json", "--retcode-passthrough")
    elapsed = time.perf_counter() - start
    try:
        results = json.loads(proc.stdout)["local"]
    except (ValueError, KeyError) as exc:
        raise RuntimeError(f"state.apply {sls} gave no JSON:\n{proc.stdout[-2000:]}{proc.stderr[-2000:]}") from exc
    bad = {ret["__id__"]: ret["comment"] for ret in results.values() if ret.get("result") is False}
    changed = [ret["__id__"] for ret in results.values() if ret.get("changes")]
    if proc.returncode or bad or changed:
        raise RuntimeError(f"state.apply {sls} was not a clean no-op: failed {bad}, changed {changed}")
    return elapsed


@contextlib.contextmanager
def noop_sls_served(dep):
    """bench/noop.sls in the deployment's file roots, where deploy.sh links the formula only."""
    link = Path(dep.etc) / "file_roots" / "bench"
    link.symlink_to(REPO / "bench")
    try:
        yield
    finally:
        link.unlink()


def measure_noop_apply(dep, reps=9):
    with noop_sls_served(dep):
        base, subj = interleave(
            reps, lambda: salt_apply_seconds(dep, "bench.noop"), lambda: salt_apply_seconds(dep, "jupyter")
        )
    return [
        Row("1", "no-op re-apply: state.apply jupyter vs bench.noop (test.nop)",
            secs(median(base)), secs(median(subj)), median(subj) / median(base), 4,
            f"{reps} each", {"baseline": base, "subject": subj})
    ]


# --------------------------------------------------------------------------
# Rows 3-5: through nginx vs straight to Jupyter


def clients(dep, password):
    """(straight to Jupyter, through nginx): two logged-in clients."""
    pair = []
    for base in (proof.direct_url(), dep.url()):
        client = JupyterClient(base, verify=False)
        if not client.login(password):
            raise RuntimeError(f"login at {base} failed ({client.last_login_status})")
        pair.append(client)
    return tuple(pair)


def status_seconds(client):
    start = time.perf_counter()
    resp = client.api("GET", "status")
    elapsed = time.perf_counter() - start
    resp.raise_for_status()
    return elapsed


def measure_status_latency(direct, nginx, reps=2000):
    base, subj = interleave(reps, lambda: status_seconds(direct), lambda: status_seconds(nginx), warmup=50)
    rows = []
    for pct in (50, 99):
        b, s = percentile(base, pct), percentile(subj, pct)
        rows.append(Row("3", f"GET /api/status p{pct}: via nginx vs straight", ms(b), ms(s), s / b, 1.15,
                        f"{reps} each", {"baseline": base, "subject": subj} if pct == 50 else {}))
    return rows


def wrk_script(client, pause_ms):
    """wrk's Lua script: the session cookie (kept off wrk's command line, where any
    process list would show it) and, with pause_ms, that many ms before each request."""
    text = f"wrk.headers[\"Cookie\"] = {json.dumps(client.cookie_header())}\n"
    if pause_ms:
        text += f"function delay() return {pause_ms} end\n"
    return text


def wrk_percentiles(client, seconds, pause_ms):
    """(p50, p99) in seconds of GET /api/status from wrk on one connection, one request
    at a time, with pause_ms between requests."""
    with tempfile.NamedTemporaryFile("w", suffix=".lua") as script:  # mode 0600
        script.write(wrk_script(client, pause_ms))
        script.flush()
        out = subprocess.run(["wrk", "-t1", "-c1", f"-d{seconds}s", "--latency", "-s", script.name,
                              client.url("api/status")], capture_output=True, text=True, check=True).stdout
    if "Non-2xx" in out:
        raise RuntimeError(f"wrk got errors from {client.url('api/status')}:\n{out}")
    found = dict(re.findall(r"^\s+(50|99)%\s+(\S+)$", out, re.M))
    return wrk_seconds(found["50"]), wrk_seconds(found["99"])


def wrk_seconds(text):
    """wrk prints 394.00us, 1.07ms, 1.20s."""
    value, unit = re.fullmatch(r"([\d.]+)(us|ms|s)", text).groups()
    return float(value) * {"us": 1e-6, "ms": 1e-3, "s": 1.0}[unit]


def measure_status_latency_wrk(direct, nginx, runs=4, seconds=3):
    """Row 3 again with a C client (wrk), to separate nginx's own work from the cost of
    waking an idle process: back to back, then with a 1 ms pause before each request."""
    rows = []
    for pause_ms, how in ((0, "back to back"), (1, "1 ms pause before each request")):
        base, subj = interleave(runs, lambda: wrk_percentiles(direct, seconds, pause_ms),
                                lambda: wrk_percentiles(nginx, seconds, pause_ms), warmup=0)
        (base50, base99), (subj50, subj99) = zip(*base), zip(*subj)  # per run: (p50, p99)
        b50, s50 = median(base50), median(subj50)
        rows.append(Row("3", f"the same p50 from wrk (C client, one connection), {how}", ms(b50), ms(s50),
                        s50 / b50, None, f"{runs} x {seconds} s each; p99 {ms(median(subj99))} via nginx "
                        f"vs {ms(median(base99))}", {"baseline": list(base50), "subject": list(subj50)}))
    return rows


class KernelChannel:
    """A kernel and an open websocket to it, for repeated execute round trips."""

    def __init__(self, client):
        self.client = client
        self.kernel = client.start_kernel()
        self.conn, _ = client.open_channels(self.kernel)

    def round_trip(self, pause=0.0):
        """Seconds from sending execute_request to the reply and the idle status."""
        time.sleep(pause)
        start = time.perf_counter()
        out = self.client.execute(self.kernel, "6*7", conn=self.conn)
        elapsed = time.perf_counter() - start
        if out != "42":
            raise RuntimeError(f"execute over {self.client.base} gave {out!r}")
        return elapsed

    def close(self):
        self.conn.close()
        self.client.delete_kernel(self.kernel)


# Jupyter's websocket keeps Nagle on (tornado's default: jupyter_server never calls
# set_nodelay), so the small frames of a reply wait for the receiver's delayed ACK
# (about 40 ms) once round trips come back to back. A person pauses between two
# Shift+Enters: the paced figure is the one with the target; the back-to-back one is
# shown for what it is.
PACE = 0.2


def measure_websocket_execute(direct, nginx, reps=150, back_to_back_reps=100):
    """One kernel per side, each with its websocket open for the whole run."""
    channels = [KernelChannel(direct), KernelChannel(nginx)]
    try:
        base, subj = interleave(reps, lambda: channels[0].round_trip(PACE),
                                lambda: channels[1].round_trip(PACE), warmup=5)
        b2b_base, b2b_subj = interleave(back_to_back_reps, channels[0].round_trip, channels[1].round_trip,
                                        warmup=5, block=max(1, back_to_back_reps // 4))
    finally:
        for channel in channels:
            channel.close()
    return [
        Row("4", f"websocket execute round trip (6*7), {PACE:g} s apart: via nginx vs straight",
            ms(median(base)), ms(median(subj)), median(subj) / median(base), 1.15,
            f"{reps} each; p99 {ms(percentile(base, 99))} vs {ms(percentile(subj, 99))}",
            {"baseline": base, "subject": subj}),
        Row("4", "the same, back to back (Nagle + delayed ACK in Jupyter's websocket)",
            ms(median(b2b_base)), ms(median(b2b_subj)), median(b2b_subj) / median(b2b_base), None,
            f"{back_to_back_reps} each, in blocks; no target: see note in bench/run.py",
            {"baseline": b2b_base, "subject": b2b_subj}),
    ]


def upload_body(size):
    """The JSON body of a contents API PUT of a file of size random bytes (base64)."""
    content = base64.b64encode(os.urandom(size)).decode()
    return json.dumps({"type": "file", "format": "base64", "content": content}).encode()


def upload_seconds(client, path, body):
    start = time.perf_counter()
    resp = client.api("PUT", f"contents/{path}", data=body,
                      headers={"Content-Type": "application/json"}, timeout=300)
    elapsed = time.perf_counter() - start
    if resp.status_code not in (200, 201):
        raise RuntimeError(f"upload to {client.base} gave {resp.status_code}: {resp.text[:300]}")
    return elapsed


def measure_upload(direct, nginx, reps=7, size=UPLOAD_BYTES):
    body = upload_body(size)
    names = {id(direct): f"bench-upload-{uuid.uuid4().hex[:8]}.bin", id(nginx): f"bench-upload-{uuid.uuid4().hex[:8]}.bin"}
    try:
        base, subj = interleave(
            reps,
            lambda: upload_seconds(direct, names[id(direct)], body),
            lambda: upload_seconds(nginx, names[id(nginx)], body),
        )
    finally:
        for client in (direct, nginx):
            client.api("DELETE", f"contents/{names[id(client)]}")
    mb = size / 1e6
    return [
        Row("5", f"{mb:g} MB upload (contents API PUT): via nginx vs straight",
            f"{secs(median(base))} ({mb / median(base):.0f} MB/s)",
            f"{secs(median(subj))} ({mb / median(subj):.0f} MB/s)",
            median(subj) / median(base), 1.2, f"{reps} each; body {len(body) / 1e6:.0f} MB (base64 JSON)",
            {"baseline": base, "subject": subj})
    ]


def host_rows(rows, reps):
    """Rows 1, 3, 4, 5 against the proof deployment on this host."""
    out = []
    with proof.deployed() as (dep, password):
        if 1 in rows:
            out += attempt(1, "no-op re-apply", measure_noop_apply, dep, reps.get(1, 9))
        if rows & {3, 4, 5}:
            direct, nginx = clients(dep, password)
            for row, what, fn, args in (
                (3, "GET /api/status latency", measure_status_latency, (reps.get(3, 2000),)),
                (3, "GET /api/status latency (wrk)", measure_status_latency_wrk, ()),
                (4, "websocket execute round trip", measure_websocket_execute, (reps.get(4, 150), reps.get(4, 100))),
                (5, "50 MB upload", measure_upload, (reps.get(5, 7),)),
            ):
                if row in rows:
                    out += attempt(row, what, fn, direct, nginx, *args)
    return out


# --------------------------------------------------------------------------
# Lab rows (2 and 6): systemd-nspawn nodes from tests/lab/lab.py


def lab_module():
    """tests/lab/lab.py (loaded by path, as tests/lab/conftest.py does), or why it cannot be used."""
    path = REPO / "tests" / "lab" / "lab.py"
    try:
        lab = sys.modules.get("jflab")
        if lab is None:
            spec = importlib.util.spec_from_file_location("jflab", path)
            lab = sys.modules["jflab"] = importlib.util.module_from_spec(spec)
            spec.loader.exec_module(lab)
    except Exception as exc:  # noqa: BLE001  (the lab is someone else's work in progress)
        return None, f"{path.relative_to(REPO)} does not load: {exc!r}"
    wanted = ("preflight", "session_lock", "build_rootfs", "ensure_proxy", "boot", "boot_many", "run", "put",
              "remove", "node_ip", "first_json")
    missing = [name for name in wanted if not hasattr(lab, name)]
    if missing:
        return None, f"tests/lab/lab.py lacks {', '.join(missing)}"
    problems = lab.preflight()
    if problems:
        return None, "; ".join(problems)
    return lab, None


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
        res = lab.run(master, f"/opt/salt/bin/salt -t 10 --out=json --static 'node*' test.ping")
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
        return [Row(str(row), what, note=f"needs lab: {reason}") for row, what, _ in wanted]
    out = []
    # a lab test session tears every node down at its start and end: take turns with it
    with lab.session_lock():
        lab.build_rootfs()
        lab.ensure_proxy()
        for row, what, fn in wanted:
            out += attempt(row, what, fn, lab, reps.get(row, 3))
    return out


# --------------------------------------------------------------------------
# Report


def machine():
    cpu = "unknown"
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            cpu = line.split(":", 1)[1].strip()
            break
    mem_kb = int(re.search(r"MemTotal:\s+(\d+)", Path("/proc/meminfo").read_text()).group(1))
    versions = {}
    for name, cmd in (("nginx", ["nginx", "-v"]), ("supervisor", ["supervisord", "--version"])):
        try:
            proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
            versions[name] = (proc.stdout + proc.stderr).strip().split("/")[-1]
        except OSError:
            versions[name] = "absent"
    return {
        "nproc": os.cpu_count(),
        "memory": f"{mem_kb / 1024 / 1024:.1f} GiB",
        "cpu": cpu,
        "kernel": platform.release(),
        "os": platform.freedesktop_os_release().get("PRETTY_NAME", "") if hasattr(platform, "freedesktop_os_release") else "",
        **versions,
    }


def render_text(rows, info):
    lines = ["machine: " + ", ".join(f"{k} {v}" for k, v in info.items())]
    table = [HEADER] + [row.cells() for row in rows]
    widths = [max(len(str(r[i])) for r in table) for i in range(len(HEADER))]
    for i, r in enumerate(table):
        lines.append("  ".join(str(c).ljust(w) for c, w in zip(r, widths)).rstrip())
        if i == 0:
            lines.append("  ".join("-" * w for w in widths))
    return "\n".join(lines)


def render_markdown(rows, info, when, argv):
    out = [
        "# Benchmarks",
        "",
        f"`bench/run.py {' '.join(argv)}`".replace(" `", "`") + f", {when}. Ratios are subject / baseline, both"
        " measured in the same run, interleaved; times are medians unless the row says p99.",
        "",
        "Machine: " + ", ".join(f"{k} {v}" for k, v in info.items()) + ".",
        "",
        "| " + " | ".join(h or "verdict" for h in HEADER) + " |",
        "|" + "---|" * len(HEADER),
    ]
    for row in rows:
        out.append("| " + " | ".join(" ".join(str(c).split()).replace("|", "\\|") for c in row.cells()) + " |")
    return "\n".join(out) + "\n"


def parse_rows(text):
    rows = {int(x) for x in text.split(",") if x.strip()}
    if not rows <= set(range(1, 7)):
        raise argparse.ArgumentTypeError("rows are 1 to 6")
    return rows


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[1])
    parser.add_argument("--only", type=parse_rows, default=set(range(1, 7)), metavar="N,...",
                        help="rows to run (default: all)")
    parser.add_argument("--reps", type=int, help="repetitions per side for every row (default: per row)")
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "results.md", help="markdown output")
    parser.add_argument("--samples", type=Path, help="also write the raw samples (JSON) here")
    args = parser.parse_args(argv)
    if os.geteuid() != 0:
        parser.error("run as root: it applies the formula to this host")
    reps = {row: args.reps for row in range(1, 7)} if args.reps else {}
    info = machine()
    rows = []
    if args.only & {1, 3, 4, 5}:
        rows += host_rows(args.only, reps)
    rows += lab_rows(args.only, reps)
    rows.sort(key=lambda r: r.row)
    when = time.strftime("%Y-%m-%d %H:%M %Z")
    print(render_text(rows, info))
    args.out.write_text(render_markdown(rows, info, when, sys.argv[1:] if argv is None else argv), encoding="utf-8")
    if args.samples:
        args.samples.write_text(json.dumps([{"row": r.row, "what": r.what, **r.samples} for r in rows], indent=1))
    return 1 if any(r.verdict == "OVER" for r in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
