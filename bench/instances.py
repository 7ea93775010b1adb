"""
Rows 7, 8, 9: many instances on this host (issue 12), against one.

Two deployments of their own (names, ports, paths, users: never the defaults), both in
`instances` mode with one shared venv each, pip reading the local wheelhouse (nothing
downloaded; the same pip work on both sides):

  "bench1"  one instance                  nginx :8071, Jupyter :8941
  "bench8"  eight instances, a user each  nginx :8078, Jupyter :8951-8958

  7  no-op re-apply, 8 instances vs 1                                        <= 2.5x
  8  first apply (deploy.sh), 8 instances vs 1, each from a clean host:
     both deployments removed by `jupyter.clean` (venv store and accounts
     included) before each apply                                             <= 1.6x
  9  memory of the 8 idle instances (no target): the PSS and RSS of their
     Jupyter processes against the one instance's, and the host's memory in
     use after each first apply and at its peak during it

Everything runs under the host lock; both deployments are taken away at the end.
"""

import json
import re
import secrets
import threading
import time

import proof
import psutil
from support.deployment import Deployment, host_lock
from support.jupyter_http import JupyterClient

from bench.common import (Row, attempt, crashed_rows, interleave, median, mib, noop_apply, secs,
                          state_durations, used_memory)

NOOP_TARGET = 2.5
FIRST_TARGET = 1.6
SETTLE = 5  # seconds an instance is left alone before its memory counts as idle's


PLAN = {"bench1": (1, 8071, 8941), "bench8": (8, 8078, 8951)}  # tag: (instances, nginx port, first Jupyter port)


def bench_pillar(tag, wh, passwords):
    """The pillar of deployment `tag` of PLAN, one instance u<i> per password, pip
    reading the wheelhouse wh."""
    _, listen, first_port = PLAN[tag]
    return {
        "packages": list(proof.PACKAGES),
        "pip": proof.pip_options(wh),
        "root_dir": f"/srv/jupyter-{tag}",
        "venv": f"/opt/jupyter-{tag}/venv",
        "venv_store": f"/opt/jupyter-{tag}/venvs",
        "state_dir": f"/var/lib/jupyter-formula-{tag}",
        "config_file": f"/etc/jupyter-{tag}/jupyter.json",
        "supervisor": {"program": f"jupyter-{tag}", "log_dir": f"/var/log/jupyter-{tag}"},
        # every apply logs in to each instance: more logins a minute than a person makes
        "nginx": {"site": f"jupyter-{tag}", "listen": listen, "default_server": False,
                  "login_rate_limit": {"rate": "600r/m", "burst": 200}},
        "clean": {"user": True},
        "instances": {
            name: {"user": f"jf{tag}{name}", "password": password,
                   "server": {"port": first_port + i, "base_url": f"/{name}/"}}
            for i, (name, password) in enumerate(sorted(passwords.items()))
        },
    }


class Bench:
    """One deployment of PLAN (the formula's `instances` pillar)."""

    def __init__(self, tag, wh):
        count, self.listen, _ = PLAN[tag]
        self.tag = tag
        self.passwords = {f"u{i}": secrets.token_urlsafe(16) for i in range(1, count + 1)}
        self.pillar = bench_pillar(tag, wh, self.passwords)
        self.dep = Deployment(tag, self.pillar)
        self.deployed = self.dep.target.exists(f"{self.dep.etc}/minion")  # left by an interrupted run

    def programs(self):
        return [f"jupyter-{self.tag}-{name}" for name in self.passwords]

    def deploy(self):
        """deploy.sh (the quick start); returns (its wall time, {state: seconds} from its
        progress lines). Jupyter answers after it."""
        self.dep.write_pillar(self.pillar)  # a clean removed the pillar file
        start = time.perf_counter()
        proc = self.dep.deploy()
        elapsed = time.perf_counter() - start
        self.deployed = True
        if proc.returncode:
            raise RuntimeError(f"deploy.sh of {self.tag} failed (rc={proc.returncode}):\n"
                               f"{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
        self.login_all()
        return elapsed, progress_seconds(proc.stderr)

    def login_all(self):
        for name, password in self.passwords.items():
            client = JupyterClient(f"http://127.0.0.1:{self.listen}/{name}/", timeout=60)
            if not client.login(password):
                raise RuntimeError(f"{self.tag}/{name}: login refused ({client.last_login_status})")

    def clean(self):
        if self.deployed:
            self.dep.write_pillar(self.pillar)
            proof.clean(self.dep)
            self.deployed = False

    def jupyter_pids(self):
        proc = self.dep.salt_call("supervisor_rpc.status", "--out=json")
        status = json.loads(proc.stdout)["local"]
        pids = {}
        for program in self.programs():
            info = status.get(program)
            if not info or info.get("state") not in ("RUNNING", "STARTING"):
                raise RuntimeError(f"{program} is not running: {info}")
            pids[program] = info["pid"]
        return pids


def progress_seconds(stderr):
    """{state name: seconds} from deploy.sh's progress lines ("deploy.sh:   done NAME (1.2 s)")."""
    out = {}
    for name, seconds in re.findall(r"^deploy\.sh:   done (.+) \(([\d.]+) s\)$", stderr, re.M):
        out[name] = out.get(name, 0.0) + float(seconds)
    return out


def memory_of(pids):
    """(PSS, RSS) in bytes of the processes pids and everything they started."""
    pss = rss = 0
    for pid in pids:
        top = psutil.Process(pid)
        for proc in [top, *top.children(recursive=True)]:
            info = proc.memory_full_info()
            pss += info.pss
            rss += info.rss
    return pss, rss


class MemorySampler:
    """The host's memory in use, sampled every 0.1 s in a thread: its peak."""

    def __init__(self):
        self.peak = used_memory()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self):
        while not self._stop.wait(0.1):
            self.peak = max(self.peak, used_memory())

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()


