"""Token sampling for the llama engine, with a grammar that costs little when the model agrees.

llama-cpp-python's own chain applies a grammar to the whole vocabulary (262,144 tokens for
Gemma 3) before every token; on two cores that made a tool-call round several times slower than
free text. :class:`Sampler` does what llama.cpp's own tools do: it samples from the raw logits
first and asks the grammar about that single token; only when the grammar rejects it does it
apply the grammar to the whole vocabulary and sample again. The result is the same choice (the
grammar-constrained distribution), because a token the grammar accepts keeps its logit.

Not thread-safe: one sampler per round, used only on the engine's worker thread, and
:meth:`Sampler.close` frees the native objects.
"""

from __future__ import annotations

import ctypes
import math
from typing import Any

import numpy as np

__all__ = ["GrammarError", "Sampler"]

#: Nucleus settings for temperature > 0 (llama.cpp's defaults).
TOP_K, TOP_P, MIN_P = 40, 0.95, 0.05
_TOKEN_DATA = np.dtype([("id", np.intc), ("logit", np.single), ("p", np.single)], align=True)


class GrammarError(ValueError):
    """llama.cpp could not parse a GBNF grammar."""


class Sampler:
    """Picks the next token from the last evaluated position of ``llm``'s context."""

    def __init__(self, llm: Any, *, temperature: float, grammar: str | None, seed: int) -> None:
        import llama_cpp

        self._lib = llama_cpp
        self._llm = llm
        self._greedy = temperature <= 0.0
        vocab = llama_cpp.llama_model_get_vocab(llm.model)
        self._n_vocab = int(llama_cpp.llama_vocab_n_tokens(vocab))
        self._chain = llama_cpp.llama_sampler_chain_init(
            llama_cpp.llama_sampler_chain_default_params()
        )
        if self._greedy:
            self._add(llama_cpp.llama_sampler_init_greedy())
        else:
            self._add(llama_cpp.llama_sampler_init_top_k(TOP_K))
            self._add(llama_cpp.llama_sampler_init_top_p(TOP_P, 1))
            self._add(llama_cpp.llama_sampler_init_min_p(MIN_P, 1))
            self._add(llama_cpp.llama_sampler_init_temp(temperature))
            self._add(llama_cpp.llama_sampler_init_dist(seed))
        self._grammar = None
        if grammar is not None:
            self._grammar = llama_cpp.llama_sampler_init_grammar(
                vocab, grammar.encode("utf-8"), b"root"
            )
            if not self._grammar:
                self.close()
                raise GrammarError("llama.cpp could not parse the grammar")
        self._one = (llama_cpp.llama_token_data * 1)()
        self._all: np.ndarray[Any, Any] | None = None
        self.rejections = 0  # how often the slow path ran (for stats and tests)

    def _add(self, sampler: Any) -> None:
        self._lib.llama_sampler_chain_add(self._chain, sampler)

    def next_token(self) -> int:
        lib = self._lib
        token = int(lib.llama_sampler_sample(self._chain, self._llm.ctx, -1))
        if self._grammar is None:
            return token
        if not self._grammar_allows(token):
            self.rejections += 1
            token = self._constrained_token()
        lib.llama_sampler_accept(self._grammar, token)
        return token

    def _grammar_allows(self, token: int) -> bool:
        lib = self._lib
        self._one[0] = lib.llama_token_data(token, 0.0, 0.0)
        arr = lib.llama_token_data_array(data=self._one, size=1, selected=-1, sorted=False)
        lib.llama_sampler_apply(self._grammar, ctypes.byref(arr))
        return not math.isinf(self._one[0].logit)

    def _constrained_token(self) -> int:
        lib = self._lib
        if self._all is None:
            self._all = np.empty(self._n_vocab, dtype=_TOKEN_DATA)
        data = self._all
        logits = np.ctypeslib.as_array(
            lib.llama_get_logits_ith(self._llm.ctx, -1), shape=(self._n_vocab,)
        )
        data["id"] = np.arange(self._n_vocab, dtype=np.intc)
        data["logit"] = logits
        data["p"] = 0.0
        arr = lib.llama_token_data_array(
            data=data.ctypes.data_as(lib.llama_token_data_p),
            size=self._n_vocab,
            selected=-1,
            sorted=False,
        )
        lib.llama_sampler_apply(self._grammar, ctypes.byref(arr))
        lib.llama_sampler_apply(self._chain, ctypes.byref(arr))
        token = int(arr.data[arr.selected].id)  # samplers may reorder or shrink the array
        lib.llama_sampler_accept(self._chain, token)
        return token

    def close(self) -> None:
        lib = self._lib
        if self._grammar:
            lib.llama_sampler_free(self._grammar)
            self._grammar = None
        if self._chain:
            lib.llama_sampler_free(self._chain)
            self._chain = None
