"""
Row 10: an upgrade's unavailability, on the proof deployment (issue 14).

A client polls GET /api/status through nginx every ~50 ms with a logged-in session. A
good answer is Jupyter's own 200 with the server's `started` time; nginx's 502, a
connection error, a timeout or a 403 (the session lost) are not. The unavailability of
an upgrade is the time from the last good answer of the old server (its `started`) to
the first good answer of the new one.

  subject   a `packages` change applied by the formula: a new venv built beside the
            live one, a candidate server checked, the link switched, one restart
  baseline  an in-place upgrade as the formula's previous version did it: pip install
            into the live venv, then a restart of the program

Both add the server extension jfv-good-ext of the local wheelhouse
(tests/support/wheelhouse.py: nothing is downloaded), on the same deployment, in turn;
after each, the deployment goes back to its base packages (not measured).
"""

import subprocess
import threading
import time
from dataclasses import dataclass

import proof
from support import wheelhouse
from support.jupyter_http import JupyterClient

from bench.common import Row, apply_json, interleave, median, secs

GOAL = 3.0  # seconds: the goal for the formula's upgrade
POLL = 0.05
EXTENSION = "jfv-good-ext"
REQUEST_TIMEOUT = 2.0
NEW_SERVER_TIMEOUT = 180


@dataclass
class Sample:
    sent: float
    received: float
    kind: str  # "ok", an HTTP status ("502"), or an exception name
    started: str | None = None


class Poller:
    """GET <base>api/status every POLL s on a logged-in session, in a thread."""

    def __init__(self, client):
        self.client = client
        self.samples = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="bench-poller", daemon=True)

    def _run(self):
        url = self.client.url("api/status")
        while not self._stop.is_set():
            sent = time.monotonic()
            try:
                resp = self.client.session.get(url, timeout=REQUEST_TIMEOUT)
                kind, started = str(resp.status_code), None
                if resp.status_code == 200:
                    try:
                        started = resp.json()["started"]
                        kind = "ok"
                    except (ValueError, KeyError, TypeError):
                        kind = "200 without Jupyter's status"
            except Exception as exc:  # noqa: BLE001  (a refused or reset connection is a sample too)
                kind, started = type(exc).__name__, None
            self.samples.append(Sample(sent, time.monotonic(), kind, started))
            self._stop.wait(max(0.0, POLL - (time.monotonic() - sent)))

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join(REQUEST_TIMEOUT + 5)

    def good(self):
        return [s for s in list(self.samples) if s.kind == "ok"]

    def wait_good(self, count=1, besides=None, timeout=NEW_SERVER_TIMEOUT):
        """Until `count` good answers came from a server whose `started` is not `besides`."""
        deadline = time.monotonic() + timeout
        while True:
            found = [s for s in self.good() if s.started != besides]
            if len(found) >= count:
                return found[0].started
            if time.monotonic() > deadline:
                seen = {s.kind for s in self.samples[-50:]}
                raise RuntimeError(f"no good answer from {'a new' if besides else 'the'} server within "
                                   f"{timeout} s (last answers: {sorted(seen)})")
            time.sleep(POLL)


def outage(samples, old):
    """What the poller saw of one upgrade: {"gap": seconds from the last good answer of
    the server `old` to the first good answer of the last server seen, "servers": the
    servers (`started`) seen in turn, "bad": {kind: count}, "longest": the longest time
    between two good answers}."""
    good = [s for s in samples if s.kind == "ok"]
    servers = []
    for s in good:
        if not servers or servers[-1] != s.started:
            servers.append(s.started)
    if servers[:1] != [old] or len(servers) < 2:
        raise RuntimeError(f"the poller did not see the server change (servers seen: {servers})")
    last_old = max(s.received for s in good if s.started == old)
    first_new = min(s.received for s in good if s.started == servers[-1] and s.received > last_old)
    bad = {}
    for s in samples:
        if s.kind != "ok":
            bad[s.kind] = bad.get(s.kind, 0) + 1
    longest = max((b.received - a.received for a, b in zip(good, good[1:])), default=0.0)
    # the gap in two: the old server going away (its last answer to the first answer
    # that was not good), then the new one coming up
    first_bad = min((s.received for s in samples if s.kind != "ok" and s.received > last_old), default=first_new)
    return {"gap": first_new - last_old, "going": first_bad - last_old, "coming": first_new - first_bad,
            "servers": servers, "bad": bad, "longest": longest, "polls": len(samples)}


def watched(client, action):
    """Run action() while the poller runs; returns (outage, what action returned)."""
    with Poller(client) as poller:
        old = poller.wait_good(count=3, timeout=60)
        started = time.monotonic()
        result = action()
        acted = time.monotonic() - started
        poller.wait_good(count=3, besides=old)
    found = outage(poller.samples, old)
    found["action"] = acted
    for key, (begin, end) in (result or {}).pop("windows", {}).items():
        # what the poller saw during a step of the action: {kind: count}
        seen = {}
        for sample in poller.samples:
            if begin <= sample.sent <= end:
                seen[sample.kind] = seen.get(sample.kind, 0) + 1
        found[f"during {key}"] = seen
    return found, result