class World:
    """The two deployments, and the first apply of one from a clean host."""

    def __init__(self, wh):
        self.one = Bench("bench1", wh)
        self.eight = Bench("bench8", wh)
        self.both = (self.one, self.eight)
        self.memory = None  # row 8's host memory figures, for row 9

    def first_apply(self, bench):
        """Both deployments cleaned (not timed), then bench's deploy.sh timed, the host's
        memory in use sampled throughout and once its instances are idle."""
        for other in self.both:
            other.clean()
        before = used_memory()
        with MemorySampler() as sampler:
            elapsed, states = bench.deploy()
        time.sleep(SETTLE)
        return {"seconds": elapsed, "states": states, "peak": sampler.peak - before, "idle": used_memory() - before}

    def ensure_deployed(self):
        for bench in self.both:
            if not bench.deployed:
                bench.deploy()
        for bench in self.both:  # a leftover of an earlier run may hold other passwords
            bench.login_all()

    def remove(self):
        errors = []
        for bench in self.both:
            try:
                bench.clean()
            except Exception as exc:  # noqa: BLE001  (clean the other one too)
                errors.append(f"{bench.tag}: {exc}")
        if errors:
            raise RuntimeError("removing the bench deployments failed: " + "; ".join(errors))


def measure_first_apply(world, reps=5):
    base, subj = interleave(reps, lambda: world.first_apply(world.one), lambda: world.first_apply(world.eight),
                            warmup=0)
    b, s = median([r["seconds"] for r in base]), median([r["seconds"] for r in subj])
    world.memory = {"one": base, "eight": subj}
    return [
        Row("8", "first apply (deploy.sh) from a clean host: 8 instances with a shared venv vs 1 instance",
            secs(b), secs(s), s / b, FIRST_TARGET,
            f"{reps} each; before each apply jupyter.clean of both (venv store, accounts); pip reads the local "
            f"wheelhouse; runs {', '.join(secs(r['seconds']) for r in base)} vs "
            f"{', '.join(secs(r['seconds']) for r in subj)}; where the time goes (states' own durations, "
            f"medians): {first_apply_breakdown(world.one, base)} vs {first_apply_breakdown(world.eight, subj)}",
            {"baseline": [r["seconds"] for r in base], "subject": [r["seconds"] for r in subj],
             "states_baseline": [r["states"] for r in base], "states_subject": [r["states"] for r in subj]})
    ]


# deploy.sh's progress names a state by its name: the kinds of state a first apply runs
KINDS = (("venv build", re.compile(r"^/opt/jupyter-bench\d/venvs/")),
         ("program starts", re.compile(r"^jupyter-bench\d-u\d+$")),
         ("configs with their password hashes", re.compile(r"^/etc/jupyter-bench\d/u\d+\.json$")),
         ("accounts", re.compile(r"^jfbench\d")))


def first_apply_breakdown(bench, runs):
    """The states' own time of a first apply, by kind (medians over runs)."""
    kinds = {name: [] for name, _ in KINDS}
    totals, rest = [], []
    for run in runs:
        states = run["states"]
        totals.append(sum(states.values()))
        used = 0.0
        for name, pattern in KINDS:
            value = sum(v for k, v in states.items() if pattern.search(k))
            kinds[name].append(value)
            used += value
        rest.append(totals[-1] - used)
    parts = ", ".join(f"{name} {median(values):.1f} s" for name, values in kinds.items())
    return f"{bench.tag}: states {median(totals):.1f} s ({parts}, the other states {median(rest):.1f} s)"


