"""The proof deployment (tests/browser/proof.py) for the browser and bench smoke tests."""

import pytest

import proof


@pytest.fixture(scope="module")
def site():
    """(Deployment, password), host lock held for the module; program and site removed after."""
    with proof.deployed() as (dep, password):
        yield dep, password
