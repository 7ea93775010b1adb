"""
Shared by every layer:

- the session fixtures `lab`, `target` and `wheelhouse` (support/fixtures.py): tests that
  take `target` run on this host and on systemd lab nodes (JUPYTER_FORMULA_TARGETS);
- the figures that tests measured, and the lab's timed phases, in the run's summary;
- skips are failures unless asked for: a test skipped for a reason that does not name a
  JUPYTER_FORMULA_SKIP_<WHAT>=1 variable that is set turns the exit status non-zero,
  and the summary says which tests and why (a layer that silently does not run proves
  nothing).
"""

import os
import re
import sys

import pytest

from support.figures import FIGURES
from support.fixtures import NODE_SUITES, generate_targets, lab, target, target_of, wheelhouse  # noqa: F401 - fixtures

TARGET_ORDER = ["host", *NODE_SUITES, "plain"]

ASKED = re.compile(r"\b(JUPYTER_FORMULA_SKIP_[A-Z_]+)=1\b")
_SKIPS = {"asked": [], "unasked": []}


def pytest_configure(config):
    config.addinivalue_line("markers", "targets(*kinds): run only on these targets ('host', 'nodes', a suite)")
    config.addinivalue_line("markers", "last_on_target: run after the other tests of the same target")


def pytest_generate_tests(metafunc):
    generate_targets(metafunc)


def _target_rank(item):
    kind = target_of(item)
    return (0, 0) if kind is None else (1, TARGET_ORDER.index(kind) if kind in TARGET_ORDER else len(TARGET_ORDER))


@pytest.hookimpl(trylast=True)  # after pytest's own grouping by fixture parameters
def pytest_collection_modifyitems(items):
    """Tests on targets run after the others, grouped by target (host, then each node):
    a target's deployments are made once and removed once. Within a target the order
    stays; tests marked last_on_target (they remove a deployment) end their group."""
    def key(item):
        rank = _target_rank(item)
        if rank[0] == 0:
            return (rank,)  # not on a target: pytest's order
        return (rank, bool(item.get_closest_marker("last_on_target")), str(item.path), item.location[1])

    items.sort(key=key)


def _reason(report):
    if isinstance(report.longrepr, tuple):
        return str(report.longrepr[2]).removeprefix("Skipped: ")
    return str(report.longrepr)


def pytest_runtest_logreport(report):
    if not report.skipped or hasattr(report, "wasxfail"):
        return
    reason = _reason(report)
    found = ASKED.search(reason)
    asked = bool(found) and os.environ.get(found.group(1)) == "1"
    _SKIPS["asked" if asked else "unasked"].append((report.nodeid, reason))


@pytest.hookimpl(trylast=True)
def pytest_sessionfinish(session, exitstatus):
    if _SKIPS["unasked"] and session.exitstatus in (pytest.ExitCode.OK, pytest.ExitCode.NO_TESTS_COLLECTED):
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


def pytest_terminal_summary(terminalreporter):
    jflab = sys.modules.get("jflab")
    if jflab is not None and jflab.PHASES:
        terminalreporter.section("lab phases")
        for line in jflab.PHASES:
            terminalreporter.write_line(line)
    if FIGURES:
        terminalreporter.section("figures measured by the tests")
        for section, text in FIGURES:
            terminalreporter.write_line(f"[{section}] {text}")
    if _SKIPS["asked"]:
        terminalreporter.section("skipped as asked")
        for nodeid, reason in _SKIPS["asked"]:
            terminalreporter.write_line(f"{nodeid}: {reason}")
    if _SKIPS["unasked"]:
        terminalreporter.section("skipped WITHOUT being asked: the run fails", red=True)
        for nodeid, reason in _SKIPS["unasked"]:
            terminalreporter.write_line(f"{nodeid}: {reason}", red=True)
        terminalreporter.write_line(
            "A test that does not run proves nothing. Fix what it needs, or say that skipping is "
            "wanted (e.g. JUPYTER_FORMULA_SKIP_LAB=1 for the lab).", red=True)
