"""
Fixtures of the hardening tests (issue #5): the hardening deployment (common.py).

Every test module holds support.deployment.host_lock() from its first test to its last
(other sessions apply the formula to this host too), and leaves the deployment with its
base pillar applied. At the end of the session the deployment's supervisor program and
nginx site are removed, so that the host serves only the other deployments.
"""

from pathlib import Path

import pytest

from hardening.common import (
    Hardening,
    base_pillar,
    make_certificate,
    new_password,
    remove_from_host,
    supervisor_status,
    wait_for,
)
from support.deployment import host_lock
from support.figures import Section

HERE = Path(__file__).resolve().parent


@pytest.fixture(scope="session")
def hardening():
    dep = Hardening(base_pillar(new_password(), *make_certificate()))
    yield dep
    with host_lock():
        remove_from_host(dep)


@pytest.fixture(scope="module")
def deployed(hardening):
    """The deployment with its base pillar applied, the host lock held for the module."""
    with host_lock():
        hardening.ensure_base()
        yield hardening
        hardening.ensure_base()


@pytest.fixture(autouse=True)
def settled(request):
    """A test that uses the deployment starts with Jupyter past supervisor's startsecs:
    an apply returns as soon as Jupyter listens, while supervisor still says STARTING."""
    if "deployed" in request.fixturenames:
        request.getfixturevalue("deployed")
        wait_for(lambda: supervisor_status()[0] != "STARTING", 30)


def pytest_collection_modifyitems(items):
    for item in items:
        if HERE in Path(item.path).parents:
            item.add_marker(pytest.mark.e2e)
            # the site's certificate is self-signed: the clients do not verify it, on purpose
            item.add_marker(pytest.mark.filterwarnings("ignore::urllib3.exceptions.InsecureRequestWarning"))


@pytest.fixture(scope="session")
def figures():
    """Lines printed in the run's summary (tests/conftest.py): the measured figures."""
    return Section("hardening")
