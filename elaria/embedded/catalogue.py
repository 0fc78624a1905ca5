"""Model state of the embedded server: what is downloaded, what is loaded, under which identifier.

:class:`Catalogue` is plain state plus the wire shapes of model info (§3.0 of the protocol spec):
it resolves model specifiers, names new instances (``key``, ``key:2``, ``key:3``...) and raises
:class:`~elaria.embedded.envelope.ProtocolError` with the real ``displayData`` codes. It does no
I/O; the endpoints call the engine's ``load``/``unload`` around it. Loop-confined: only the
server's event loop touches it.
"""

from __future__ import annotations

import asyncio
import re
import secrets
import string
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from elaria.embedded.engine import ModelSpec
from elaria.embedded.envelope import (
    DOMAIN_MISMATCH,
    IDENTIFIER_NOT_FOUND,
    NO_MODEL_MATCHING_QUERY,
    PATH_NOT_FOUND,
    ProtocolError,
)

__all__ = ["Catalogue", "Instance", "model_info"]

Domain = Literal["llm", "embedding"]
#: How many names an error's ``*Sample`` list carries (the real server sends a short sample).
_SAMPLE = 5
_REF_ALPHABET = string.ascii_letters + string.digits


def _quantization(name: str | None) -> dict[str, Any] | None:
    if not name:
        return None
    bits = re.search(r"(\d+)", name)
    return {"name": name, "bits": int(bits.group(1)) if bits else None}


def model_info(spec: ModelSpec) -> dict[str, Any]:
    """``LlmInfo`` / ``EmbeddingModelInfo`` plus the fields the current real server adds."""
    info: dict[str, Any] = {
        "type": spec.type,
        "modelKey": spec.model_key,
        "format": "gguf",
        "displayName": spec.display_name,
        "publisher": spec.publisher,
        "path": spec.path,
        "sizeBytes": spec.size_bytes,
        "indexedModelIdentifier": spec.path,
        "deviceIdentifier": None,
        "maxContextLength": spec.max_context_length,
    }
    if spec.params_string:
        info["paramsString"] = spec.params_string
    if spec.architecture:
        info["architecture"] = spec.architecture
    quant = _quantization(spec.quantization)
    if quant:
        info["quantization"] = quant
    if spec.type == "llm":
        info["vision"] = spec.vision
        info["trainedForToolUse"] = spec.trained_for_tool_use
    return info


@dataclass
class Instance:
    """One loaded model instance."""

    spec: ModelSpec
    identifier: str
    instance_reference: str
    context_length: int
    ttl_ms: int | None = None
    last_used_ms: int | None = None
    loaded_ms: int = 0
    load_config: list[dict[str, Any]] = field(default_factory=list)
    #: Set when the instance is unloaded: running predictions stop with ``modelUnloaded``.
    unloaded: asyncio.Event = field(default_factory=asyncio.Event, compare=False, repr=False)

    @property
    def domain(self) -> Domain:
        return self.spec.type

    def info(self) -> dict[str, Any]:
        return {
            **model_info(self.spec),
            "identifier": self.identifier,
            "instanceReference": self.instance_reference,
            "contextLength": self.context_length,
            "ttlMs": self.ttl_ms,
            "lastUsedTime": self.last_used_ms,
        }

    def load_config_kv(self) -> dict[str, Any]:
        """The KvConfig ``getLoadConfig`` and ``predict.success`` report."""
        return {
            "fields": [{"key": f"{self.domain}.load.contextLength", "value": self.context_length}]
        }


