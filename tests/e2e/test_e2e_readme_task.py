"""The README's first command, for real: on the embedded tiny model (Gemma 3 270M on llama.cpp,
greedy) with the built-in tools and the sample workspace, the agent lists the workspace, reads
``notes.md`` and says what it is about.

Slow (several tool rounds of seconds each on a small CPU); marked ``llama``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from elaria.agent import events as ev
from elaria.config import Settings
from elaria.runtime import Runtime

pytestmark = pytest.mark.llama

#: The README's first command, word for word.
README_TASK = "List the files in the workspace, then read notes.md and say what it is about."
#: The tiny model is slow on a shared 2-core machine; the deadlines of one round.
ROUND_TIMEOUT_MS = 300_000
#: Words of the sample notes.md (a vegetable garden plan); an answer about it names one of them.
GARDEN_WORDS = ("garden", "tomato", "basil", "lettuce", "vegetable", "watered")


def readme_settings(workspace: Path) -> Settings:
    return Settings.model_validate(
        {
            "agent": {"workspace": str(workspace)},
            "lmstudio": {
                "timeout_ms": ROUND_TIMEOUT_MS,
                "first_token_timeout_ms": ROUND_TIMEOUT_MS,
                "fragment_gap_timeout_ms": ROUND_TIMEOUT_MS,
            },
        }
    )


def normalised(path: Any) -> str:
    return str(path).strip().removeprefix("./")


async def test_the_readme_task_lists_reads_notes_and_says_what_they_are_about(
    tmp_path: Path,
) -> None:
    workspace = tmp_path / "workspace"
    events: list[ev.AgentEvent] = []
    async with Runtime(readme_settings(workspace), backend="embedded") as rt:
        assert rt.backend is not None
        assert rt.backend.tiny_model
        result = await rt.run(README_TASK, on_event=events.append)

    assert (workspace / "notes.md").is_file()  # the sample workspace was created
    executed = [c for c in result.tool_calls if c["status"] == "ok" and c["executed"]]
    names = [c["tool"] for c in executed]
    assert "list_dir" in names, result.tool_calls
    reads = [
        e.arguments
        for e in events
        if isinstance(e, ev.ToolCallRequested) and e.tool == "read_file" and e.arguments
    ]
    assert any(normalised(args.get("path")) == "notes.md" for args in reads), reads
    # Listed first, then read: the order the task asks for.
    assert names.index("list_dir") < names.index("read_file")

    answer = result.answer.lower()
    assert any(word in answer for word in GARDEN_WORDS), result.answer
    # The answer comes from the file, not from the system prompt's worked example.
    assert not any(word in answer for word in ("bike", "bicycle")), result.answer
    assert isinstance(events[-1], ev.FinalAnswer)
    assert events[-1].text == result.answer
