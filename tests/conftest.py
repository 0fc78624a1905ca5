"""Suite-wide rules: every test runs in a scratch directory with a clean ELARIA_* environment.

Tests marked ``lmstudio`` need the real desktop app; they run only when ``ELARIA_LMSTUDIO_HOST``
is set and are otherwise reported as skipped with that reason (``-ra`` lists them).
"""

from __future__ import annotations

import os
import signal
from pathlib import Path

import pytest

LMSTUDIO_HOST = os.environ.get("ELARIA_LMSTUDIO_HOST")


def pytest_configure(config: pytest.Config) -> None:
    # Ctrl-C as a terminal delivers it. A run started in the background by a shell without job
    # control (`pytest &` in a script, as CI wrappers do) inherits SIGINT ignored, and so would
    # every process a test starts: Python leaves an ignored SIGINT ignored. The tests that press
    # Ctrl-C on a child need the default, so the run takes it back for itself, and exec gives
    # its children the default disposition.
    if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
        signal.signal(signal.SIGINT, signal.default_int_handler)


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