class Catalogue:
    """Downloaded models (from the engine) and loaded instances, by identifier."""

    def __init__(self, specs: Sequence[ModelSpec]) -> None:
        self.specs: dict[str, ModelSpec] = {s.model_key: s for s in specs}
        self.loaded: dict[str, Instance] = {}

    # ------------------------------------------------------------------ downloaded

    def downloaded(self) -> list[dict[str, Any]]:
        return [model_info(s) for s in self.specs.values()]

    def find_spec(self, key: str, domain: Domain | None) -> ModelSpec:
        """A downloaded model by key or path (``generic.pathNotFound`` otherwise)."""
        spec = self.specs.get(key) or next(
            (s for s in self.specs.values() if key in (s.path, s.display_name)), None
        )
        if spec is None:
            paths = [s.model_key for s in self.specs.values() if domain in (None, s.type)]
            raise ProtocolError(
                f'Cannot find a model with path "{key}"',
                code=PATH_NOT_FOUND,
                data={
                    "path": key,
                    "availablePathsSample": paths[:_SAMPLE],
                    "totalModels": len(paths),
                },
            )
        if domain is not None and spec.type != domain:
            raise ProtocolError(
                f'Model "{key}" is a {spec.type} model, not an {domain} model',
                code=DOMAIN_MISMATCH,
                data={"path": spec.path, "actualDomain": spec.type, "expectedDomain": domain},
            )
        return spec

    # ------------------------------------------------------------------ loaded

    def list_loaded(self, domain: Domain) -> list[dict[str, Any]]:
        return [i.info() for i in self.loaded.values() if i.domain == domain]

    def new_identifier(self, key: str) -> str:
        """``key`` for the first instance, then ``key:2``, ``key:3``..."""
        if key not in self.loaded:
            return key
        n = 2
        while f"{key}:{n}" in self.loaded:
            n += 1
        return f"{key}:{n}"

    def add(
        self,
        spec: ModelSpec,
        *,
        identifier: str | None,
        context_length: int | None,
        ttl_ms: int | None,
    ) -> Instance:
        ident = identifier or self.new_identifier(spec.model_key)
        if ident in self.loaded:
            raise ProtocolError(f'A model with identifier "{ident}" is already loaded')
        ctx = min(context_length or min(4096, spec.max_context_length), spec.max_context_length)
        ref = "".join(secrets.choice(_REF_ALPHABET) for _ in range(24))
        inst = Instance(spec, ident, ref, ctx, ttl_ms)
        self.loaded[ident] = inst
        return inst

    def remove(self, identifier: str) -> Instance:
        inst = self.loaded.pop(identifier, None)
        if inst is None:
            raise ProtocolError(
                f'No model found with identifier "{identifier}"',
                code=IDENTIFIER_NOT_FOUND,
                data={"identifier": identifier, **self._loaded_sample(None)},
            )
        return inst

    def instances_of(self, model_key: str) -> int:
        return sum(1 for i in self.loaded.values() if i.spec.model_key == model_key)

    def match_loaded(self, query: Mapping[str, Any], domain: Domain | None) -> Instance | None:
        """Exact identifier first, then model key, then path (lenient like the real server)."""
        candidates = [i for i in self.loaded.values() if domain in (None, i.domain)]
        ident = query.get("identifier")
        path = query.get("path")
        for pick in (
            lambda i: ident is not None and i.identifier == ident,
            lambda i: ident is not None and i.spec.model_key == ident,
            lambda i: ident is not None and i.spec.path == ident,
            lambda i: path is not None and i.spec.path == path,
            lambda i: ident is None and path is None,
        ):
            found = next((i for i in candidates if pick(i)), None)
            if found is not None:
                return found
        return None

    def resolve(self, specifier: Any, domain: Domain | None) -> Instance:
        """A loaded instance for a ``ModelSpecifier`` (query or instanceReference)."""
        if isinstance(specifier, Mapping) and specifier.get("type") == "instanceReference":
            ref = specifier.get("instanceReference")
            found = next((i for i in self.loaded.values() if i.instance_reference == ref), None)
            query: Mapping[str, Any] = {"instanceReference": ref}
        else:
            raw = specifier.get("query") if isinstance(specifier, Mapping) else None
            query = raw if isinstance(raw, Mapping) else {}
            found = self.match_loaded(query, domain)
        if found is None or (domain is not None and found.domain != domain):
            raise ProtocolError(
                "No loaded model satisfies all requirements specified in the query.",
                code=NO_MODEL_MATCHING_QUERY,
                data={"query": dict(query), **self._loaded_sample(domain)},
            )
        return found

    def _loaded_sample(self, domain: Domain | None) -> dict[str, Any]:
        names = [i.identifier for i in self.loaded.values() if domain in (None, i.domain)]
        return {"loadedModelsSample": names[:_SAMPLE], "totalLoadedModels": len(names)}
