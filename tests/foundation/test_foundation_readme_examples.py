"""The README's Python examples run as written (against the scripted embedded engine)."""

from __future__ import annotations

import re
import textwrap
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]


def _python_blocks() -> list[str]:
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    return re.findall(r"```python\n(.*?)```", readme, flags=re.S)


def test_readme_has_the_api_and_testing_examples() -> None:
    blocks = _python_blocks()
    assert len(blocks) == 2
    assert "async with Runtime(" in blocks[0]
    assert "embedded_server(" in blocks[1]


async def test_runtime_example_runs(monkeypatch: pytest.MonkeyPatch) -> None:
    # backend="auto" finds no LM Studio here and falls back to the embedded server; the scripted
    # engine stands in for the tiny model so the example runs in a second.
    monkeypatch.setenv("ELARIA_EMBEDDED__ENGINE", "scripted")
    body = textwrap.indent(_python_blocks()[0], "    ")
    namespace: dict[str, Any] = {}
    exec(f"async def example() -> None:\n{body}", namespace)
    await namespace["example"]()
    assert (Path.cwd() / "workspace" / "notes.md").exists()


async def test_testing_example_runs() -> None:
    namespace: dict[str, Any] = {}
    exec(_python_blocks()[1], namespace)
    await namespace["test_my_agent"]()
