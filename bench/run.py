#!/usr/bin/env python3
"""
Benchmarks of the jupyter formula: what the formula and nginx cost over the bare thing.

    .venv/bin/python bench/run.py [--only 1,7,10] [--reps N] [--out bench/results.md]

Every figure is a ratio against a baseline measured in the same run, baseline and
subject interleaved (ABBA order) where it makes sense; times are medians unless the row
says otherwise. Prints a table with the machine it ran on and writes it as markdown to
bench/results.md.

   1  no-op re-apply of one instance  vs  state.apply of one test.nop state       <= 2x
   2  first apply on a fresh lab node vs  the bare commands it wraps               <= 1.3x
   3  /api/status p50 and p99 via nginx vs straight to Jupyter                     <= 1.15x
   4  websocket execute round trip via nginx vs straight                           <= 1.15x
   5  50 MB upload (contents API PUT) via nginx vs straight                        <= 1.2x
   6  salt 'node*' state.apply jupyter test=True on 1, 4, 8 lab minions: time per minion
   7  no-op re-apply, 8 instances vs 1                                             <= 2.5x
   8  first apply from a clean host, 8 instances (shared venv) vs 1                <= 1.6x
   9  memory of 8 idle instances vs 1 (PSS, RSS, the host's memory in use)
  10  an upgrade's unavailability through nginx: the formula's build beside +
      switch vs an in-place pip install + restart                              under 3 s

Exit status 1 when a row crashed (its note holds the traceback's last lines), when a
row asked for could not run here, or when a figure misses its target.

Rows 1, 3-5 and 10 use the "proof" deployment (tests/browser/proof.py), rows 7-9 two
deployments of instances (bench/instances.py): their own names, ports and paths, the
host lock held the whole time (nobody else applies while we measure), removed with
`jupyter.clean` at the end. pip reads a local wheelhouse (tests/support/wheelhouse.py).
Rows 2 and 6 boot systemd-nspawn nodes of the lab (tests/jflab). Needs root.
"""

import argparse
import json
import os
import platform
import re
import subprocess
import sys
import time
from pathlib import Path

if __package__ in (None, ""):  # run as a script: import bench/ as the package `bench`
    _here = str(Path(__file__).resolve().parent)
    sys.path[:] = [p for p in sys.path if os.path.abspath(p or ".") != _here]
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench import REPO, host, instances, lab, upgrade  # noqa: E402  (bench/__init__ puts tests/ on sys.path)
from bench.common import HEADER, attempt, crashed_rows, exit_status  # noqa: E402

import proof  # noqa: E402  (tests/browser/proof.py)

ROWS = range(1, 11)


def host_rows(rows, reps):
    """Rows 1, 3, 4, 5 and 10 against the proof deployment on this host."""
    wanted = [(row, what) for row, what in (
        (1, "no-op re-apply of one instance"), (3, "GET /api/status latency"), (4, "websocket execute round trip"),
        (5, "50 MB upload"), (10, "upgrade unavailability"),
    ) if row in rows]
    if not wanted:
        return []
    out = []
    try:
        with proof.deployed() as (dep, password):
            if 1 in rows:
                out += attempt(1, "no-op re-apply of one instance", host.measure_noop_apply, dep, reps.get(1, 9))
            if rows & {3, 4, 5}:
                direct, nginx = host.clients(dep, password)
                for row, what, fn, args in (
                    (3, "GET /api/status latency", host.measure_status_latency, (reps.get(3, 2000),)),
                    (3, "GET /api/status latency (wrk)", host.measure_status_latency_wrk, ()),
                    (4, "websocket execute round trip", host.measure_websocket_execute,
                     (reps.get(4, 150), reps.get(4, 100))),
                    (5, "50 MB upload", host.measure_upload, (reps.get(5, 7),)),
                ):
                    if row in rows:
                        out += attempt(row, what, fn, direct, nginx, *args)
            if 10 in rows:  # last: it restarts the server
                out += attempt(10, "upgrade unavailability", upgrade.measure_upgrade_outage, dep, password,
                               reps.get(10, 3))
    except Exception as exc:  # noqa: BLE001  (the deployment itself, or its removal, failed)
        done = {r.row for r in out}
        out += crashed_rows([(row, what) for row, what in wanted if str(row) not in done] or
                            [("1,3-5,10", "removing the proof deployment")], exc)
    return out


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
    try:
        rows = {int(x) for x in text.split(",") if x.strip()}
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"rows are numbers 1 to {ROWS[-1]}, comma-separated") from exc
    if not rows <= set(ROWS):
        raise argparse.ArgumentTypeError(f"rows are 1 to {ROWS[-1]}")
    return rows


def row_key(row):
    """Table order: by row number (a crash row of a group sorts by its first number)."""
    return int(re.match(r"\d+", row.row).group())


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[1])
    parser.add_argument("--only", type=parse_rows, default=set(ROWS), metavar="N,...",
                        help="rows to run (default: all)")
    parser.add_argument("--reps", type=int, help="repetitions per side for every row (default: per row)")
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "results.md", help="markdown output")
    parser.add_argument("--samples", type=Path, help="also write the raw samples (JSON) here")
    args = parser.parse_args(argv)
    if os.geteuid() != 0:
        parser.error("run as root: it applies the formula to this host")
    reps = {row: args.reps for row in ROWS} if args.reps else {}
    info = machine()
    rows = host_rows(args.only, reps)
    rows += instances.instance_rows(args.only, reps)
    rows += lab.lab_rows(args.only, reps)
    rows.sort(key=row_key)
    when = time.strftime("%Y-%m-%d %H:%M %Z")
    print(render_text(rows, info))
    args.out.write_text(render_markdown(rows, info, when, sys.argv[1:] if argv is None else argv), encoding="utf-8")
    if args.samples:
        args.samples.write_text(json.dumps([{"row": r.row, "what": r.what, **r.samples} for r in rows], indent=1,
                                           default=str))
    return exit_status(rows)


if __name__ == "__main__":
    sys.exit(main())
