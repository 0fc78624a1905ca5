"""``ConversationHistory``: a bounded conversation in the LM Studio SDK's wire format.

Messages are ``{"role": "system"|"user"|"assistant"|"tool", "content": [parts]}`` exactly as
:class:`~elaria.lmstudio.rounds.RoundRequest` carries them; ``get_all()`` is what the agent
sends. The history is bounded by messages and by tokens (:class:`~elaria.config.HistorySettings`):

* the system prompt is pinned and never trimmed (adding a ``system`` message replaces it);
* trimming drops the oldest units first and never separates a tool call from its results
  (the rules live in :mod:`elaria.memory.trim`, sans-I/O);
* tokens are counted with the loaded model's tokenizer when a counter is attached
  (:meth:`attach_counter`, an async ``count_tokens(text) -> int`` from the LM Studio layer),
  cached per message; until then, and whenever the counter fails, 4 characters per token;
* :meth:`set_context_length` sets the token budget from the loaded model's real context length
  minus a reserve for the answer;
* a tool result longer than its share of the budget is cut with a marker naming a handle; the
  full text is kept in a :class:`~elaria.memory.cache.Cache` and :meth:`read_spilled` (or the
  tool from :func:`spill_reader_tool`) returns it to the model in pages.

Concurrency: loop-confined, like the caches. Every method is called from the event loop that owns
the agent (or from one thread without a loop). ``add`` is synchronous; ``add_counted`` and
``recount`` await the tokenizer. Cancelling them leaves the history consistent: a message is
stored (with its estimate) before any await, and counts replace estimates only when they arrive.

The history keeps the mappings it is given: do not mutate a message after adding it.
"""

from __future__ import annotations

import itertools
import secrets
from collections import deque
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, cast, overload

from cachetools import LRUCache

from elaria.config import CacheSettings, HistorySettings
from elaria.errors import ConfigError, ToolArgumentsError
from elaria.memory.cache import Cache
from elaria.memory.trim import (
    CHARS_PER_TOKEN,
    MESSAGE_OVERHEAD_TOKENS,
    Message,
    UnitCost,
    estimate_text_tokens,
    message_text,
    plan_trim,
    requests_tool_calls,
)

if TYPE_CHECKING:
    import lmstudio

    from elaria.agent.tools import Tool

__all__ = ["ConversationHistory", "TokenCounter", "spill_reader_tool"]

#: The LM Studio layer's tokenizer: ``await count_tokens(text) -> int``.
TokenCounter = Callable[[str], Awaitable[int]]

#: One tool result may take at most this share of the token budget before it is spilled.
TOOL_RESULT_SHARE = 0.25
#: Never cut a tool result below this many characters, however small the budget.
MIN_TOOL_RESULT_CHARS = 1_000
#: Room left in a page of ``read_spilled`` for its "next page" marker, so that a page recorded
#: as a tool result fits the result share and is not spilled again.
PAGE_MARKER_ROOM = 100
#: Distinct texts whose exact token count is remembered across messages (re-adds, from_chat).
COUNT_MEMO_SIZE = 4_096
#: The token budget never drops below this, whatever the model's context length says.
MIN_TOKEN_BUDGET = 256


@dataclass(slots=True)
class _Entry:
    message: Message
    tokens: int
    exact: bool
    alive: bool = True


class _Unit:
    """Messages that stay or go together, with their cost kept current for the trimmer.

    The cost is kept as plain counters; the trimmer's :class:`UnitCost` is built only when it
    asks (it runs only when the history is over a bound), not on every add."""

    __slots__ = ("awaits_results", "entries", "is_user", "messages", "tokens")

    def __init__(self, first: _Entry, role: str) -> None:
        self.entries = [first]
        self.messages = 1
        self.tokens = first.tokens
        self.is_user = role == "user"
        #: An assistant message that requested tool calls: ``tool`` messages join this unit.
        self.awaits_results = role == "assistant" and requests_tool_calls(first.message)

    @property
    def cost(self) -> UnitCost:
        return UnitCost(self.messages, self.tokens, self.is_user)

    def append(self, entry: _Entry) -> None:
        self.entries.append(entry)
        self.messages += 1
        self.tokens += entry.tokens

    def _recost(self) -> None:
        self.messages = len(self.entries)
        self.tokens = sum(e.tokens for e in self.entries)


