"""
The end-to-end deployment, once per target (this host, a systemd lab node): its first
deploy is the quick start with a pillar file (./deploy.sh FILE), its stderr read line by
line as it comes (test_deploy_sh.py checks the progress it shows). On this host it is
removed at the end with jupyter.clean (its user too); nodes go down with the lab.
"""

import pytest

from support.deployment import Deployment, failed, own_pillar
from support.figures import Section
from support.fixtures import target_of
from support.target import HOST

FIRST = "e2e-first-Quartz-71-lantern"
SECOND = "e2e-second-Harbor-38-violet"
LISTEN, PORT = 8181, 8921
PILLAR = own_pillar("e2e", LISTEN, PORT, FIRST, nginx={"login_rate_limit": {"rate": "300r/m", "burst": 100}})


def pytest_collection_modifyitems(items):
    for item in items:
        if "/tests/e2e/" in str(item.path):
            item.add_marker(pytest.mark.e2e)


_LIVE = {}  # this host's e2e Deployment while it is deployed


def _remove(dep):
    cleaned = dep.clean(user=True, notebooks=True)
    assert not failed(cleaned), failed(cleaned)


@pytest.hookimpl(trylast=True)  # after pytest's own teardown of the test's fixtures
def pytest_runtest_teardown(item, nextitem):
    """This host's e2e deployment goes as soon as the last e2e test on this host has run,
    not at the end of the session: the hardening faults that run next on this host kill
    its supervisord and nginx, which would leave this deployment's Jupyter orphaned (the
    next apply of the deployment would heal it; its removal cannot)."""
    if target_of(item) != "host" or "host" not in _LIVE:
        return
    if nextitem is not None and "/tests/e2e/" in str(nextitem.path) and target_of(nextitem) == "host":
        return
    _remove(_LIVE.pop("host"))


@pytest.fixture(scope="session")
def figures():
    return Section("e2e")


@pytest.fixture(scope="session")
def e2e(target, figures):
    """The e2e Deployment on target, deployed (the target's lock held throughout)."""
    with target.lock():
        dep = Deployment(target, "e2e", PILLAR)
        dep.clean(notebooks=True)  # leftovers of an interrupted run of this test (never another's)
        dep.write_pillar(PILLAR)
        result, lines, took = dep.deploy_streamed("--out=json")
        assert result.ok, f"first deploy on {target.name} failed:\n{result}"
        dep.first_deploy = (result, lines, took)
        figures.append(f"{target.name}: first ./deploy.sh FILE {took:.0f} s")
        dep.wait_for_jupyter()
        if target is HOST:
            _LIVE["host"] = dep
        try:
            yield dep
        finally:
            if target is HOST and _LIVE.pop("host", None):
                _remove(dep)


@pytest.fixture
def base(e2e):
    """The e2e deployment with its base pillar applied again after the test."""
    yield e2e
    if e2e.pillar != PILLAR:
        e2e.write_pillar(PILLAR)
        results = e2e.apply()
        assert not failed(results), failed(results)
        e2e.wait_for_jupyter()
