"""The public surface SECURITY.md promises, and refusals logged as security events."""

from __future__ import annotations

from typing import Any

import pytest
from loguru import logger

import elaria.security
from elaria.errors import ElariaError, SecurityViolation
from elaria.security import check_keys


def test_the_contract_names_are_exported() -> None:
    promised = {
        "PathGuard",
        "check_keys",
        "SafeSQLite",
        "check_shell_arg",
        "check_program",
        "validate_model_id",
        "validate_ws_url",
        "redact",
    }
    assert promised <= set(elaria.security.__all__)
    for name in elaria.security.__all__:
        assert getattr(elaria.security, name) is not None


def test_a_violation_is_an_elaria_error_and_a_value_error() -> None:
    with pytest.raises(SecurityViolation) as info:
        check_keys({"__proto__": 1})
    assert isinstance(info.value, ElariaError)
    assert isinstance(info.value, ValueError)
    assert info.value.rule == "keys.prototype"


def test_each_refusal_is_logged_as_a_security_event() -> None:
    records: list[dict[str, Any]] = []
    sink = logger.add(lambda message: records.append(dict(message.record)), level="DEBUG")
    try:
        with pytest.raises(SecurityViolation):
            check_keys({"a": {"constructor": 1}})
    finally:
        logger.remove(sink)
    (record,) = [r for r in records if r["extra"].get("kind") == "security"]
    assert record["extra"]["rule"] == "keys.prototype"
    assert record["extra"]["severity"] == "high"
    assert record["extra"]["value"] == "constructor"
    assert record["level"].name == "WARNING"
    assert "keys.prototype" in record["message"]


def test_redact_is_reexported() -> None:
    from elaria.security.redact import redact

    assert elaria.security.redact is redact
