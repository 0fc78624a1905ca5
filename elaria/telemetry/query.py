"""Reading the event log and the audit ledger back: plain functions over JSONL files.

Used by ``elaria events`` and ``elaria audit``; pure apart from reading files, so they are easy
to test and to reuse from a notebook. Lines that are not JSON objects (a line cut short by a full
disk) are skipped and counted, never fatal.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Final

from elaria.errors import ElariaError

__all__ = [
    "JsonlReader",
    "ModelStats",
    "event_stats",
    "parse_since",
    "percentile",
]

_SINCE: Final = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhdw])\s*$", re.IGNORECASE)
_UNIT_SECONDS: Final = {"s": 1, "m": 60, "h": 3600, "d": 86_400, "w": 604_800}


def parse_since(text: str, *, now: datetime | None = None) -> datetime:
    """``30s``, ``15m``, ``1h``, ``2d``, ``1w`` ago, or an ISO 8601 time. ValueError otherwise."""
    now = now or datetime.now(UTC)
    match = _SINCE.match(text)
    if match:
        amount = float(match[1]) * _UNIT_SECONDS[match[2].lower()]
        return now - timedelta(seconds=amount)
    try:
        when = datetime.fromisoformat(text.strip())
    except ValueError:
        raise ValueError(
            f"{text!r} is not a duration or a time; use e.g. 30s, 15m, 1h, 2d, 1w or "
            "2026-01-31T12:00:00"
        ) from None
    return when if when.tzinfo else when.replace(tzinfo=UTC)


@dataclass
class JsonlReader:
    """Iterate the JSON objects of one file — with ``include_rotated``, of its rotated
    predecessors first (``name.10`` … ``name.1``, oldest first), then the file itself.
    ``malformed`` counts skipped lines."""

    path: Path
    include_rotated: bool = False
    malformed: int = 0

    def files(self) -> list[Path]:
        found: list[tuple[int, Path]] = []
        if self.include_rotated and self.path.parent.is_dir():
            prefix = self.path.name + "."
            for sibling in self.path.parent.iterdir():
                suffix = sibling.name[len(prefix) :] if sibling.name.startswith(prefix) else ""
                if suffix.isdigit() and sibling.is_file():
                    found.append((int(suffix), sibling))
        ordered = [p for _, p in sorted(found, reverse=True)]
        return [*ordered, self.path] if self.path.is_file() else ordered

    def check(self, what: str, hint: str) -> None:
        """Raise a readable error when there is nothing to read."""
        if self.path.exists() and not self.path.is_file():
            raise ElariaError(f"{self.path} is not a file", hint=hint)
        if not self.files():
            raise ElariaError(f"no {what} at {self.path}", hint=hint)

    def __iter__(self) -> Iterator[dict[str, Any]]:
        for path in self.files():
            try:
                with path.open("rb") as fh:
                    for raw in fh:
                        record = self.parse(raw)
                        if record is not None:
                            yield record
            except FileNotFoundError:
                continue  # rotated away while we read
            except OSError as exc:
                raise ElariaError(f"cannot read {path}: {exc.strerror}") from None

    def parse(self, raw: bytes) -> dict[str, Any] | None:
        if not raw.strip():
            return None
        try:
            record = json.loads(raw)
        except (ValueError, UnicodeDecodeError):
            self.malformed += 1
            return None
        if not isinstance(record, dict):
            self.malformed += 1
            return None
        return record


def created_at(record: dict[str, Any], key: str = "created") -> datetime | None:
    value = record.get(key)
    if not isinstance(value, str):
        return None
    try:
        when = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None
    return when if when.tzinfo else when.replace(tzinfo=UTC)


def percentile(values: list[float], q: float) -> float | None:
    """Nearest-rank percentile (``q`` in 0..100) of ``values``; None when empty."""
    if not values:
        return None
    ordered = sorted(values)
    rank = max(1, math.ceil(q / 100 * len(ordered)))
    return ordered[min(rank, len(ordered)) - 1]


@dataclass
class ModelStats:
    model: str
    requests: int = 0
    successes: int = 0
    tokens_in: int = 0
    tokens_out: int = 0
    cost_usd: float = 0.0
    latencies: list[float] = field(default_factory=list)

    def add(self, event: dict[str, Any]) -> None:
        self.requests += 1
        self.successes += 1 if event.get("success") else 0
        self.tokens_in += _int(event.get("tokens_in"))
        self.tokens_out += _int(event.get("tokens_out"))
        self.cost_usd += _float(event.get("cost_usd"))
        latency = event.get("latency_ms")
        if isinstance(latency, int | float) and not isinstance(latency, bool):
            self.latencies.append(float(latency))

    def to_dict(self) -> dict[str, Any]:
        return {
            "model": self.model,
            "requests": self.requests,
            "success_rate": self.successes / self.requests if self.requests else None,
            "p50_latency_ms": percentile(self.latencies, 50),
            "p95_latency_ms": percentile(self.latencies, 95),
            "tokens_in": self.tokens_in,
            "tokens_out": self.tokens_out,
            "cost_usd": round(self.cost_usd, 6),
        }


def event_stats(
    events: Iterable[dict[str, Any]], *, since: datetime | None = None
) -> list[ModelStats]:
    """Per-model figures over ``events`` (created at or after ``since``), plus an ``(all)`` row
    first."""
    total = ModelStats("(all)")
    per_model: dict[str, ModelStats] = {}
    for event in events:
        if since is not None:
            when = created_at(event)
            if when is None or when < since:
                continue
        model = str(event.get("model") or "?")
        per_model.setdefault(model, ModelStats(model)).add(event)
        total.add(event)
    return [total, *sorted(per_model.values(), key=lambda s: s.model)]


def _int(value: Any) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) else 0


def _float(value: Any) -> float:
    if isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value):
        return float(value)
    return 0.0
