"""The Node peers these tests drive, installed by ``npm ci --prefix tests/interop``."""

from __future__ import annotations

from pathlib import Path

import pytest

from elaria.mcp.testing import node_packages_problem

INTEROP_DIR = Path(__file__).resolve().parent
NODE_PACKAGES = (
    "@modelcontextprotocol/sdk",
    "@modelcontextprotocol/server-filesystem",
    "@modelcontextprotocol/server-everything",
)


@pytest.fixture(scope="session")
def interop_dir() -> Path:
    """The Node packages' folder; the test fails (never skips) when they are not installed."""
    problem = node_packages_problem(INTEROP_DIR, NODE_PACKAGES)
    if problem is not None:
        pytest.fail(problem, pytrace=False)
    return INTEROP_DIR