class Upgrades:
    """The two ways to add EXTENSION to the proof deployment, and the way back."""

    def __init__(self, dep, password, wh):
        self.dep = dep
        self.wh = wh
        self.base = list(dep.pillar["packages"])
        self.link = dep.pillar["venv"]
        self.client = JupyterClient(dep.url())
        if not self.client.login(password):
            raise RuntimeError(f"login at {dep.url()} failed ({self.client.last_login_status})")
        self.builds = 0

    def pip(self, *args):
        """pip in the live venv (through its link), reading the wheelhouse only."""
        cmd = [f"{self.link}/bin/python", "-m", "pip", *args]
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=900, check=False)
        if proc.returncode:
            raise RuntimeError(f"{' '.join(cmd)} failed: {proc.stderr[-1500:]}")
        return proc

    def restart(self):
        """What the previous formula's watch did: restart the program, wait for its port."""
        proc = self.dep.salt_call("supervisor_rpc.restart", proof.PROGRAM, f"ready_port={proof.JUPYTER_PORT}",
                                  "timeout=120", "--out=json")
        if proc.returncode:
            raise RuntimeError(f"supervisor_rpc.restart failed: {proc.stdout[-1000:]}{proc.stderr[-1000:]}")

    def in_place(self):
        """The baseline: pip install the new package set into the live venv, restart."""
        def action():
            started = time.monotonic()
            self.pip("install", "--index-url", self.wh["index_url"], "--extra-index-url",
                     self.wh["extra_index_url"], *self.base, f"{EXTENSION}==1.0")
            pip_done = time.monotonic()
            self.restart()
            return {"pip": pip_done - started, "windows": {"pip": (started, pip_done)}}

        found, result = watched(self.client, action)
        found.update(result)
        self.pip("uninstall", "--yes", EXTENSION)  # back to the base set (not measured)
        with Poller(self.client) as poller:
            old = poller.wait_good(timeout=60)
            self.restart()
            poller.wait_good(besides=old)
        return found

    def apply(self, packages):
        self.dep.update_pillar({"packages": packages})
        elapsed, results, proc = apply_json(self.dep, "jupyter")
        bad = {r["__id__"]: r["comment"] for r in results.values() if r.get("result") is False}
        if proc.returncode or bad:
            raise RuntimeError(f"state.apply with packages {packages} failed: {bad or proc.stderr[-1500:]}")
        return elapsed, results

    def formula(self):
        """The subject: the pillar names the new set; the formula builds, checks, switches.
        A specifier of its own each time (all resolve to 1.0), so each run builds a venv."""
        self.builds += 1
        spec = f"{EXTENSION}>=1.0,!=0.{self.builds}"

        def action():
            elapsed, results = self.apply([*self.base, spec])
            comments = {r["__id__"]: r["comment"] for r in results.values() if r.get("changes")}
            built = next((c for sid, c in comments.items() if sid.startswith("jupyter-package-venv-")), "")
            if not built:
                raise RuntimeError(f"the apply built no venv (changes: {sorted(comments)})")
            return {"apply": elapsed, "built": built}

        found, result = watched(self.client, action)
        found.update(result)
        with Poller(self.client) as poller:  # back to the base set (not measured)
            old = poller.wait_good(timeout=60)
            self.apply(self.base)
            poller.wait_good(besides=old)
        return found


def describe(runs):
    """One side's runs, for the note."""
    bad = {}
    for run in runs:
        for kind, count in run["bad"].items():
            bad[kind] = bad.get(kind, 0) + count
    restarts = sorted({len(run["servers"]) - 1 for run in runs})
    gaps = ", ".join(f"{run['gap']:.2f}" for run in runs)
    going, coming = median([run["going"] for run in runs]), median([run["coming"] for run in runs])
    longest = max(run["longest"] for run in runs)
    other = f"; longest time without a good answer {longest:.2f} s" if longest > max(r["gap"] for r in runs) + 0.2 else ""
    return (f"gaps {gaps} s (old server gone after {going:.2f} s, new one answering {coming:.2f} s later){other}; "
            f"restarts seen {restarts}; "
            f"not good meanwhile: {', '.join(f'{k} x{v}' for k, v in sorted(bad.items())) or 'none'}")


def measure_upgrade_outage(dep, password, reps=3):
    wh = proof.local_wheelhouse()
    if wh["extra_index_url"] not in (dep.pillar.get("pip") or {}).get("extra_index_urls", []):
        raise RuntimeError("the proof deployment does not read the local wheelhouse")
    if not (wh["test"] / f"{wheelhouse.GOOD_EXT}-1.0-py3-none-any.whl").exists():
        raise RuntimeError(f"no {EXTENSION} 1.0 in the wheelhouse {wh['test']}")
    upgrades = Upgrades(dep, password, wh)
    base, subj = interleave(reps, upgrades.in_place, upgrades.formula)
    b, s = median([r["gap"] for r in base]), median([r["gap"] for r in subj])
    pip_s = median([r["pip"] for r in base])
    during_pip = {}
    for run in base:
        for kind, count in run["during pip"].items():
            during_pip[kind] = during_pip.get(kind, 0) + count
    apply_s = median([r["apply"] for r in subj])
    note = (f"{reps} each, polled every {POLL * 1000:.0f} ms through nginx. Formula: apply {secs(apply_s)} "
            f"(last: {subj[-1]['built']}), {describe(subj)}. In place: pip install {secs(pip_s)}, the poller's "
            f"answers meanwhile: {', '.join(f'{k} x{v}' for k, v in sorted(during_pip.items()))}; {describe(base)}")
    return [
        Row("10", "upgrade unavailability (adding a server extension): formula's build beside + switch vs "
            "in-place pip install + restart", secs(b), secs(s), s / b if b else None, None, note,
            {"baseline": [r["gap"] for r in base], "subject": [r["gap"] for r in subj],
             "baseline_runs": base, "subject_runs": subj},
            value=s, limit=GOAL)
    ]
