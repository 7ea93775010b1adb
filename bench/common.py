"""
The table's rows, the statistics and the timing helpers every row uses, and what the
rows share about Salt (a timed state.apply, its per-state durations) and the host.
"""

import json
import re
import statistics
import sys
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path

CRASH_LINES = 6  # lines of a crashed row's traceback shown in its note


# --------------------------------------------------------------------------
# Results


@dataclass
class Row:
    """One line of the table. A figure is checked against `target` (a ratio: subject /
    baseline <= target) or `limit` (the subject's own value, `value` < limit, in `unit`)."""

    row: str
    what: str
    baseline: str = ""
    subject: str = ""
    ratio: float | None = None
    target: float | None = None
    note: str = ""
    samples: dict = field(default_factory=dict)
    value: float | None = None
    limit: float | None = None
    unit: str = "s"
    crashed: bool = False
    skipped: bool = False  # asked for, but this host cannot run it (the note says why)

    @property
    def verdict(self):
        if self.crashed:
            return "CRASH"
        if self.skipped:
            return "SKIPPED"
        if self.target is not None and self.ratio is not None:
            return "ok" if self.ratio <= self.target else "OVER"
        if self.limit is not None and self.value is not None:
            return "ok" if self.value < self.limit else "OVER"
        return ""

    def cells(self):
        ratio = f"{self.ratio:.3f}x" if self.ratio is not None else ""
        if self.target is not None:
            target = f"<= {self.target:g}x"
        elif self.limit is not None:
            target = f"< {self.limit:g} {self.unit}"
        else:
            target = ""
        return [self.row, self.what, self.baseline, self.subject, ratio, target, self.verdict, self.note]


HEADER = ["#", "measurement", "baseline", "subject", "ratio", "target", "", "note"]


def crash_note(exc):
    """The last lines of exc's traceback, on one line (a table cell)."""
    lines = "".join(traceback.format_exception(exc)).strip().splitlines()
    # the code lines and the exception, without Python's ^^^ markers
    lines = [line.strip() for line in lines if line.strip() and set(line.strip()) - set("^~")]
    tail = lines[-CRASH_LINES:]
    return "crashed: " + " | ".join(tail)[-900:]


def crashed_rows(wanted, exc):
    """A CRASH row for each (row, what) of wanted, the traceback's tail in its note."""
    traceback.print_exception(exc, file=sys.stderr)
    note = crash_note(exc)
    return [Row(str(row), what, note=note, crashed=True) for row, what in wanted]


def attempt(row, what, fn, *args):
    """fn(*args) -> rows. A crash becomes a CRASH row with the traceback's last lines,
    and the run goes on (a crash is not a skipped row: the run exits 1)."""
    try:
        return fn(*args)
    except Exception as exc:  # noqa: BLE001
        return crashed_rows([(row, what)], exc)


def exit_status(rows):
    """1 when a row crashed, was asked for but could not run, or a figure missed its
    target; else 0."""
    return 1 if any(r.verdict in ("OVER", "CRASH", "SKIPPED") for r in rows) else 0


# --------------------------------------------------------------------------
# Statistics and timing


def median(values):
    return statistics.median(values)


def percentile(values, pct):
    """Nearest-rank percentile."""
    ordered = sorted(values)
    rank = max(1, -(-len(ordered) * pct // 100))
    return ordered[int(rank) - 1]


def interleave(reps, baseline, subject, warmup=1, block=1):
    """Run baseline() and subject() reps times each, in blocks of `block` calls, ABBA
    order, after warmup calls of each. Both return a measurement (a duration, or
    anything the row takes apart later). Returns (baseline values, subject values)."""
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


def mib(nbytes):
    return f"{nbytes / 2**20:.0f} MiB"


# --------------------------------------------------------------------------
# Salt


def apply_json(dep, sls, *args):
    """(seconds, results) of `salt-call --local state.apply SLS` on a deployment."""
    start = time.perf_counter()
    proc = dep.salt_call("state.apply", sls, *args, "--out=json", "--retcode-passthrough")
    elapsed = time.perf_counter() - start
    try:
        results = json.loads(proc.stdout)["local"]
    except (ValueError, KeyError, TypeError) as exc:
        raise RuntimeError(f"state.apply {sls} gave no JSON:\n{proc.stdout[-2000:]}{proc.stderr[-2000:]}") from exc
    if not isinstance(results, dict):
        raise RuntimeError(f"state.apply {sls} did not run: {results}")
    return elapsed, results, proc


def noop_apply(dep, sls="jupyter"):
    """(wall time, state results) of a state.apply that must change nothing (and fail nothing)."""
    elapsed, results, proc = apply_json(dep, sls)
    bad = {ret["__id__"]: ret["comment"] for ret in results.values() if ret.get("result") is False}
    changed = [ret["__id__"] for ret in results.values() if ret.get("changes")]
    if proc.returncode or bad or changed:
        raise RuntimeError(f"state.apply {sls} on {dep.name} was not a clean no-op: failed {bad}, changed {changed}")
    return elapsed, results


def noop_apply_seconds(dep, sls="jupyter"):
    """Wall time of a state.apply that must change nothing (and fail nothing)."""
    return noop_apply(dep, sls)[0]


def state_durations(results):
    """{state id: ms} of a state run, longest first."""
    out = {ret["__id__"]: float(ret.get("duration") or 0) for ret in results.values()}
    return dict(sorted(out.items(), key=lambda kv: -kv[1]))


def render_seconds(stderr):
    """{sls template: seconds} from the PROFILE lines of `salt-call --log-level=profile`."""
    found = {}
    for path, seconds in re.findall(r"Time \(in seconds\) to render '([^']+)' using '\w+' renderer: ([\d.e-]+)",
                                    stderr):
        # salt://jupyter/x.sls is rendered from Salt's cache of the file roots
        name = re.sub(r"^.*/files/[^/]+/", "", path)
        name = re.sub(r"^.*/pillar/", "pillar/", name)
        found[name] = found.get(name, 0.0) + float(seconds)
    return found


# --------------------------------------------------------------------------
# The host


def used_memory():
    """Bytes of memory in use on the host: MemTotal - MemAvailable."""
    info = dict(re.findall(r"^(\w+):\s+(\d+) kB", Path("/proc/meminfo").read_text(), re.M))
    return (int(info["MemTotal"]) - int(info["MemAvailable"])) * 1024
