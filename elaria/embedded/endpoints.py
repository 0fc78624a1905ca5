"""The endpoints of the embedded server (§3 of the protocol spec), minus ``predict``.

:class:`Backend` owns the catalogue, the engine and the per-model locks, and exposes one handler
per endpoint. RPC handlers are ``async (param) -> result`` (``None`` for void endpoints); channel
handlers are ``async (channel, param) -> None`` and stream with ``channel.send``. A handler
fails with :class:`ProtocolError` (becomes ``rpcError``/``channelError``) or
:class:`BadParameter` (becomes a ``communicationWarning`` and no reply, like the real server).

Loop-confined to the server's event loop. A handler cancelled because its socket died leaves the
catalogue consistent: state changes happen after the awaits they depend on.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hashlib
import os
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, Protocol

from elaria.embedded.catalogue import Catalogue, Domain, Instance, model_info
from elaria.embedded.engine import Engine, ModelSpec
from elaria.embedded.envelope import BadParameter, ProtocolError

__all__ = ["Backend", "ChannelLike", "RpcHandler", "fields_of", "param_dict"]

Json = dict[str, Any]
RpcHandler = Callable[[Any], Awaitable[Any]]
#: Default context length of a new instance when the client asks for none.
DEFAULT_CONTEXT_LENGTH = 4096
#: What ``version`` reports: a current LM Studio release line.
SERVER_VERSION = {"version": "0.3.30", "build": 1}
_FILE_TYPES = {
    ".png": "image",
    ".jpg": "image",
    ".jpeg": "image",
    ".gif": "image",
    ".webp": "image",
    ".txt": "text/plain",
    ".md": "text/plain",
    ".pdf": "application/pdf",
    ".doc": "application/word",
    ".docx": "application/word",
}


class ChannelLike(Protocol):
    cancelled: asyncio.Event

    async def send(self, message: Json) -> None: ...


def param_dict(param: Any, endpoint: str) -> Mapping[str, Any]:
    if not isinstance(param, Mapping):
        raise BadParameter(f"{endpoint}: parameter must be an object, got {type(param).__name__}")
    return param


def _str(param: Mapping[str, Any], key: str, endpoint: str) -> str:
    value = param.get(key)
    if not isinstance(value, str):
        raise BadParameter(f"{endpoint}: {key!r} must be a string")
    return value


def fields_of(stack: Any, layer: str | None = None) -> dict[str, Any]:
    """Merge a KvConfigStack's fields (later layers win), or one named layer's."""
    merged: dict[str, Any] = {}
    layers = stack.get("layers", []) if isinstance(stack, Mapping) else []
    for item in layers:
        if not isinstance(item, Mapping) or (layer and item.get("layerName") != layer):
            continue
        config = item.get("config")
        for f in config.get("fields", []) if isinstance(config, Mapping) else []:
            if isinstance(f, Mapping) and isinstance(f.get("key"), str):
                merged[f["key"]] = f.get("value")
    return merged


class Backend:
    """Model lifecycle and the non-streaming endpoints. ``jit``: predict loads on demand."""

    def __init__(
        self,
        engine: Engine,
        *,
        jit: bool = True,
        queue_per_model: bool = True,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.engine = engine
        self.clock = clock
        self.catalogue = Catalogue(engine.catalogue())
        self.jit = jit
        self.queue_per_model = queue_per_model
        self.files: dict[str, Json] = {}
        self._load_locks: dict[str, asyncio.Lock] = {}
        self._model_locks: dict[str, asyncio.Lock] = {}

    # ------------------------------------------------------------------ lifecycle

    def model_lock(self, identifier: str) -> asyncio.Lock:
        """Predictions to one instance run one at a time, like the real server."""
        return self._model_locks.setdefault(identifier, asyncio.Lock())

    async def load_instance(
        self,
        spec: ModelSpec,
        *,
        identifier: str | None = None,
        context_length: int | None = None,
        ttl_ms: int | None = None,
    ) -> Instance:
        ctx = min(context_length or DEFAULT_CONTEXT_LENGTH, spec.max_context_length)
        await self.engine.load(spec.model_key, ctx)
        inst = self.catalogue.add(spec, identifier=identifier, context_length=ctx, ttl_ms=ttl_ms)
        inst.loaded_ms = int(self.clock() * 1000)
        return inst

    async def unload_instance(self, identifier: str) -> None:
        inst = self.catalogue.remove(identifier)
        inst.unloaded.set()
        self._model_locks.pop(identifier, None)
        if self.catalogue.instances_of(inst.spec.model_key) == 0:
            await self.engine.unload(inst.spec.model_key)

    async def preload(self, keys: list[str]) -> None:
        for key in keys:
            spec = self.catalogue.find_spec(key, None)
            if self.catalogue.match_loaded({"identifier": key}, spec.type) is None:
                await self.load_instance(spec)

    async def get_or_jit_load(self, specifier: Any, domain: Domain) -> Instance:
        """A loaded instance for ``specifier``; JIT-loads a downloaded model when allowed."""
        try:
            return self.catalogue.resolve(specifier, domain)
        except ProtocolError:
            query = specifier.get("query") if isinstance(specifier, Mapping) else None
            key = query.get("identifier") if isinstance(query, Mapping) else None
            if not self.jit or not isinstance(key, str) or key not in self.catalogue.specs:
                raise
        async with self._load_locks.setdefault(key, asyncio.Lock()):
            found = self.catalogue.match_loaded({"identifier": key}, domain)
            if found is not None:
                return found
            return await self.load_instance(self.catalogue.find_spec(key, domain))

    def touch(self, inst: Instance) -> None:
        inst.last_used_ms = int(self.clock() * 1000)

    def expired(self) -> list[str]:
        """Idle instances whose TTL ran out (never one that is predicting or queued)."""
        now_ms = int(self.clock() * 1000)
        out = []
        for ident, inst in self.catalogue.loaded.items():
            lock = self._model_locks.get(ident)
            busy = lock is not None and lock.locked()
            idle_since = inst.last_used_ms if inst.last_used_ms is not None else inst.loaded_ms
            if inst.ttl_ms is not None and not busy and now_ms - idle_since >= inst.ttl_ms:
                out.append(ident)
        return out

    async def unload_expired(self) -> list[str]:
        """Unload every instance :meth:`expired` names (LM Studio's idle TTL); returns them."""
        gone = self.expired()
        for ident in gone:
            if ident in self.catalogue.loaded:
                await self.unload_instance(ident)
        return gone

    # ------------------------------------------------------------------ load channels

    async def get_or_load(self, domain: Domain, channel: ChannelLike, param: Any) -> None:
        p = param_dict(param, "getOrLoad")
        key = _str(p, "identifier", "getOrLoad")
        ttl = p.get("loadTtlMs") if isinstance(p.get("loadTtlMs"), int) else None
        ctx = fields_of(p.get("loadConfigStack")).get(f"{domain}.load.contextLength")
        async with self._load_locks.setdefault(key, asyncio.Lock()):
            found = self.catalogue.match_loaded({"identifier": key}, domain)
            if found is not None:
                await channel.send({"type": "alreadyLoaded", "info": found.info()})
                return
            spec = self.catalogue.find_spec(key, domain)
            ident = self.catalogue.new_identifier(spec.model_key)
            await channel.send(
                {"type": "startLoading", "identifier": ident, "info": model_info(spec)}
            )
            inst = await self.load_instance(
                spec, identifier=ident, context_length=_int_or_none(ctx), ttl_ms=ttl
            )
            await channel.send({"type": "loadProgress", "progress": 1.0})
            await channel.send({"type": "loadSuccess", "info": inst.info()})

    async def load_model(self, domain: Domain, channel: ChannelLike, param: Any) -> None:
        p = param_dict(param, "loadModel")
        key = _str(p, "modelKey", "loadModel")
        ident = p.get("identifier") if isinstance(p.get("identifier"), str) else None
        ttl = p.get("ttlMs") if isinstance(p.get("ttlMs"), int) else None
        ctx = fields_of(p.get("loadConfigStack")).get(f"{domain}.load.contextLength")
        spec = self.catalogue.find_spec(key, domain)
        if ident is not None and ident in self.catalogue.loaded:
            raise ProtocolError(f'A model with identifier "{ident}" is already loaded')
        await channel.send({"type": "resolved", "info": model_info(spec)})
        await channel.send({"type": "progress", "progress": 0.5})
        inst = await self.load_instance(
            spec, identifier=ident, context_length=_int_or_none(ctx), ttl_ms=ttl
        )
        await channel.send({"type": "progress", "progress": 1.0})
        await channel.send({"type": "success", "info": inst.info()})

    # ------------------------------------------------------------------ RPCs

    def rpc_handlers(self, domain: Domain) -> dict[str, RpcHandler]:
        return {
            "listLoaded": lambda _p: self._list_loaded(domain),
            "getModelInfo": lambda p: self._model_info(domain, p),
            "getLoadConfig": lambda p: self._load_config(domain, p),
            "unloadModel": self._unload,
            "tokenize": lambda p: self._tokenize(domain, p, count=False),
            "countTokens": lambda p: self._tokenize(domain, p, count=True),
            **(
                {"applyPromptTemplate": self._apply_template}
                if domain == "llm"
                else {"embedString": self._embed}
            ),
        }

    def system_handlers(self) -> dict[str, RpcHandler]:
        return {
            "listDownloadedModels": self._list_downloaded,
            "version": self._version,
            "info": self._info,
        }

    def files_handlers(self) -> dict[str, RpcHandler]:
        return {"uploadFileBase64": self._upload}

    def repository_handlers(self) -> dict[str, RpcHandler]:
        return {"searchModels": self._search}

    async def _list_loaded(self, domain: Domain) -> list[Json]:
        return self.catalogue.list_loaded(domain)

    async def _list_downloaded(self, _param: Any) -> list[Json]:
        return self.catalogue.downloaded()

    async def _version(self, _param: Any) -> Json:
        return dict(SERVER_VERSION)

    async def _info(self, _param: Any) -> Json:
        return {"pid": os.getpid(), "isDaemon": False, "version": SERVER_VERSION["version"]}

    async def _model_info(self, domain: Domain, param: Any) -> Json | None:
        p = param_dict(param, "getModelInfo")
        try:
            return self.catalogue.resolve(p.get("specifier"), domain).info()
        except ProtocolError:
            if p.get("throwIfNotFound", True) is False:
                return None  # a void result: "nothing matches"
            raise

    async def _load_config(self, domain: Domain, param: Any) -> Json:
        p = param_dict(param, "getLoadConfig")
        return self.catalogue.resolve(p.get("specifier"), domain).load_config_kv()

    async def _unload(self, param: Any) -> None:
        p = param_dict(param, "unloadModel")
        await self.unload_instance(_str(p, "identifier", "unloadModel"))

    async def _tokenize(self, domain: Domain, param: Any, *, count: bool) -> Json:
        endpoint = "countTokens" if count else "tokenize"
        p = param_dict(param, endpoint)
        text = _str(p, "inputString", endpoint)
        inst = self.catalogue.resolve(p.get("specifier"), domain)
        tokens = await self.engine.tokenize(inst.spec.model_key, text)
        return {"tokenCount": len(tokens)} if count else {"tokens": tokens}

    async def _apply_template(self, param: Any) -> Json:
        p = param_dict(param, "applyPromptTemplate")
        inst = self.catalogue.resolve(p.get("specifier"), "llm")
        history = p.get("history")
        messages = history.get("messages") if isinstance(history, Mapping) else None
        if not isinstance(messages, list):
            raise BadParameter("applyPromptTemplate: history.messages must be a list")
        opts = p.get("opts") if isinstance(p.get("opts"), Mapping) else {}
        tools = opts.get("toolDefinitions") if isinstance(opts, Mapping) else None
        text = await self.engine.apply_template(inst.spec.model_key, messages, tools)
        return {"formatted": text}

    async def _embed(self, param: Any) -> Json:
        p = param_dict(param, "embedString")
        text = _str(p, "inputString", "embedString")
        inst = self.catalogue.resolve(p.get("modelSpecifier"), "embedding")
        self.touch(inst)
        return {"embedding": await self.engine.embed(inst.spec.model_key, text)}

    async def _upload(self, param: Any) -> Json:
        p = param_dict(param, "uploadFileBase64")
        name = _str(p, "name", "uploadFileBase64")
        try:
            content = base64.b64decode(_str(p, "contentBase64", "uploadFileBase64"), validate=True)
        except (binascii.Error, ValueError) as exc:
            raise ProtocolError(f"File {name!r} is not valid base64: {exc}") from exc
        ext = os.path.splitext(name)[1].lower()
        ident = f"{int(time.time() * 1000)}-{hashlib.sha256(content).hexdigest()[:12]}{ext}"
        handle: Json = {
            "identifier": ident,
            "fileType": _FILE_TYPES.get(ext, "unknown" if not content.isascii() else "text/other"),
            "sizeBytes": len(content),
        }
        self.files[ident] = {**handle, "name": name}
        return handle

    async def _search(self, _param: Any) -> Json:
        return {"results": []}


def _int_or_none(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None
