"""
Rows 1, 3, 4, 5: the proof deployment on this host (tests/browser/proof.py).

  1  no-op re-apply of one instance  vs  state.apply of one test.nop state      <= 2x
  3  /api/status p50 and p99 via nginx vs straight to Jupyter                  <= 1.15x
  4  websocket execute round trip via nginx vs straight                        <= 1.15x
  5  50 MB upload (contents API PUT) via nginx vs straight                     <= 1.2x
"""

import base64
import contextlib
import json
import os
import re
import subprocess
import tempfile
import time
import uuid
from pathlib import Path

import proof
from support.jupyter_http import JupyterClient

from bench import REPO
from bench.common import (Row, apply_json, interleave, median, ms, noop_apply, noop_apply_seconds, percentile,
                          render_seconds, secs, state_durations)

UPLOAD_BYTES = 50 * 1000 * 1000
NOOP_TARGET = 2.0


# --------------------------------------------------------------------------
# Row 1: no-op re-apply vs a state.apply of one no-op state


@contextlib.contextmanager
def noop_sls_served(dep):
    """bench/noop.sls in the deployment's file roots, where deploy.sh links the formula only."""
    link = Path(dep.etc) / "file_roots" / "bench"
    link.unlink(missing_ok=True)  # a leftover of an interrupted run
    link.symlink_to(REPO / "bench")
    try:
        yield
    finally:
        link.unlink()


def startup_seconds(dep):
    """Wall time of `salt-call --local test.true`: Python, Salt's loader, grains; no states."""
    start = time.perf_counter()
    proc = dep.salt_call("test.true", "--out=json")
    elapsed = time.perf_counter() - start
    if proc.returncode:
        raise RuntimeError(f"salt-call test.true failed: {proc.stderr[-1000:]}")
    return elapsed


def where_the_time_goes(dep, durations, startup, baseline):
    """The note of row 1: start-up, sls render (one run at log level profile), the
    states' own durations (medians over the timed runs), the rest."""
    _, results, proc = apply_json(dep, "jupyter", "--log-level=profile")
    renders = render_seconds(proc.stderr)
    per_state = {sid: median(values) for sid, values in durations.items()}
    per_state = dict(sorted(per_state.items(), key=lambda kv: -kv[1]))
    states_s = sum(per_state.values()) / 1000
    top = ", ".join(f"{sid} {value:.0f} ms" for sid, value in list(per_state.items())[:5])
    render_s = sum(renders.values())
    top_renders = ", ".join(f"{name} {value * 1000:.0f} ms"
                            for name, value in sorted(renders.items(), key=lambda kv: -kv[1])[:4])
    return (f"salt-call start-up (test.true) {secs(startup)}; sls render {secs(render_s)} in one profiled run "
            f"({len(renders)} files: {top_renders}); {len(per_state)} states {secs(states_s)} "
            f"(medians; {top}); the one-state baseline {secs(baseline)}")


def measure_noop_apply(dep, reps=9):
    durations = {}

    def subject():
        elapsed, results = noop_apply(dep)
        for sid, value in state_durations(results).items():
            durations.setdefault(sid, []).append(value)
        return elapsed

    with noop_sls_served(dep):
        base, subj = interleave(reps, lambda: noop_apply_seconds(dep, "bench.noop"), subject)
        startup = median([startup_seconds(dep) for _ in range(5)])
        note = where_the_time_goes(dep, durations, startup, median(base))
    return [
        Row("1", "no-op re-apply of one instance: state.apply jupyter vs bench.noop (test.nop)",
            secs(median(base)), secs(median(subj)), median(subj) / median(base), NOOP_TARGET,
            f"{reps} each; {note}", {"baseline": base, "subject": subj, "startup": startup})
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
            f"{back_to_back_reps} each, in blocks; no target: see note in bench/host.py",
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
