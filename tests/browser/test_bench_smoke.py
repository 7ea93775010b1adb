"""
A quick smoke check of bench/ (about a minute, most of it the proof deployment's first
apply): the host rows' measurements run with tiny repetitions against the proof
deployment and return positive figures; row 10's poller sees a real restart through
nginx as one change of server; the instance deployments (rows 7-9) use names, ports and
paths of their own; a crashed row and a missed target make the run exit 1.
Timings are not asserted.
"""

import os
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="deploys the formula to this host: needs root")

REPO = Path(__file__).resolve().parents[2]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from bench import common, host, instances, run, upgrade  # noqa: E402

import proof  # noqa: E402
from support.deployment import shared_names  # noqa: E402


def positive(rows):
    for row in rows:
        assert row.verdict != "CRASH", row.note
        assert row.ratio is None or row.ratio > 0, row
        for key in ("baseline", "subject"):
            samples = row.samples.get(key, [])
            assert all(value > 0 for value in samples), (row, key)
    return rows


def test_host_measurements_return_positive_figures(site):
    dep, password = site
    rows = positive(host.measure_noop_apply(dep, reps=1))
    assert "salt-call start-up" in rows[0].note and "states" in rows[0].note
    direct, nginx = host.clients(dep, password)
    rows += positive(host.measure_status_latency(direct, nginx, reps=5))
    rows += positive(host.measure_status_latency_wrk(direct, nginx, runs=1, seconds=1))
    rows += positive(host.measure_websocket_execute(direct, nginx, reps=2, back_to_back_reps=2))
    rows += positive(host.measure_upload(direct, nginx, reps=1, size=1_000_000))
    assert [row.row for row in rows] == ["1", "3", "3", "3", "3", "4", "4", "5"]
    table = run.render_text(rows, run.machine())
    markdown = run.render_markdown(rows, run.machine(), "now", ["--only", "1,3,4,5"])
    assert "nproc" in table and table.count("\n") == len(rows) + 2
    assert markdown.count("\n| ") == len(rows) + 1


def test_the_poller_sees_a_restart_as_one_change_of_server(site):
    dep, password = site
    upgrades = upgrade.Upgrades(dep, password, wh=None)  # a restart only: no pip
    found, _ = upgrade.watched(upgrades.client, upgrades.restart)
    assert len(found["servers"]) == 2, found
    assert 0 < found["gap"] <= found["longest"] + 1e-9
    assert found["going"] + found["coming"] == pytest.approx(found["gap"])
    assert upgrades.client.api("GET", "status").status_code == 200  # the session outlived the restart


def sample(at, kind="ok", started=None):
    return upgrade.Sample(at, at + 0.01, kind, started)


def test_outage_is_last_answer_of_the_old_server_to_first_of_the_new():
    samples = ([sample(t / 20, started="old") for t in range(20)]
               + [sample(1.0 + t / 20, "502") for t in range(30)]
               + [sample(2.5, "ConnectionError"), sample(2.6, started="new"), sample(2.65, started="new")])
    found = upgrade.outage(samples, "old")
    assert found["gap"] == pytest.approx(2.6 - 0.95)
    assert found["going"] == pytest.approx(1.0 - 0.95)
    assert found["bad"] == {"502": 30, "ConnectionError": 1}
    assert found["servers"] == ["old", "new"]
    with pytest.raises(RuntimeError, match="did not see the server change"):
        upgrade.outage(samples[:25], "old")


def test_instance_deployments_share_no_name_with_a_real_deployment_or_each_other():
    wh = {"index_url": "file:///nowhere/simple/", "extra_index_url": "file:///nowhere/test/simple/"}
    ports = [proof.NGINX_PORT, proof.JUPYTER_PORT]
    for tag, (count, _, _) in instances.PLAN.items():
        pillar = instances.bench_pillar(tag, wh, {f"u{i}": "x" for i in range(1, count + 1)})
        assert shared_names(pillar) == [], tag
        assert pillar["clean"] == {"user": True}  # the accounts it makes go at the end
        assert len(pillar["instances"]) == count
        ports += [pillar["nginx"]["listen"], *(i["server"]["port"] for i in pillar["instances"].values())]
    assert len(ports) == len(set(ports)) == 13
    assert not shared_names(proof.pillar("x")) and proof.pillar("x")["clean"] == {"user": True}


def test_first_apply_time_is_taken_apart_from_deploy_sh_progress():
    stderr = "\n".join([
        "deploy.sh: applying the formula (each state as it runs; the summary follows)",
        "deploy.sh:   ... jupyter_venv.built for [jupyter-package-venv-daf15e82196a]",
        "deploy.sh:   done /opt/jupyter-bench8/venvs/daf15e82196a (17.2 s)",
        "deploy.sh:   done jupyter-bench8-u1 (1.5 s)",
        "deploy.sh:   done jupyter-bench8-u2 (1.6 s)",
        "deploy.sh:   done /etc/jupyter-bench8/u1.json (0.1 s)",
        "deploy.sh:   done nginx (0.3 s)",
    ])
    states = instances.progress_seconds(stderr)
    assert states["jupyter-bench8-u2"] == 1.6 and len(states) == 5
    bench = type("B", (), {"tag": "bench8"})()
    text = instances.first_apply_breakdown(bench, [{"states": states}])
    assert text == ("bench8: states 20.7 s (venv build 17.2 s, program starts 3.1 s, configs with their password "
                    "hashes 0.1 s, accounts 0.0 s, the other states 0.3 s)")


def test_memory_of_a_process_tree():
    pss, rss = instances.memory_of([os.getpid()])
    assert 0 < pss <= rss


def test_a_crashed_row_and_a_missed_target_make_the_run_exit_1(monkeypatch, tmp_path):
    def boom():
        raise ValueError("a row that cannot measure")

    crashed = common.attempt(7, "no-op re-apply, 8 vs 1", boom)
    assert [(r.row, r.verdict) for r in crashed] == [("7", "CRASH")]
    assert "ValueError: a row that cannot measure" in crashed[0].note
    ok = common.Row("1", "fine", ratio=1.5, target=2.0)
    over = common.Row("10", "slow", value=3.5, limit=3.0)
    assert (ok.verdict, over.verdict) == ("ok", "OVER")
    for rows, status in (([ok], 0), ([ok, *crashed], 1), ([ok, over], 1),
                         ([ok, common.Row("2", "lab", skipped=True)], 1)):
        monkeypatch.setattr(run, "host_rows", lambda only, reps, rows=rows: list(rows))
        monkeypatch.setattr(run.instances, "instance_rows", lambda only, reps: [])
        monkeypatch.setattr(run.lab, "lab_rows", lambda only, reps: [])
        out = tmp_path / "results.md"
        assert run.main(["--only", "1", "--out", str(out)]) == status
        assert out.read_text().count("\n| ") == len(rows) + 1


def test_interleave_alternates_order():
    calls = []
    base, subj = common.interleave(4, lambda: calls.append("b") or 1.0, lambda: calls.append("s") or 2.0, warmup=0)
    assert calls == ["b", "s", "s", "b", "b", "s", "s", "b"]
    assert (base, subj) == ([1.0] * 4, [2.0] * 4)
    assert common.percentile(list(range(1, 101)), 99) == 99