class _CostView(Sequence[UnitCost]):
    """The units' costs as a sequence, without copying them on every add."""

    def __init__(self, units: deque[_Unit]) -> None:
        self._units = units

    def __len__(self) -> int:
        return len(self._units)

    @overload
    def __getitem__(self, index: int) -> UnitCost: ...
    @overload
    def __getitem__(self, index: slice) -> Sequence[UnitCost]: ...
    def __getitem__(self, index: int | slice) -> UnitCost | Sequence[UnitCost]:
        if isinstance(index, slice):
            return [u.cost for u in list(self._units)[index]]
        return self._units[index].cost


class ConversationHistory:
    """A bounded, trimmed conversation. See the module docstring for the contract."""

    def __init__(
        self,
        settings: HistorySettings | None = None,
        *,
        system_prompt: str | None = None,
        counter: TokenCounter | None = None,
        spill_cache: Cache[str, str] | None = None,
    ) -> None:
        self._settings = settings or HistorySettings()
        self.max_messages = self._settings.max_messages
        self.max_tokens = self._settings.max_tokens
        self._counter = counter
        self._system: _Entry | None = None
        self._units: deque[_Unit] = deque()
        self._messages = 0
        self._tokens = 0
        self._trimmed_messages = 0
        self._trimmed_units = 0
        self._spilled = 0
        self._counter_errors = 0
        #: Made by the first exact count (most histories never count exactly).
        self._memo: LRUCache[str, int] | None = None
        # ``is None``, not ``or``: a shared cache that is empty (as it is at first) is falsy, and
        # the history would spill into a private cache the runtime never sees.
        self._spill = spill_cache if spill_cache is not None else _private_spill_cache()
        self._spill_ids = itertools.count(1)
        if system_prompt is not None:
            self.add({"role": "system", "content": [{"type": "text", "text": system_prompt}]})

    # ------------------------------------------------------------------ budget and counter

    def attach_counter(self, counter: TokenCounter | None) -> None:
        """Count with the loaded model's tokenizer from now on (``None`` detaches it)."""
        self._counter = counter

    def set_context_length(self, context_length: int, *, reserve: int | None = None) -> int:
        """Budget = the model's context length minus ``reserve`` tokens for the answer
        (``HistorySettings.answer_reserve_tokens`` by default). Trims now; returns the budget."""
        reserve = self._settings.answer_reserve_tokens if reserve is None else reserve
        if context_length <= 0 or reserve < 0:
            raise ConfigError(
                f"context length {context_length} and reserve {reserve} give no token budget",
                where="ConversationHistory.set_context_length",
                hint="Pass the loaded model's context length (positive) and a reserve >= 0.",
            )
        self.max_tokens = max(MIN_TOKEN_BUDGET, context_length - reserve)
        self._trim()
        return self.max_tokens

    # ------------------------------------------------------------------ adding

    def add(self, message: Message, *, tokens: int | None = None) -> int:
        """Append one message (``tokens`` if the caller already knows its count) and trim.

        Returns how many messages the trim dropped to make room (0 almost always)."""
        trimmed_before = self._trimmed_messages
        role = _check_message(message)
        if role == "tool":
            message = self._spill_long_results(message)
        entry = self._entry(message, tokens)
        if role == "system":
            if self._system is not None:
                self._tokens -= self._system.tokens
                self._system.alive = False
            self._system = entry
            self._tokens += entry.tokens
            self._trim()
            return self._trimmed_messages - trimmed_before
        last = self._units[-1] if self._units else None
        if role == "tool":
            if last is None or not last.awaits_results:
                raise ValueError(
                    "a tool message must follow the assistant message whose tool calls it "
                    "answers; add the assistant's toolCallRequest message first"
                )
            last.append(entry)
        else:
            self._units.append(_Unit(entry, role))
        self._messages += 1
        self._tokens += entry.tokens
        self._trim()
        return self._trimmed_messages - trimmed_before

    def extend(self, messages: Iterable[Message]) -> None:
        for message in messages:
            self.add(message)

    async def add_counted(self, message: Message) -> None:
        """``add`` then count the new message with the attached tokenizer (if any)."""
        self.add(message)
        await self.recount()

    async def recount(self) -> int:
        """Replace every estimate with the tokenizer's count; returns how many were counted."""
        if self._counter is None:
            return 0
        pending = [e for e in self._entries() if not e.exact]
        counted = 0
        for entry in pending:
            text = message_text(entry.message)
            try:
                exact = await self._counter(text) + MESSAGE_OVERHEAD_TOKENS
            except Exception:  # the estimate stays; a broken tokenizer must not break the agent
                self._counter_errors += 1
                continue
            if self._memo is None:
                self._memo = LRUCache(maxsize=COUNT_MEMO_SIZE)
            self._memo[text] = exact
            if entry.alive and not entry.exact:
                self._tokens += exact - entry.tokens
                entry.tokens = exact
                entry.exact = True
                counted += 1
        for unit in self._units:
            unit._recost()
        self._trim()
        return counted

    # ------------------------------------------------------------------ reading

    def get_all(self) -> list[Message]:
        """Every message, the system prompt first: what the next round sends."""
        return [e.message for e in self._entries()]

    def get_last(self, n: int) -> list[Message]:
        if n <= 0:
            return []
        return self.get_all()[-n:]

    @property
    def system_prompt(self) -> str | None:
        if self._system is None:
            return None
        return message_text(self._system.message).partition("\n")[2]

    def __len__(self) -> int:
        return self._messages + (1 if self._system else 0)

    def stats(self) -> dict[str, Any]:
        return {
            "messages": len(self),
            "tokens": self._tokens,
            "max_messages": self.max_messages,
            "max_tokens": self.max_tokens,
            "trimmed_messages": self._trimmed_messages,
            "trimmed_units": self._trimmed_units,
            "spilled_results": self._spilled,
            "exact_counts": self._counter is not None,
            "counter_errors": self._counter_errors,
        }

    # ------------------------------------------------------------------ clearing, shedding

    def clear(self, *, keep_system: bool = True) -> None:
        for entry in self._entries():
            entry.alive = False
        self._units.clear()
        self._messages = 0
        if keep_system and self._system is not None:
            self._system.alive = True
            self._tokens = self._system.tokens
        else:
            self._system = None
            self._tokens = 0

    def shed(self) -> int:
        """Memory pressure: trim to half of both bounds once; returns messages dropped."""
        before = self._trimmed_messages
        self._trim(max_messages=max(2, self.max_messages // 2), max_tokens=self.max_tokens // 2)
        self._spill.clear()
        return self._trimmed_messages - before

    # ------------------------------------------------------------------ SDK Chat

    def to_chat(self) -> lmstudio.Chat:
        """An SDK ``Chat`` with the same messages (through ``Chat.from_history``)."""
        import lmstudio
        from lmstudio.history import ChatHistoryDataDict

        wire = {"messages": [dict(m) for m in self.get_all()]}
        return lmstudio.Chat.from_history(cast(ChatHistoryDataDict, wire))

    @classmethod
    def from_chat(
        cls, chat: lmstudio.Chat, settings: HistorySettings | None = None
    ) -> ConversationHistory:
        """A history holding ``chat``'s messages (trimmed to the bounds)."""
        history = cls(settings)
        history.extend(chat._get_history_for_prediction()["messages"])
        return history

    # ------------------------------------------------------------------ spill-over

    def read_spilled(self, handle: str, offset: int = 0) -> str:
        """One page of a spilled tool result, with a marker saying where the next page starts."""
        full = self._spill.get(handle)
        if full is None:
            raise ToolArgumentsError(
                f"no spilled tool result under handle {handle!r}",
                tool="read_spilled_result",
                hint="It may have expired; run the original tool again if you still need it.",
            )
        if offset < 0 or offset > len(full):
            raise ToolArgumentsError(
                f"offset {offset} is outside the result (0..{len(full)})",
                tool="read_spilled_result",
                hint="Use the offset given in the last page's marker.",
            )
        end = min(len(full), offset + self._result_share_chars() - PAGE_MARKER_ROOM)
        page = full[offset:end]
        if end < len(full):
            page += f"\n[... {len(full) - end} more characters; next page: offset={end}]"
        return page

    def _result_share_chars(self) -> int:
        share = int(self.max_tokens * TOOL_RESULT_SHARE) * CHARS_PER_TOKEN
        return max(MIN_TOOL_RESULT_CHARS, share)

    def _spill_long_results(self, message: Message) -> Message:
        limit = self._result_share_chars()
        original = message.get("content") or []
        # Copied only when something is cut: most results fit.
        parts: list[Any] | None = None
        for i, part in enumerate(original):
            content = part.get("content") if isinstance(part, Mapping) else None
            if part.get("type") != "toolCallResult" or not isinstance(content, str):
                continue
            if len(content) <= limit:
                continue
            if parts is None:
                parts = list(original)
            handle = f"spill-{next(self._spill_ids)}-{secrets.token_hex(3)}"
            self._spill.set(handle, content)
            self._spilled += 1
            marker = (
                f"\n[... truncated: showing {limit} of {len(content)} characters. The full "
                f'result is kept under handle "{handle}": call read_spilled_result with '
                f'handle="{handle}" and offset={limit} to read on.]'
            )
            parts[i] = {**part, "content": content[:limit] + marker}
        return message if parts is None else {**message, "content": parts}

    # ------------------------------------------------------------------ internals

    def _entry(self, message: Message, tokens: int | None) -> _Entry:
        if tokens is not None:
            return _Entry(message, tokens, exact=True)
        text = message_text(message)
        if self._counter is not None and self._memo is not None:
            known = self._memo.get(text)
            if known is not None:
                return _Entry(message, known, exact=True)
        return _Entry(message, estimate_text_tokens(text), exact=False)

    def _entries(self) -> list[_Entry]:
        out = [self._system] if self._system is not None else []
        for unit in self._units:
            out.extend(unit.entries)
        return out

    def _trim(self, *, max_messages: int | None = None, max_tokens: int | None = None) -> None:
        max_messages = self.max_messages if max_messages is None else max_messages
        max_tokens = self.max_tokens if max_tokens is None else max_tokens
        pinned = 1 if self._system is not None else 0
        if self._messages + pinned <= max_messages and self._tokens <= max_tokens:
            return
        pinned_tokens = self._system.tokens if self._system is not None else 0
        drops = plan_trim(
            _CostView(self._units),
            max_messages=max_messages,
            max_tokens=max_tokens,
            pinned_messages=pinned,
            pinned_tokens=pinned_tokens,
            total_messages=self._messages,
            total_tokens=self._tokens - pinned_tokens,
        )
        if not drops:
            return
        if drops == list(range(len(drops))):  # the usual case: a prefix goes
            for _ in drops:
                self._drop(self._units.popleft())
            return
        dropped = set(drops)
        kept: deque[_Unit] = deque()
        for i, unit in enumerate(self._units):
            if i in dropped:
                self._drop(unit)
            else:
                kept.append(unit)
        self._units = kept

    def _drop(self, unit: _Unit) -> None:
        for entry in unit.entries:
            entry.alive = False
        self._messages -= unit.messages
        self._tokens -= unit.tokens
        self._trimmed_messages += unit.messages
        self._trimmed_units += 1


def spill_reader_tool(history: ConversationHistory) -> Tool:
    """A tool the agent can expose so the model can read a spilled tool result in pages."""
    from elaria.agent.tools import Tool

    def read_spilled_result(handle: str, offset: int = 0) -> str:
        """Read a tool result that was cut because it was too long.

        Args:
            handle: the handle named in the truncation marker
            offset: the character offset to read from (the marker gives the next one)
        """
        return history.read_spilled(handle, offset)

    async def handler(arguments: dict[str, Any]) -> Any:
        return read_spilled_result(**arguments)

    base = Tool.from_function(read_spilled_result)
    # Run on the loop, not in a worker thread: the spill cache is loop-confined.
    return Tool(
        name=base.name,
        description=base.description,
        parameters=base.parameters,
        handler=handler,
        _model=base._model,
    )


def _private_spill_cache() -> Cache[str, str]:
    defaults = CacheSettings()
    return Cache(max_entries=defaults.max_entries, ttl=defaults.ttl_s, name="tool-spill")


_ROLES = ("system", "user", "assistant", "tool")


def _check_message(message: Message) -> str:
    if type(message) is not dict and not isinstance(message, Mapping):
        raise ValueError(f"a history message must be a mapping, got {type(message).__name__}")
    role = message.get("role")
    if role not in _ROLES:
        raise ValueError(f"history message role {role!r} is not one of {', '.join(_ROLES)}")
    content = message.get("content")
    if type(content) is not list and not isinstance(content, list | tuple | str):
        raise ValueError(
            f"history message content must be a list of parts, got {type(content).__name__}"
        )
    return str(role)
