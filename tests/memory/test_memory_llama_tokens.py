"""The history's token count against the real model's own count (Gemma 3 270M on llama.cpp).

The model's figure is the prompt token count it reports for a one-token prediction over the
history, through the unmodified SDK: the conversation exactly as the model read it, chat template
and special tokens included. (``count_tokens`` of ``apply_prompt_template``'s text would count
the template's special tokens as plain text and overstate it.) The history counts each message's
text with the same tokenizer (the SDK's ``count_tokens``) plus
:data:`~elaria.memory.trim.MESSAGE_OVERHEAD_TOKENS` for the template's role markers.

Stated tolerance: within :data:`TOLERANCE` (10 %) of the model's count, or :data:`SLACK_TOKENS`
for short conversations, since a template's markup is not exactly four tokens per message on
every model (Gemma folds the system prompt into the first user turn, for one).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from typing import Any

import lmstudio
import pytest

from elaria.config import HistorySettings
from elaria.memory.history import ConversationHistory
from elaria.memory.trim import estimate_tokens

pytestmark = pytest.mark.llama

llama = pytest.importorskip("elaria.embedded.llama", reason="needs the embedded extra")

#: Relative tolerance between the history's count and the model's count.
TOLERANCE = 0.10
#: Absolute slack for short conversations (a BOS token, a generation prompt).
SLACK_TOKENS = 8


@pytest.fixture(scope="module")
def engine() -> Iterator[Any]:
    eng = llama.LlamaCppEngine(n_ctx=2048)
    yield eng
    eng.close()


@pytest.fixture
async def model(engine: Any) -> AsyncIterator[Any]:
    from elaria.testing import embedded_server

    async with (
        embedded_server(engine=engine) as server,
        lmstudio.AsyncClient(server.api_host) as client,
    ):
        yield await client.llm.model(llama.MODEL_KEY)


def text(role: str, body: str) -> dict[str, Any]:
    return {"role": role, "content": [{"type": "text", "text": body}]}


CONVERSATION = [
    text("user", "Summarise the plot of Hamlet in two sentences, please."),
    text(
        "assistant",
        "Prince Hamlet seeks revenge on his uncle Claudius, who murdered Hamlet's father "
        "and married his mother. His hesitation and feigned madness end in a duel that "
        "kills nearly everyone, Hamlet included.",
    ),
    text("user", "Now list three themes, one per line, with a short explanation each."),
    text(
        "assistant",
        "Revenge: how far duty to the dead may drive the living.\n"
        "Madness: where pretence ends and real collapse begins.\n"
        "Mortality: the skull of Yorick and the leveller that death is.",
    ),
    text("user", "Thanks! Which act contains the famous soliloquy 'To be, or not to be'?"),
]


async def test_history_count_matches_the_models_own_count(model: Any) -> None:
    history = ConversationHistory(
        HistorySettings(answer_reserve_tokens=256),
        system_prompt="You are a concise literature tutor.",
        counter=model.count_tokens,
    )
    context_length = await model.get_context_length()
    assert history.set_context_length(context_length) == context_length - 256
    for message in CONVERSATION:
        await history.add_counted(message)
    ours = history.stats()["tokens"]
    result = await model.respond(history.to_chat(), config={"maxTokens": 1})
    theirs = result.stats.prompt_tokens_count
    assert abs(ours - theirs) <= max(SLACK_TOKENS, TOLERANCE * theirs), (ours, theirs)
    # The tokenizer did the counting, not the 4-characters estimate.
    estimate = sum(estimate_tokens(m) for m in history.get_all())
    assert ours != estimate
