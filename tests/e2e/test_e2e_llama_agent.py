"""The real thing: the tiny Gemma 3 270M on llama.cpp behind the embedded server, driven through
the unmodified ``lmstudio`` SDK by the Runtime, making a real tool call and answering.

Slow (a tool round takes seconds to tens of seconds on a small CPU); marked ``llama``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from elaria.agent import events as ev
from elaria.config import Settings
from elaria.runtime import Runtime

pytestmark = pytest.mark.llama

#: The tiny model is slow on a shared 2-core machine; the deadlines of one round.
ROUND_TIMEOUT_MS = 300_000


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def e2e_settings(tmp_path: Path, **agent: Any) -> Settings:
    return Settings.model_validate(
        {
            "agent": {"workspace": str(tmp_path / "workspace"), **agent},
            "lmstudio": {
                "timeout_ms": ROUND_TIMEOUT_MS,
                "first_token_timeout_ms": ROUND_TIMEOUT_MS,
                "fragment_gap_timeout_ms": ROUND_TIMEOUT_MS,
            },
        }
    )


async def test_the_tiny_model_calls_a_tool_and_answers_from_its_result(tmp_path: Path) -> None:
    calls: list[str] = []

    def get_weather(city: str) -> dict[str, Any]:
        """Get today's weather for a city.

        Args:
            city: the city's name, e.g. Paris
        """
        calls.append(city)
        return {"city": city, "sky": "sunny", "temperature_c": 24}

    events: list[ev.AgentEvent] = []
    settings = e2e_settings(
        tmp_path,
        max_iterations=3,
        system_prompt="You can call tools. Call the tool the user names, then answer in one "
        "sentence from its result.",
    )
    async with Runtime(
        settings, backend="embedded", tools=[get_weather], builtin_tools=False
    ) as rt:
        assert rt.backend is not None
        assert rt.backend.engine_name == "llama"
        result = await rt.run(
            "What is the weather in Paris today? Use the get_weather tool.",
            on_event=events.append,
        )
    # At least one real call, with arguments that passed the schema, whose result went back.
    assert calls, "the model made no tool call"
    assert all(isinstance(city, str) and city for city in calls)
    requested = [e for e in events if isinstance(e, ev.ToolCallRequested)]
    finished = [e for e in events if isinstance(e, ev.ToolCallFinished)]
    assert requested[0].tool == "get_weather"
    assert finished[0].tool == "get_weather"
    ok_calls = [c for c in result.tool_calls if c["status"] == "ok"]
    assert ok_calls
    assert ok_calls[0]["executed"] is True
    # The answer round saw the tool result in its history, and the run ended with an answer.
    assert result.rounds >= 2
    assert result.answer.strip()
    assert isinstance(events[-1], ev.FinalAnswer)
    assert events[-1].text == result.answer
    assert result.model == "gemma-3-270m"
    assert result.prompt_tokens > 0
    assert result.predicted_tokens > 0
    # The event log has one line per round, from the embedded provider.
    rounds = read_jsonl(tmp_path / "logs" / "inference.jsonl")
    assert len(rounds) == result.rounds
    assert {r["provider"] for r in rounds} == {"embedded"}
