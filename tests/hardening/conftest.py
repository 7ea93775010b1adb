"""
Fixtures of the hardening tests: the hardening deployment (common.py) on each target.

Every test module holds the target's lock from its first test to its last (on this
host: other sessions apply the formula here too), and leaves the deployment with its
base pillar applied. On this host the deployment is removed at the end of the session
with jupyter.clean (its user too), so that the host serves only what it served before.
"""

from pathlib import Path

import pytest

from hardening.common import Hardening, base_pillar, make_certificate, new_password
from support.deployment import failed
from support.figures import Section
from support.target import HOST

HERE = Path(__file__).resolve().parent


@pytest.fixture(scope="session")
def hardening(target):
    dep = Hardening(target, base_pillar(new_password(), *make_certificate(target.address)))
    with target.lock():
        dep.clean(notebooks=True)  # leftovers of an interrupted run of these tests (never another's)
        dep.write_pillar(dep.base)
    yield dep
    if target is HOST:
        with target.lock():
            cleaned = dep.clean(user=True, notebooks=True)
        assert not failed(cleaned), failed(cleaned)


@pytest.fixture(scope="module")
def deployed(hardening):
    """The deployment with its base pillar applied, the target's lock held for the module."""
    with hardening.target.lock():
        hardening.ensure_base()
        yield hardening
        if not hardening.removed:  # test_clean.py removed it on purpose
            hardening.ensure_base()


@pytest.fixture(autouse=True)
def settled(request):
    """A test that uses the deployment starts with Jupyter past supervisor's startsecs
    (an apply returns as soon as Jupyter listens, while supervisor still says STARTING),
    and leaves it with the base pillar applied, even when it failed half way."""
    if "deployed" not in request.fixturenames:
        yield
        return
    dep = request.getfixturevalue("deployed")
    dep.wait_settled(30)
    yield
    if not dep.removed:
        dep.ensure_base()


@pytest.hookimpl(trylast=True)
def pytest_collection_modifyitems(config, items):
    # lab nodes apply a sample of the validation table (this host all of it): the rest
    # is deselected there, not skipped
    from hardening.test_pillar_validation import on_this_target  # noqa: PLC0415

    sampled_out = {item.nodeid for item in items if item.originalname == "test_bad_pillar_changes_nothing"
                   and HERE in Path(item.path).parents and not on_this_target(item)}
    if sampled_out:
        config.hook.pytest_deselected(items=[item for item in items if item.nodeid in sampled_out])
        items[:] = [item for item in items if item.nodeid not in sampled_out]
    for item in items:
        if HERE in Path(item.path).parents:
            item.add_marker(pytest.mark.e2e)
            # the site's certificate is self-signed: the clients do not verify it, on purpose
            item.add_marker(pytest.mark.filterwarnings("ignore::urllib3.exceptions.InsecureRequestWarning"))


@pytest.fixture(scope="session")
def figures():
    """Lines printed in the run's summary (tests/conftest.py): the measured figures."""
    return Section("hardening")
