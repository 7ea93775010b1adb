"""
Fixtures for the lab layer: real systemd hosts in systemd-nspawn (see tests/jflab, README.md).

The lab needs root and systemd-nspawn; where they are missing the lab tests fail
(they do not skip) unless JUPYTER_FORMULA_SKIP_LAB=1.  Whatever a session boots is
torn down at its end, failed tests included (the `lab` fixture, tests/support/fixtures.py).
"""

import time
from pathlib import Path

import pytest
import yaml

import jflab
from support.jupyter_http import JupyterClient

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
REPO_IN_NODE = "/srv/jupyter-formula"


def pytest_configure(config):
    config.addinivalue_line("markers", "lab: boots systemd-nspawn hosts (root)")


# `lab` (the session fixture: rootfs, proxy, lock, teardown) is in tests/support/fixtures.py,
# shared with the layers that run on lab nodes too (tests/e2e, tests/hardening).


@pytest.fixture(scope="module", params=list(jflab.SUITES))
def suite(request):
    """Each Debian suite the lab has (bookworm, trixie): a test that takes it runs once per suite."""
    return request.param


@pytest.fixture(scope="session")
def pebble(lab):
    """Pebble (ACME test server) and its DNS on the bridge: jflab.ensure_pebble()'s dict."""
    return lab.ensure_pebble()


@pytest.fixture(scope="session")
def repo_bind():
    """nspawn --bind-ro spec that puts this checkout read-only at REPO_IN_NODE."""
    return f"{REPO}:{REPO_IN_NODE}"


def apply_in_node(lab, node, pillar, *args, timeout=900):
    """The quick start inside a node, with the baked Salt: writes {'jupyter': pillar} to
    /root/pillar.sls there, runs deploy.sh on it with --out=json, and returns (the state
    results, seconds). Fails on a failed state."""
    lab.put(node, "/root/pillar.sls", yaml.safe_dump({"jupyter": pillar}), mode="0600")
    started = time.monotonic()
    with lab.phase(f"apply {node}"):
        res = lab.run(node, [f"{REPO_IN_NODE}/deploy.sh", "/root/pillar.sls", "--out=json", *args],
                      env={"JUPYTER_FORMULA_VENV": lab.SALT_VENV}, timeout=timeout)
    seconds = time.monotonic() - started
    try:
        results = lab.first_json(res.stdout)["local"]
    except (ValueError, KeyError, TypeError):
        raise AssertionError(f"deploy.sh in {node} gave no state results: {res}") from None
    failed = lab.salt_failed(results)
    assert res.ok and not failed, f"deploy.sh in {node} failed: {failed}\n{res}"
    return results, seconds


@pytest.fixture(scope="session")
def deploy(lab):
    """deploy(node, pillar, *args): apply_in_node's state results."""

    def deploy(node, pillar, *args, timeout=900):
        return apply_in_node(lab, node, pillar, *args, timeout=timeout)[0]

    return deploy


@pytest.fixture(scope="session")
def jupyter_login():
    """jupyter_login(url, password): log in from the host, check that a kernel computes 6*7.

    Returns the logged-in JupyterClient.
    """

    def login(url, password):
        client = JupyterClient(url, timeout=60)
        assert client.login(password), f"{url} refused the password"
        kernel = client.start_kernel()
        try:
            assert client.execute(kernel, "6*7") == "42"
        finally:
            client.delete_kernel(kernel)
        return client

    return login