def measure_noop_apply(world, reps=9):
    durations = {"one": [], "eight": []}

    def timed(bench, key):
        def run():
            elapsed, results = noop_apply(bench.dep)
            durations[key].append(state_durations(results))
            return elapsed
        return run

    base, subj = interleave(reps, timed(world.one, "one"), timed(world.eight, "eight"))
    b, s = median(base), median(subj)

    def states(key):
        runs = durations[key]
        total = median([sum(run.values()) for run in runs]) / 1000
        return len(runs[0]), total

    (n1, t1), (n8, t8) = states("one"), states("eight")
    per_state = {}
    for run in durations["eight"]:
        for sid, value in run.items():
            per_state.setdefault(sid, []).append(value)
    top = sorted(((median(v), sid) for sid, v in per_state.items()), reverse=True)[:4]
    return [
        Row("7", "no-op re-apply: 8 instances vs 1 instance", secs(b), secs(s), s / b, NOOP_TARGET,
            f"{reps} each; states {n1} vs {n8}, their own durations {secs(t1)} vs {secs(t8)} (medians; "
            f"longest with 8: {', '.join(f'{sid} {value:.0f} ms' for value, sid in top)})",
            {"baseline": base, "subject": subj})
    ]


def measure_memory(world):
    """The 8 idle instances' Jupyter processes against the one instance's."""
    time.sleep(SETTLE)
    pss1, rss1 = memory_of(world.one.jupyter_pids().values())
    pss8, rss8 = memory_of(world.eight.jupyter_pids().values())
    rows = [
        Row("9", "memory of idle instances (logged in, no kernel): PSS of the Jupyter processes, 8 vs 1",
            mib(pss1), mib(pss8), pss8 / pss1, None,
            f"RSS {mib(rss1)} vs {mib(rss8)} ({mib(rss8 / 8)} per instance); PSS per instance {mib(pss8 / 8)}",
            {"baseline": [pss1, rss1], "subject": [pss8, rss8]}),
    ]
    memory = world.memory
    if memory:  # row 8 ran: the host's memory in use, from a clean host, per first apply
        one, eight = memory["one"], memory["eight"]
        idle1, idle8 = median([r["idle"] for r in one]), median([r["idle"] for r in eight])
        peak1, peak8 = median([r["peak"] for r in one]), median([r["peak"] for r in eight])
        rows.append(Row(
            "9", "host memory in use (MemTotal - MemAvailable) over the clean host, instances idle "
            f"{SETTLE} s after the first apply: 8 vs 1", mib(idle1), mib(idle8), idle8 / idle1 if idle1 > 0 else None,
            None, f"{len(eight)} applies each (medians); peak during the apply {mib(peak1)} vs {mib(peak8)} "
            "over the clean host; other sessions' work on this host moves these figures",
            {"baseline": [r["idle"] for r in one], "subject": [r["idle"] for r in eight],
             "peak_baseline": [r["peak"] for r in one], "peak_subject": [r["peak"] for r in eight]}))
    return rows


def instance_rows(rows, reps):
    """Rows 7, 8, 9 under the host lock; both deployments removed at the end."""
    wanted = [(row, what) for row, what in ((8, "first apply, 8 instances vs 1"), (7, "no-op re-apply, 8 vs 1"),
                                            (9, "memory of 8 idle instances")) if row in rows]
    if not wanted:
        return []
    out = []
    try:
        wh = proof.local_wheelhouse()
        with host_lock():
            world = World(wh)
            try:
                for bench in world.both:  # a leftover of an interrupted run: start clean
                    bench.clean()
                if 8 in rows:
                    out += attempt(8, wanted[0][1], measure_first_apply, world, reps.get(8, 5))
                if rows & {7, 9}:
                    world.ensure_deployed()
                    if 7 in rows:
                        out += attempt(7, "no-op re-apply, 8 vs 1", measure_noop_apply, world, reps.get(7, 9))
                    if 9 in rows:
                        out += attempt(9, "memory of 8 idle instances", measure_memory, world)
            finally:
                world.remove()
    except Exception as exc:  # noqa: BLE001  (the deployments themselves failed)
        done = {r.row for r in out}
        out += crashed_rows([(row, what) for row, what in wanted if str(row) not in done] or
                            [("7-9", "removing the instance deployments")], exc)
    return out
