"""The public surface of the telemetry modules: every name in ``__all__`` exists, nothing else
is promised, and the package itself imports nothing heavy."""

from __future__ import annotations

import importlib
import subprocess
import sys

import pytest

MODULES = [
    "elaria.security.redact",
    "elaria.telemetry.events",
    "elaria.telemetry.ledger",
    "elaria.telemetry.ledger_observe",
    "elaria.telemetry.ledger_sqlite",
    "elaria.telemetry.log_events",
    "elaria.telemetry.logging",
    "elaria.telemetry.paths",
    "elaria.telemetry.query",
    "elaria.telemetry.writer",
]


@pytest.mark.parametrize("name", MODULES)
def test_all_names_exist(name: str) -> None:
    module = importlib.import_module(name)
    exported = list(module.__all__)
    assert len(exported) == len(set(exported))
    for attr in exported:
        assert hasattr(module, attr), f"{name}.{attr}"


def test_the_contracts_others_rely_on() -> None:
    from elaria.security import redact as reexported
    from elaria.security.redact import redact
    from elaria.telemetry import ledger, logging

    assert reexported is redact
    for attr in ("setup_logging", "run_context", "request_context", "timer", "logging_stats"):
        assert attr in logging.__all__
    for attr in ("AuditLedger", "RequestContext"):
        assert attr in ledger.__all__


def test_importing_the_package_is_cheap() -> None:
    code = "import sys, elaria.telemetry; print('loguru' in sys.modules, 'pydantic' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["False", "False"]
