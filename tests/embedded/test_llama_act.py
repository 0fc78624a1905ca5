"""Issue #3, done-when: with the llama engine, ``act()`` through the unmodified ``lmstudio`` SDK
completes a real tool call with schema-valid arguments and then a final answer."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import jsonschema
import lmstudio
import pytest

from elaria.embedded.llama import MODEL_KEY, LlamaCppEngine
from elaria.embedded.server import EmbeddedServer
from elaria.testing import embedded_server

pytestmark = pytest.mark.llama

#: One thread: llama.cpp's workers spin while they wait, so on a shared 2-core CI machine a second
#: thread fighting other processes makes rounds many times slower, not faster.
TEST_THREADS = 1

#: Bound on the whole act(): two grammar-constrained rounds on a busy 2-core machine.
ACT_TIMEOUT_S = 120.0
#: Rounds act() may take before the SDK's forced tool-less last round: call, answer, slack.
MAX_ROUNDS = 4

WEATHER_SCHEMA = {
    "type": "object",
    "properties": {"city": {"type": "string"}},
    "required": ["city"],
}
ADD_SCHEMA = {
    "type": "object",
    "properties": {"a": {"type": "integer"}, "b": {"type": "integer"}},
    "required": ["a", "b"],
}


@pytest.fixture(scope="module")
def engine() -> Any:
    eng = LlamaCppEngine(n_ctx=2048, n_threads=TEST_THREADS)
    yield eng
    eng.close()


@pytest.fixture
async def server(engine: LlamaCppEngine) -> AsyncIterator[EmbeddedServer]:
    async with embedded_server(engine=engine) as srv:
        yield srv


@pytest.mark.parametrize(
    ("prompt", "expected_tool", "schema"),
    [
        ("What's the weather in Paris?", "get_weather", WEATHER_SCHEMA),
        ("What is 12 plus 30?", "add", ADD_SCHEMA),
    ],
)
async def test_act_makes_a_real_tool_call_then_answers(
    server: EmbeddedServer, prompt: str, expected_tool: str, schema: dict[str, Any]
) -> None:
    calls: list[tuple[str, dict[str, Any]]] = []

    def get_weather(city: str) -> str:
        """Current weather for a city."""
        calls.append(("get_weather", {"city": city}))
        return f"Sunny, 21 C in {city}"

    def add(a: int, b: int) -> int:
        """Add two integers."""
        calls.append(("add", {"a": a, "b": b}))
        return a + b

    messages: list[Any] = []
    async with lmstudio.AsyncClient(server.api_host) as client:
        model = await client.llm.model(MODEL_KEY)
        async with asyncio.timeout(ACT_TIMEOUT_S):
            result = await model.act(
                prompt,
                [get_weather, add],
                config={"temperature": 0.0},
                max_prediction_rounds=MAX_ROUNDS,
                on_message=messages.append,
            )

    assert calls, "the model never called a tool"
    name, arguments = calls[0]
    assert name == expected_tool
    jsonschema.validate(arguments, schema)
    # Round 1 called the tool; a later round *with tools offered* answered (not the SDK's
    # forced last round), so the grammar's answer branch produced the final text.
    assert 2 <= result.rounds < MAX_ROUNDS
    final = messages[-1]
    assert isinstance(final, lmstudio.AssistantResponse)
    text = "".join(getattr(part, "text", "") for part in final.content)
    assert text.strip()
