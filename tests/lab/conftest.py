"""
Fixtures for the lab layer: real systemd hosts in systemd-nspawn (see lab.py, README.md).

The lab needs root and systemd-nspawn; where they are missing the lab tests fail
(they do not skip) unless JUPYTER_FORMULA_SKIP_LAB=1.  Whatever a session boots is
torn down at its end, failed tests included.
"""

import importlib.util
import os
import sys
from pathlib import Path

import pytest
import yaml

from support.jupyter_http import JupyterClient

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
REPO_IN_NODE = "/srv/jupyter-formula"


def _load_lab():
    # Loaded by path: with pytest's pythonpath=tests, `import lab` could find the
    # tests/lab folder as a namespace package instead.
    if "jflab" not in sys.modules:
        spec = importlib.util.spec_from_file_location("jflab", HERE / "lab.py")
        module = importlib.util.module_from_spec(spec)
        sys.modules["jflab"] = module
        spec.loader.exec_module(module)
    return sys.modules["jflab"]


LAB = _load_lab()


def pytest_configure(config):
    config.addinivalue_line("markers", "lab: boots systemd-nspawn hosts (root)")


def pytest_terminal_summary(terminalreporter):
    if LAB.PHASES:
        terminalreporter.section("lab phases")
        for line in LAB.PHASES:
            terminalreporter.write_line(line)


@pytest.fixture(scope="session")
def lab(request):
    """The lab module, with the rootfs built and the proxy up; torn down after the session."""
    if os.environ.get("JUPYTER_FORMULA_SKIP_LAB") == "1":
        pytest.skip("JUPYTER_FORMULA_SKIP_LAB=1")
    problems = LAB.preflight()
    if problems:
        pytest.fail(f"the lab cannot run here: {'; '.join(problems)} "
                    "(set JUPYTER_FORMULA_SKIP_LAB=1 to skip the lab tests)", pytrace=False)
    lock = LAB.session_lock()
    request.addfinalizer(lock.close)
    request.addfinalizer(LAB.down)  # runs first (LIFO), even when a setup below fails
    LAB.down()  # leftovers of an interrupted session
    LAB.build_rootfs()
    LAB.ensure_proxy()
    return LAB


@pytest.fixture(scope="session")
def repo_bind():
    """nspawn --bind-ro spec that puts this checkout read-only at REPO_IN_NODE."""
    return f"{REPO}:{REPO_IN_NODE}"


@pytest.fixture(scope="session")
def deploy(lab):
    """deploy(node, pillar, *args): the quick start inside a node, with the baked Salt.

    Writes {'jupyter': pillar} to /root/pillar.sls in the node, runs deploy.sh on it
    with --out=json, and returns the state results of the apply.
    """

    def deploy(node, pillar, *args, timeout=900):
        lab.put(node, "/root/pillar.sls", yaml.safe_dump({"jupyter": pillar}), mode="0600")
        with lab.phase(f"apply {node}"):
            res = lab.run(node, [f"{REPO_IN_NODE}/deploy.sh", "/root/pillar.sls", "--out=json", *args],
                          env={"JUPYTER_FORMULA_VENV": lab.SALT_VENV}, timeout=timeout)
        try:
            results = lab.first_json(res.stdout)["local"]
        except (ValueError, KeyError, TypeError):
            raise AssertionError(f"deploy.sh in {node} gave no state results: {res}") from None
        failed = lab.salt_failed(results)
        assert res.ok and not failed, f"deploy.sh in {node} failed: {failed}\n{res}"
        return results

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
