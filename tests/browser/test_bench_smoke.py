"""
bench/run.py's measurements, with tiny repetitions, against the proof deployment: they
run, return positive figures, and the table renders. (Timings are not asserted.)
"""

import importlib.util
import os
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="deploys the formula to this host: needs root")

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("bench_run", REPO / "bench" / "run.py")
    module = sys.modules["bench_run"] = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def positive(rows):
    for row in rows:
        assert row.ratio is None or row.ratio > 0, row
        for key in ("baseline", "subject"):
            samples = row.samples.get(key, [])
            assert all(value > 0 for value in samples), (row, key)
    return rows


def test_host_measurements_return_positive_figures(bench, site):
    dep, password = site
    rows = positive(bench.measure_noop_apply(dep, reps=1))
    direct, nginx = bench.clients(dep, password)
    rows += positive(bench.measure_status_latency(direct, nginx, reps=5))
    rows += positive(bench.measure_status_latency_wrk(direct, nginx, runs=1, seconds=1))
    rows += positive(bench.measure_websocket_execute(direct, nginx, reps=2, back_to_back_reps=2))
    rows += positive(bench.measure_upload(direct, nginx, reps=1, size=1_000_000))
    assert [row.row for row in rows] == ["1", "3", "3", "3", "3", "4", "4", "5"]
    table = bench.render_text(rows, bench.machine())
    markdown = bench.render_markdown(rows, bench.machine(), "now", ["--only", "1,3,4,5"])
    assert "nproc" in table and table.count("\n") == len(rows) + 2
    assert markdown.count("\n| ") == len(rows) + 1


def test_interleave_alternates_order(bench):
    calls = []
    base, subj = bench.interleave(4, lambda: calls.append("b") or 1.0, lambda: calls.append("s") or 2.0, warmup=0)
    assert calls == ["b", "s", "s", "b", "b", "s", "s", "b"]
    assert (base, subj) == ([1.0] * 4, [2.0] * 4)
    assert bench.percentile(list(range(1, 101)), 99) == 99
