"""LlamaCppEngine against the real Gemma 3 270M: tokens, streaming, limits, cancellation,
grammar-constrained tool calls, embeddings. One model load for the whole module."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Iterator, Mapping, Sequence
from typing import Any

import jsonschema
import llama_cpp
import pytest
from loguru import logger

from elaria.config import EmbeddedSettings
from elaria.embedded.engine import (
    Done,
    EngineError,
    EngineEvent,
    Fragment,
    PredictRequest,
    ToolCall,
)
from elaria.embedded.llama import (
    ANSWER_MAX_TOKENS,
    MODEL_KEY,
    LlamaCppEngine,
    default_model_path,
    model_spec,
)
from elaria.errors import ModelNotFoundError

pytestmark = pytest.mark.llama

#: One thread: llama.cpp's workers spin while they wait, so on a shared 2-core CI machine a second
#: thread fighting other processes makes rounds many times slower, not faster.
TEST_THREADS = 1

#: Bound on any single model round in these tests: generous for a busy 2-core machine.
ROUND_TIMEOUT_S = 60.0

WEATHER = {
    "type": "object",
    "properties": {
        "city": {"type": "string"},
        "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]},
    },
    "required": ["city"],
}
ADD = {
    "type": "object",
    "properties": {"a": {"type": "integer"}, "b": {"type": "integer"}},
    "required": ["a", "b"],
}
EMAIL = {
    "type": "object",
    "properties": {
        "to": {"type": "string"},
        "subject": {"type": "string"},
        "urgent": {"type": "boolean"},
    },
    "required": ["to", "subject"],
}
SCHEMAS: dict[str, Mapping[str, Any]] = {"get_weather": WEATHER, "add": ADD, "send_email": EMAIL}
DESCRIPTIONS = {
    "get_weather": "Current weather for a city",
    "add": "Add two integers",
    "send_email": "Send an email",
}
TOOLS = [
    {"type": "function", "function": {"name": n, "description": DESCRIPTIONS[n], "parameters": s}}
    for n, s in SCHEMAS.items()
]


@pytest.fixture(scope="module")
def vocab() -> Any:
    """llama-cpp-python on the same file, vocabulary only: the reference tokenizer."""
    return llama_cpp.Llama(str(default_model_path()), vocab_only=True, verbose=False)


@pytest.fixture(scope="module")
def engine() -> Iterator[LlamaCppEngine]:
    eng = LlamaCppEngine(n_ctx=2048, n_threads=TEST_THREADS)
    asyncio.run(eng.load(MODEL_KEY, 2048))
    yield eng
    eng.close()


def user(text: str) -> dict[str, Any]:
    return {"role": "user", "content": [{"type": "text", "text": text}]}


def request(messages: Sequence[Mapping[str, Any]], **kw: Any) -> PredictRequest:
    return PredictRequest(MODEL_KEY, MODEL_KEY, messages, **kw)


async def collect(events: AsyncIterator[EngineEvent]) -> list[EngineEvent]:
    async with asyncio.timeout(ROUND_TIMEOUT_S):
        return [e async for e in events]


def text_of(events: Sequence[EngineEvent]) -> str:
    return "".join(e.text for e in events if isinstance(e, Fragment))


def test_catalogue_reports_the_real_file() -> None:
    spec = model_spec()
    path = default_model_path()
    assert spec.model_key == MODEL_KEY
    assert spec.size_bytes == path.stat().st_size
    meta = llama_cpp.Llama(str(path), vocab_only=True, verbose=False).metadata
    assert spec.max_context_length == int(meta["gemma3.context_length"])
    assert spec.architecture == meta["general.architecture"]


async def test_tokenize_matches_llama_cpp(engine: LlamaCppEngine, vocab: Any) -> None:
    for text in ["Hello, world!", "  émoji 🚀 and <end_of_turn> markup", ""]:
        expected = vocab.tokenize(text.encode(), add_bos=False, special=False)
        assert await engine.tokenize(MODEL_KEY, text) == expected


async def test_template_shows_system_prompt_tools_and_results(engine: LlamaCppEngine) -> None:
    messages = [
        {"role": "system", "content": [{"type": "text", "text": "You are a weather bot."}]},
        user("Weather in Oslo?"),
        {
            "role": "assistant",
            "content": [
                {"type": "text", "text": ""},
                {
                    "type": "toolCallRequest",
                    "toolCallRequest": {
                        "type": "function",
                        "id": "c1",
                        "name": "get_weather",
                        "arguments": {"city": "Oslo"},
                    },
                },
            ],
        },
        {
            "role": "tool",
            "content": [{"type": "toolCallResult", "content": '"Snow, -3 C"', "toolCallId": "c1"}],
        },
    ]
    text = await engine.apply_template(MODEL_KEY, messages, TOOLS)
    assert text.startswith("<bos><start_of_turn>user\nYou are a weather bot.")
    for name in SCHEMAS:
        assert f"- {name}(" in text
    assert '{"tool": "get_weather", "arguments": {"city": "Oslo"}}' in text
    assert 'tool: "Snow, -3 C"' in text
    assert text.endswith("<start_of_turn>model\n")


async def test_free_text_streams_and_honours_max_tokens(engine: LlamaCppEngine, vocab: Any) -> None:
    messages = [user("Tell me a story.")]
    events = await collect(engine.predict(request(messages, max_tokens=6)))
    fragments = [e for e in events if isinstance(e, Fragment)]
    done = events[-1]
    assert isinstance(done, Done)
    assert done.stop_reason == "maxPredictedTokensReached"
    assert len(fragments) >= 2  # streamed, not one block
    assert sum(f.tokens for f in fragments) == 6
    template = await engine.apply_template(MODEL_KEY, messages, None)
    assert done.prompt_tokens == len(vocab.tokenize(template.encode(), add_bos=False, special=True))


async def test_greedy_is_deterministic(engine: LlamaCppEngine) -> None:
    req = request([user("List three colours.")], max_tokens=8, temperature=0.0)
    first = text_of(await collect(engine.predict(req)))
    second = text_of(await collect(engine.predict(req)))
    assert first
    assert first == second


async def test_stop_string_ends_the_round_before_it(engine: LlamaCppEngine) -> None:
    req = request([user("Count: one, two, three, four, five")], max_tokens=24)
    full = text_of(await collect(engine.predict(req)))
    stop = full.strip()[len(full.strip()) // 2 :][:3]
    assert stop, full
    events = await collect(
        engine.predict(request(req.messages, max_tokens=24, stop_strings=[stop]))
    )
    assert isinstance(events[-1], Done)
    assert events[-1].stop_reason == "stopStringFound"
    assert stop not in text_of(events)
    assert full.startswith(text_of(events))


@pytest.mark.parametrize("how", ["aclose", "task-cancel"])
async def test_cancellation_stops_within_a_token(engine: LlamaCppEngine, how: str) -> None:
    long = request([user("Write a long essay about rivers.")], max_tokens=400)
    events = engine.predict(long)
    seen = 0
    if how == "aclose":
        async with asyncio.timeout(ROUND_TIMEOUT_S):
            async for event in events:
                seen += isinstance(event, Fragment)
                if seen == 3:
                    break
        await events.aclose()
    else:
        three = asyncio.Event()

        async def consume() -> None:
            nonlocal seen
            async for event in events:
                seen += isinstance(event, Fragment)
                if seen == 3:
                    three.set()

        task = asyncio.create_task(consume())
        async with asyncio.timeout(ROUND_TIMEOUT_S):
            await three.wait()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
    # The next request runs on the same worker, so it finishing proves the worker was freed.
    after = await collect(engine.predict(request([user("Hi")], max_tokens=2)))
    assert isinstance(after[-1], Done)
    stop_reason, produced = engine.stats()["recent_rounds"][-2]
    assert stop_reason == "userStopped", engine.stats()
    assert produced <= seen + 2


@pytest.mark.parametrize(
    "prompt",
    [
        "What's the weather in Paris?",
        "What is 12 plus 30?",
        "Email bob@example.com with the subject hello.",
    ],
)
async def test_tool_round_yields_a_schema_valid_call(engine: LlamaCppEngine, prompt: str) -> None:
    events = await collect(engine.predict(request([user(prompt)], tools=TOOLS)))
    calls = [e for e in events if isinstance(e, ToolCall)]
    assert len(calls) == 1, events
    call = calls[0]
    assert call.name in SCHEMAS
    jsonschema.validate(dict(call.arguments or {}), SCHEMAS[call.name])
    assert str(call.id).startswith("call_")
    assert call.name in str(call.raw)
    assert isinstance(events[-1], Done)
    assert events[-1].stop_reason == "eosFound"


CALL = {"type": "function", "id": "c1", "name": "get_weather", "arguments": {"city": "Paris"}}
CALLED_AND_ANSWERED = [
    user("What's the weather in Paris?"),
    {"role": "assistant", "content": [{"type": "toolCallRequest", "toolCallRequest": CALL}]},
    {
        "role": "tool",
        "content": [{"type": "toolCallResult", "content": '"Sunny, 21 C"', "toolCallId": "c1"}],
    },
]


WEATHER_ONLY = [
    {"type": "function", "function": {"name": "get_weather", "parameters": SCHEMAS["get_weather"]}}
]


async def test_repeated_call_becomes_a_streamed_answer(engine: LlamaCppEngine) -> None:
    # The only tool offered was already called with these arguments: withheld, so an answer.
    events = await collect(engine.predict(request(CALLED_AND_ANSWERED, tools=WEATHER_ONLY)))
    assert not [e for e in events if isinstance(e, ToolCall)]
    answer = text_of(events)
    assert answer.strip()
    assert '"answer"' not in answer  # the JSON wrapper is not part of the streamed text
    assert isinstance(events[-1], Done)


async def test_repeated_call_is_withheld_and_the_model_chooses_again(
    engine: LlamaCppEngine,
) -> None:
    events = await collect(engine.predict(request(CALLED_AND_ANSWERED, tools=TOOLS)))
    calls = [e for e in events if isinstance(e, ToolCall)]
    assert not [c for c in calls if c.name == "get_weather" and c.arguments == CALL["arguments"]]
    # Exactly one outcome: another (schema-valid) call, or an answer.
    if calls:
        assert len(calls) == 1
        assert not text_of(events)
        jsonschema.validate(dict(calls[0].arguments or {}), SCHEMAS[calls[0].name])
    else:
        assert text_of(events).strip()


async def test_a_repeat_with_the_defaults_spelled_out_is_still_a_repeat(
    engine: LlamaCppEngine,
) -> None:
    # The client recorded the call with its defaults filled in; the model writes it without.
    with_default = {
        "type": "object",
        "properties": {
            "city": {"type": "string"},
            "unit": {"type": "string", "default": "celsius"},
        },
        "required": ["city"],
    }
    tools = [{"type": "function", "function": {"name": "get_weather", "parameters": with_default}}]
    recorded = {**CALL, "arguments": {"city": "Paris", "unit": "celsius"}}
    history = [
        CALLED_AND_ANSWERED[0],
        {
            "role": "assistant",
            "content": [{"type": "toolCallRequest", "toolCallRequest": recorded}],
        },
        CALLED_AND_ANSWERED[2],
    ]
    events = await collect(engine.predict(request(history, tools=tools)))
    for call in (e for e in events if isinstance(e, ToolCall)):
        assert dict(call.arguments or {}) not in ({"city": "Paris"}, recorded["arguments"])


async def test_structured_output_follows_the_schema(engine: LlamaCppEngine) -> None:
    schema = {
        "type": "object",
        "properties": {"name": {"type": "string"}, "age": {"type": "integer"}},
        "required": ["name", "age"],
    }
    req = request(
        [user("Describe a person as JSON.")],
        structured={"type": "json", "jsonSchema": schema},
        max_tokens=60,
    )
    events = await collect(engine.predict(req))
    assert isinstance(events[-1], Done)
    assert events[-1].stop_reason == "eosFound"
    jsonschema.validate(json.loads(text_of(events)), schema)


async def test_embeddings_are_real_and_normalised(engine: LlamaCppEngine) -> None:
    cat = await engine.embed(MODEL_KEY, "the cat sat on the mat")
    cat2 = await engine.embed(MODEL_KEY, "a cat is sitting on a mat")
    tax = await engine.embed(MODEL_KEY, "quarterly tax filing deadline")
    assert len(cat) == 640  # Gemma 3 270M's hidden size
    assert abs(sum(x * x for x in cat) - 1.0) < 1e-6
    similar = sum(a * b for a, b in zip(cat, cat2, strict=True))
    unrelated = sum(a * b for a, b in zip(cat, tax, strict=True))
    assert similar > unrelated


async def test_tool_with_defs_gets_a_schema_valid_call(engine: LlamaCppEngine) -> None:
    schema = {
        "type": "object",
        "properties": {"trip": {"$ref": "#/$defs/Trip"}},
        "required": ["trip"],
        "$defs": {
            "Trip": {
                "type": "object",
                "properties": {"to": {"type": "string"}, "seats": {"type": "integer"}},
                "required": ["to", "seats"],
            }
        },
    }
    tool = {"type": "function", "function": {"name": "book_flight", "parameters": schema}}
    events = await collect(engine.predict(request([user("Book 2 seats to Rome.")], tools=[tool])))
    calls = [e for e in events if isinstance(e, ToolCall)]
    assert len(calls) == 1, events
    jsonschema.validate(dict(calls[0].arguments or {}), schema)


async def test_unconvertible_schema_falls_back_to_a_generic_object(
    engine: LlamaCppEngine,
) -> None:
    odd = {"type": "object", "properties": {"code": {"type": "string", "pattern": "[A-Z]+"}}}
    tools = [{"type": "function", "function": {"name": "lookup", "parameters": odd}}]
    warnings: list[str] = []
    sink = logger.add(warnings.append, level="WARNING", format="{message}")
    try:
        events = await collect(engine.predict(request([user("Look up code ABC.")], tools=tools)))
    finally:
        logger.remove(sink)
    assert not [e for e in events if isinstance(e, EngineError)], events
    assert isinstance(events[-1], Done)
    assert any("lookup gets a generic argument grammar" in w for w in warnings)
    for call in (e for e in events if isinstance(e, ToolCall)):
        assert isinstance(call.arguments, dict)


async def test_gbnf_grammar_is_followed(engine: LlamaCppEngine) -> None:
    grammar = 'root ::= ("yes" | "no") "!"'
    req = request([user("Is water wet?")], structured={"type": "gbnf", "gbnfGrammar": grammar})
    events = await collect(engine.predict(req))
    assert text_of(events) in ("yes!", "no!")
    assert isinstance(events[-1], Done)
    assert events[-1].stop_reason == "eosFound"


async def test_refusals_are_engine_errors(engine: LlamaCppEngine) -> None:
    too_long = request([user("word " * 3000)])
    gbnf = request([user("hi")], structured={"type": "gbnf", "gbnfGrammar": 'root ::= "x'})
    unknown = PredictRequest("no-such-model", "no-such-model", [user("hi")])
    for req, needle in (
        (too_long, "does not fit"),
        (gbnf, "could not parse the grammar"),
        (unknown, "no-such-model"),
    ):
        events = await collect(engine.predict(req))
        assert len(events) == 1
        assert isinstance(events[0], EngineError)
        assert needle in events[0].title
    with pytest.raises(ModelNotFoundError):
        await engine.tokenize("no-such-model", "hi")


async def test_unload_mid_generation_ends_with_model_unloaded(engine: LlamaCppEngine) -> None:
    events = engine.predict(request([user("Write a long essay about mountains.")], max_tokens=400))
    seen: list[EngineEvent] = []
    async with asyncio.timeout(ROUND_TIMEOUT_S):
        async for event in events:
            seen.append(event)
            if len(seen) == 2:
                await engine.unload(MODEL_KEY)
    assert isinstance(seen[-1], Done)
    assert seen[-1].stop_reason == "modelUnloaded"
    assert not engine.loaded
    await engine.load(MODEL_KEY, 2048)  # the rest of the module keeps its model


async def test_sampling_with_temperature_still_obeys_the_grammar(engine: LlamaCppEngine) -> None:
    prompt = [user("What's the weather in Paris?")]
    for _ in range(2):
        events = await collect(
            engine.predict(request(prompt, tools=TOOLS, temperature=1.0, max_tokens=40))
        )
        assert isinstance(events[-1], Done)
        for call in (e for e in events if isinstance(e, ToolCall)):
            jsonschema.validate(dict(call.arguments or {}), SCHEMAS[call.name])
    assert engine.stats()["predictions"] >= 2


def test_settings_choose_context_and_threads() -> None:
    eng = LlamaCppEngine(settings=EmbeddedSettings(n_ctx=1024, n_threads=3))
    try:
        assert (eng.n_ctx, eng.n_threads) == (1024, 3)
        assert not eng.loaded
        assert "unloaded" in repr(eng)
    finally:
        eng.close()
    default = LlamaCppEngine()
    try:
        assert default.n_ctx == EmbeddedSettings().n_ctx
        assert default.n_threads >= 1
    finally:
        default.close()


async def test_answers_in_tool_rounds_are_capped(engine: LlamaCppEngine) -> None:
    engine.answer_max_tokens = 3
    try:
        events = await collect(engine.predict(request(CALLED_AND_ANSWERED, tools=WEATHER_ONLY)))
    finally:
        engine.answer_max_tokens = ANSWER_MAX_TOKENS
    assert isinstance(events[-1], Done)
    assert events[-1].stop_reason == "maxPredictedTokensReached"
    assert 1 <= len([e for e in events if isinstance(e, Fragment)]) <= 3
