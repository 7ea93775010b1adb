"""
Session fixtures shared by every layer (imported by tests/conftest.py):

``lab``
    The lab (tests/jflab) with its rootfs built and its proxy up, the lab session lock
    held; torn down at the end of the session, failed tests included. Where the lab
    cannot run, tests that need it fail, unless JUPYTER_FORMULA_SKIP_LAB=1.

``target``
    Where a deployment lives (support.target): parametrized over the targets of the run,
    ``JUPYTER_FORMULA_TARGETS`` (default ``host,bookworm,plain``; add ``trixie``):
    ``host`` is this machine (PID 1 not systemd), ``bookworm``/``trixie`` systemd lab
    nodes, ``plain`` a bookworm lab node whose PID 1 is not systemd (support.plainnode;
    only for tests that ask for it with ``@pytest.mark.targets(..., "plain")``). A test
    runs on ``host`` and the systemd nodes unless its ``targets`` marker says otherwise
    (``"host"``, ``"nodes"``, ``"plain"``, a suite). Each node is booted once per session
    (repository bound read-only at /srv/jupyter-formula, the test wheelhouse at the same
    path as here) and goes down with the lab.

``wheelhouse``
    support.wheelhouse.build() in a folder that nodes see too.
"""

import os
from pathlib import Path

import pytest

from support import wheelhouse as _wheelhouse
from support.target import HOST, REPO, REPO_IN_NODE, NodeTarget

SKIP_LAB = "JUPYTER_FORMULA_SKIP_LAB"
WHEELHOUSE_DIR = Path(os.environ.get("WHEELHOUSE_CACHE", "/var/cache/jupyter-formula-tests")) / "target-wheelhouse"
NODE_SUITES = {"bookworm": "12", "trixie": "13"}
_NODES = {}  # suite -> NodeTarget, booted once per session


PLAIN = "plain"  # a bookworm node without systemd


def configured_targets():
    default = f"host,bookworm,{PLAIN}"
    wanted = [t.strip() for t in os.environ.get("JUPYTER_FORMULA_TARGETS", default).split(",") if t.strip()]
    unknown = [t for t in wanted if t not in ("host", PLAIN) and t not in NODE_SUITES]
    if unknown:
        raise pytest.UsageError(f"JUPYTER_FORMULA_TARGETS: unknown target(s) {unknown}: host, bookworm, trixie, plain")
    return wanted


def target_of(item):
    """The target a collected test runs on ("host", a suite, "plain"), or None."""
    callspec = getattr(item, "callspec", None)
    return callspec.params.get("target") if callspec else None


def _allowed(kind, allowed):
    if kind in NODE_SUITES:
        return "nodes" in allowed or kind in allowed
    return kind in allowed


def generate_targets(metafunc):
    """pytest_generate_tests: parametrize `target` over the run's targets (by marker)."""
    if "target" not in metafunc.fixturenames:
        return
    marker = metafunc.definition.get_closest_marker("targets")
    allowed = set(marker.args) if marker else {"host", "nodes"}
    targets = [t for t in configured_targets() if _allowed(t, allowed)]
    if not targets and "nodes" in allowed:
        # a test for systemd nodes only, in a run without them in JUPYTER_FORMULA_TARGETS
        targets = ["bookworm"]
    if targets:
        metafunc.parametrize("target", targets, indirect=True, scope="session")
    else:  # its only targets were left out of this run on purpose
        metafunc.parametrize("target", [pytest.param("none", marks=pytest.mark.skip(
            reason="its targets are not in JUPYTER_FORMULA_TARGETS (JUPYTER_FORMULA_SKIP_TARGETS=1)"))],
            indirect=True, scope="session")


@pytest.fixture(scope="session")
def lab(request):
    """The lab module, with the rootfs built and the proxy up; torn down after the session."""
    import jflab  # noqa: PLC0415 - host-only runs need none of it

    if os.environ.get(SKIP_LAB) == "1":
        pytest.skip(f"the lab was not asked for ({SKIP_LAB}=1)")
    problems = jflab.preflight()
    if problems:
        pytest.fail(f"the lab cannot run here: {'; '.join(problems)} "
                    f"(set {SKIP_LAB}=1 to skip the lab tests)", pytrace=False)
    lock = jflab.session_lock()
    request.addfinalizer(lock.close)
    request.addfinalizer(jflab.down)  # runs first (LIFO), even when a setup below fails
    jflab.down()  # leftovers of an interrupted session
    for suite in {"bookworm"} | {t for t in configured_targets() if t in NODE_SUITES}:
        jflab.build_rootfs(suite)
    jflab.ensure_proxy()
    return jflab


@pytest.fixture(scope="session")
def target(request):
    """support.target.Target: this host, or a systemd lab node of the given suite."""
    kind = request.param
    if kind == "host":
        return HOST
    lab = request.getfixturevalue("lab")
    if kind not in _NODES or not lab.leader(_NODES[kind].name):
        WHEELHOUSE_DIR.mkdir(parents=True, exist_ok=True)
        binds = [f"{REPO}:{REPO_IN_NODE}", f"{WHEELHOUSE_DIR}:{WHEELHOUSE_DIR}"]
        if kind == PLAIN:
            from support.plainnode import PlainNodeTarget, boot_plain  # noqa: PLC0415 - needs jflab

            boot_plain("jftplain", "bookworm", binds_ro=binds)
            _NODES[kind] = PlainNodeTarget(lab, "jftplain", "bookworm")
        else:
            name = f"jft{NODE_SUITES[kind]}"
            lab.boot(name, binds_ro=binds, suite=kind)
            _NODES[kind] = NodeTarget(lab, name, kind)
    return _NODES[kind]


@pytest.fixture(scope="session")
def wheelhouse():
    """The test wheelhouse (jfv-good-ext, jfv-bad-ext, jfv-broken): its index as a file URL
    that this host and every node read at the same path."""
    WHEELHOUSE_DIR.mkdir(parents=True, exist_ok=True)
    return _wheelhouse.build(WHEELHOUSE_DIR)
