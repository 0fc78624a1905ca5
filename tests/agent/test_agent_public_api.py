"""The public surface: ``elaria.__all__`` is Runtime, Settings, Tool, the errors; nothing else."""

from __future__ import annotations

import subprocess
import sys

import pytest

import elaria
import elaria.errors
from elaria.agent.tools import Tool
from elaria.config import Settings
from elaria.runtime import Runtime


def test_all_is_exactly_the_promised_surface() -> None:
    errors = {n for n in elaria.errors.__all__ if n not in ("ConfigProblem", "FailedAttempt")}
    assert set(elaria.__all__) == {"Runtime", "Settings", "Tool"} | errors
    assert len(elaria.__all__) == len(set(elaria.__all__))
    assert elaria.__all__ == sorted(elaria.__all__)


def test_every_name_resolves_to_the_real_object() -> None:
    assert elaria.Runtime is Runtime
    assert elaria.Settings is Settings
    assert elaria.Tool is Tool
    for name in elaria.__all__:
        value = getattr(elaria, name)
        if name not in ("Runtime", "Settings", "Tool"):
            assert value is getattr(elaria.errors, name)
            assert issubclass(value, elaria.ElariaError)
    assert "Runtime" in dir(elaria)


def test_unknown_attributes_raise_attribute_error() -> None:
    with pytest.raises(AttributeError, match="no attribute 'Agent'"):
        _ = elaria.Agent


def test_import_elaria_does_not_load_the_runtime() -> None:
    code = "import sys, elaria; print('elaria.runtime' in sys.modules, 'lmstudio' in sys.modules)"
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60
    )
    assert out.stdout.split() == ["False", "False"]
