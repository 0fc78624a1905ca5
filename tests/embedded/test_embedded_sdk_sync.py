"""The unmodified lmstudio SDK's sync Client against the in-process server.

The sync Client runs its own thread and loop; the test's loop keeps serving while the sync code
runs in ``asyncio.to_thread``.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

import lmstudio
import pytest

from elaria.embedded import (
    DEFAULT_EMBEDDING_KEY,
    DEFAULT_LLM_KEY,
    EmbeddedServer,
    ScriptedEngine,
    ToolCall,
    reply,
    tool_call,
    tool_calls,
)
from elaria.testing import embedded_server

WAIT = 20.0
T = TypeVar("T")


@pytest.fixture
async def srv() -> AsyncIterator[EmbeddedServer]:
    async with embedded_server(engine=ScriptedEngine()) as server:
        yield server


def engine_of(srv: EmbeddedServer) -> ScriptedEngine:
    assert isinstance(srv.engine, ScriptedEngine)
    return srv.engine


def add(a: int, b: int) -> int:
    """Add two integers."""
    return a + b


def shout(text: str) -> str:
    """Upper-case a text."""
    return text.upper()


async def in_thread(fn: Callable[[], T]) -> T:
    return await asyncio.wait_for(asyncio.to_thread(fn), WAIT)


async def test_sync_client_every_call(srv: EmbeddedServer) -> None:
    engine_of(srv).script(reply("sync hello"))

    def run() -> dict[str, object]:
        with lmstudio.Client(srv.api_host) as client:
            model = client.llm.model(DEFAULT_LLM_KEY)
            emb = client.embedding.model(DEFAULT_EMBEDDING_KEY)
            other = client.llm.load_new_instance(DEFAULT_LLM_KEY)
            out: dict[str, object] = {
                "loaded": [m.identifier for m in client.llm.list_loaded()],
                "downloaded": len(client.list_downloaded_models()),
                "info": model.get_info().identifier,
                "tokens": model.count_tokens("a b c"),
                "respond": model.respond("hi").content,
                "embed": len(emb.embed("x")),
                "other": other.identifier,
            }
            other.unload()
            out["after_unload"] = [m.identifier for m in client.llm.list_loaded()]
            return out

    out = await in_thread(run)
    assert out == {
        "loaded": [DEFAULT_LLM_KEY, f"{DEFAULT_LLM_KEY}:2"],
        "downloaded": 2,
        "info": DEFAULT_LLM_KEY,
        "tokens": 3,
        "respond": "sync hello",
        "embed": 16,
        "other": f"{DEFAULT_LLM_KEY}:2",
        "after_unload": [DEFAULT_LLM_KEY],
    }


async def test_sync_act_several_tools_several_rounds(srv: EmbeddedServer) -> None:
    engine = engine_of(srv)
    engine.script(
        tool_calls(ToolCall("add", {"a": 2, "b": 2}), ToolCall("shout", {"text": "hi"})),
        tool_call("add", {"a": 4, "b": 1}),
        reply("five and HI"),
    )

    def run() -> tuple[int, str]:
        with lmstudio.Client(srv.api_host) as client:
            model = client.llm.model(DEFAULT_LLM_KEY)
            final: list[str] = []
            result = model.act(
                "go", [add, shout], on_message=lambda m: final.append(str(m.content))
            )
            return result.rounds, final[-1]

    rounds, last = await in_thread(run)
    assert rounds == 3
    assert "five and HI" in last
    tool_results = [p["content"] for p in engine.requests[1].messages[-1]["content"]]
    # the sync SDK runs tools on a thread pool and reports results in completion order
    assert sorted(tool_results) == ['"HI"', "4"]


async def test_sync_cancel_and_typed_errors(srv: EmbeddedServer) -> None:
    gate = asyncio.Event()
    engine_of(srv).script(reply("x y z", gate=gate, gate_after=1))

    def run() -> tuple[str, str, str]:
        with lmstudio.Client(srv.api_host) as client:
            model = client.llm.model(DEFAULT_LLM_KEY)
            stream = model.respond_stream("go")
            for _fragment in stream:
                stream.cancel()  # the turn is held at its gate: only a cancel ends it
            stopped = stream.result().stats.stop_reason
            with pytest.raises(lmstudio.LMStudioServerError) as missing:
                client.llm.model("missing-model")
            model.unload()
            with pytest.raises(lmstudio.LMStudioModelNotFoundError) as gone:
                model.get_info()
            return stopped, type(missing.value).__name__, type(gone.value).__name__

    stopped, missing, gone = await in_thread(run)
    assert stopped == "userStopped"
    assert missing == "LMStudioServerError"
    assert gone == "LMStudioModelNotFoundError"


async def test_ten_threads_share_one_sync_client(srv: EmbeddedServer) -> None:
    def run() -> list[str]:
        with lmstudio.Client(srv.api_host) as client:
            model = client.llm.model(DEFAULT_LLM_KEY)
            with ThreadPoolExecutor(10) as pool:
                return list(pool.map(lambda i: model.respond(f"n{i}").content, range(10)))

    answers = await in_thread(run)
    assert answers == [f"You said: n{i}" for i in range(10)]
