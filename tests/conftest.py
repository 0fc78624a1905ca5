"""Suite-wide rules: every test runs in a scratch directory with a clean ELARIA_* environment.

Tests marked ``lmstudio`` need the real desktop app; they run only when ``ELARIA_LMSTUDIO_HOST``
is set and are otherwise reported as skipped with that reason (``-ra`` lists them).
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

LMSTUDIO_HOST = os.environ.get("ELARIA_LMSTUDIO_HOST")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if LMSTUDIO_HOST:
        return
    skip = pytest.mark.skip(reason="needs a real LM Studio: set ELARIA_LMSTUDIO_HOST=host:port")
    for item in items:
        if item.get_closest_marker("lmstudio") is not None:
            item.add_marker(skip)


@pytest.fixture(autouse=True)
def _isolated(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """No test reads the developer's elaria.toml or ELARIA_* variables, or writes into the repo."""
    for key in list(os.environ):
        if key.startswith("ELARIA_") and key != "ELARIA_LMSTUDIO_HOST":
            monkeypatch.delenv(key)
    monkeypatch.chdir(tmp_path)
