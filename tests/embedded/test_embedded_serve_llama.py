"""``elaria serve --engine llama``: the real tiny model behind the unmodified SDK, in a child."""

from __future__ import annotations

import asyncio

import lmstudio
import pytest

from elaria.testing import ServerProcess

pytestmark = [pytest.mark.llama, pytest.mark.slow]

#: Loading the model and a few greedy tokens on a busy 2-core machine.
WAIT = 120.0


async def test_serve_llama_answers_through_the_sdk() -> None:
    pytest.importorskip("llama_cpp")
    async with (
        ServerProcess("--engine", "llama") as proc,
        asyncio.timeout(WAIT),
        lmstudio.AsyncClient(proc.api_host) as client,
    ):
        downloaded = await client.llm.list_downloaded()
        model = await client.llm.model(downloaded[0].model_key)
        config = lmstudio.LlmPredictionConfig(max_tokens=4, temperature=0.0)
        result = await model.respond("Say hello.", config=config)
        tokens = await model.count_tokens("hello world")
    assert result.stats.predicted_tokens_count is not None
    assert 1 <= result.stats.predicted_tokens_count <= 4
    assert result.stats.stop_reason in {"maxPredictedTokensReached", "eosFound"}
    assert tokens >= 2
