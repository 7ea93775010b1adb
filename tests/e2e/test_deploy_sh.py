"""
./deploy.sh as a person meets it (issue 11, item 8), on each target:

- a first deploy shows progress while it runs: each state as it finishes, long before
  the run ends (read from its stderr as it comes, conftest.py);
- a pillar file that is refused does not become the remembered pillar: the next
  ./deploy.sh without a file applies the last pillar that applied.
"""

import re

from e2e.conftest import FIRST, PILLAR
from support.deployment import first_json, merge
from support.figures import record

DONE = re.compile(r"^deploy\.sh:   done (.+) \((\d+\.\d) s\)$")


def test_first_deploy_shows_each_state_as_it_finishes(e2e):
    result, lines, took = e2e.first_deploy
    states = first_json(result.stdout)["local"]
    done = [(at, DONE.match(line)) for at, line in lines if DONE.match(line)]
    # one line per state that ran (mod_watch runs add one each)
    assert len(done) >= len(states), (len(done), len(states), [line for _, line in lines][:40])
    names = {m.group(1) for _, m in done}
    assert {ret["name"] for ret in states.values()} <= names, {ret["name"] for ret in states.values()} - names
    # as they finish, not all at the end: the first one arrived long before the run ended,
    # and the lines came at many different moments
    first_at = done[0][0]
    assert took - first_at > min(10.0, took / 2), (first_at, took)
    # the slow state (the venv build) was shown when it started, and its end as long
    # after as it took: the lines reach the terminal as they happen, not in bursts
    slowest = max(float(m.group(2)) for _, m in done)
    assert slowest > 5, slowest
    build = [(at, line.split("[", 1)[1].rstrip("]")) for at, line in lines
             if line.startswith("deploy.sh:   ... jupyter_venv.built for [")]
    assert build, "no venv build was shown"
    started, venv = build[0]
    ended, took_s = next((at, float(m.group(2))) for at, m in done if m.group(1) == venv)
    assert took_s > 5 and ended - started > 0.8 * took_s, (started, ended, took_s)
    record("e2e", f"{e2e.target.name}: first deploy {took:.0f} s, {len(done)} progress lines, "
                  f"first after {first_at:.1f} s, slowest state {slowest:.0f} s")


def test_refused_pillar_file_is_not_remembered(e2e):
    target = e2e.target
    link = f"{e2e.etc}/pillar/jupyter.sls"
    remembered = target.run(["readlink", link], check=True).stdout.strip()
    assert remembered == str(e2e.pillar_file)
    bad_file = e2e.write_pillar(merge(PILLAR, {"server": {"prot": 9000}}), path=e2e.pillar_file.with_name("e2e-bad.sls"))
    try:
        refused = e2e.deploy(pillar_file=bad_file)
        assert refused.rc != 0
        assert "jupyter:server:prot: unknown key; did you mean 'port'?" in refused.stdout + refused.stderr
        assert "this pillar file is not remembered" in refused.stderr
        assert target.run(["readlink", link], check=True).stdout.strip() == remembered
        # the next run without a file applies the last pillar that applied: nothing to change
        jupyter = e2e.jupyter_pid()
        again = e2e.deploy(pillar_file=None)
        assert again.ok, again
        assert "Succeeded:" in again.stdout and "changed=" not in again.stdout, again.stdout[-2000:]
        assert e2e.jupyter_pid() == jupyter
        assert e2e.serves(FIRST)
    finally:
        target.remove(str(bad_file))
