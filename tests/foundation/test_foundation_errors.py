"""The error tree: one root, the two audiences, structured fields, builtin mix-ins."""

from __future__ import annotations

import inspect

import pytest

import elaria.errors as errors
from elaria.errors import (
    AllTargetsFailed,
    CircuitOpenError,
    ConfigError,
    ConfigProblem,
    ElariaError,
    ElariaTimeoutError,
    FailedAttempt,
    HostDown,
    SecurityViolation,
    ToolArgumentsError,
    ToolBudgetExhausted,
    ToolError,
    ToolTimeoutError,
    TransientBackendError,
)


def test_every_exported_exception_has_the_one_root() -> None:
    classes = [
        getattr(errors, name)
        for name in errors.__all__
        if inspect.isclass(getattr(errors, name))
        and issubclass(getattr(errors, name), BaseException)
    ]
    assert len(classes) > 20
    for cls in classes:
        assert issubclass(cls, ElariaError), cls


def test_every_class_is_drawn_in_the_docstring_tree() -> None:
    doc = errors.__doc__ or ""
    for name in errors.__all__:
        obj = getattr(errors, name)
        if inspect.isclass(obj) and issubclass(obj, BaseException):
            assert name in doc, f"{name} missing from the tree in the module docstring"


def test_builtin_mixins_let_callers_catch_the_familiar_type() -> None:
    with pytest.raises(ValueError):
        raise SecurityViolation("path.escape", "outside the workspace")
    with pytest.raises(TimeoutError):
        raise ElariaTimeoutError("first token", 2.5)
    with pytest.raises(TimeoutError):
        raise ToolTimeoutError("slow", tool="read_file")
    with pytest.raises(ValueError):
        raise ConfigError("bad")
    assert issubclass(HostDown, TransientBackendError)


def test_security_violation_carries_a_machine_readable_rule() -> None:
    exc = SecurityViolation("keys.prototype", "key '__proto__' is not allowed")
    assert exc.rule == "keys.prototype"
    assert "keys.prototype" in str(exc)


def test_tool_errors_render_for_the_model_with_a_hint() -> None:
    exc = ToolArgumentsError("missing required argument 'path'", tool="read_file", hint="Send x.")
    assert isinstance(exc, ToolError)
    text = exc.to_model_text()
    assert text == "Error: missing required argument 'path'. Send x."
    ended = ToolError("no such note.", hint="List the notes first.").to_model_text()
    assert ended == "Error: no such note. List the notes first."


def test_operator_errors_say_what_where_and_what_to_do() -> None:
    exc = HostDown("connection refused", host="ws://localhost:1234", hint="Start LM Studio.")
    rendered = str(exc)
    assert "connection refused" in rendered
    assert "host ws://localhost:1234" in rendered
    assert rendered.endswith("Start LM Studio.")
    assert exc.host == "ws://localhost:1234"


def test_all_targets_failed_keeps_the_chain_in_order() -> None:
    chain = [
        FailedAttempt("ws://a:1", "m1", "HostDown", "refused"),
        FailedAttempt("ws://b:2", "m2", "CircuitOpen", "open", skipped=True),
    ]
    exc = AllTargetsFailed(chain)
    assert exc.attempts == tuple(chain)
    text = str(exc)
    assert text.index("ws://a:1") < text.index("ws://b:2")
    assert "skipped" in text
    assert "--backend embedded" in text


def test_circuit_open_says_when_it_probes_again() -> None:
    exc = CircuitOpenError("breaker open", host="ws://a:1", retry_after=12.0)
    assert "12.0 s" in str(exc)


def test_config_error_lists_every_problem() -> None:
    problems = [
        ConfigProblem("lmstudio.temperature", 5, "0 <= value <= 2", "use a smaller number"),
        ConfigProblem("logging.level", "loud", "one of error, info", "pick one"),
    ]
    text = str(ConfigError("2 invalid settings", problems=problems))
    assert "lmstudio.temperature" in text
    assert "logging.level" in text
    assert text.count("\n  - ") == 2


def test_budget_exhausted_names_the_tool_and_the_last_error() -> None:
    last = ToolArgumentsError("argument 'n': not an int", tool="count")
    exc = ToolBudgetExhausted("count", 3, last)
    assert exc.tool == "count"
    assert "3 times" in str(exc)
    assert "not an int" in str(exc)
