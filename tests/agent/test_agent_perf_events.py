"""The inference event line after its fast path: every text field still redacted, every
time (the redaction of repeated texts is cached), and text UTF-8 cannot hold still written."""

from __future__ import annotations

import json
from typing import Any

from elaria.telemetry.events import InferenceEvent

SECRET_KEY = "sk-" + "a1B2c3D4e5F6g7H8i9J0k1L2"


def event(**fields: Any) -> InferenceEvent:
    base: dict[str, Any] = {
        "request_id": "r1",
        "provider": "lmstudio",
        "host": "ws://127.0.0.1:1234",
        "model": "m",
        "latency_ms": 1.0,
        "success": True,
    }
    return InferenceEvent(**{**base, **fields})


def test_every_text_field_is_redacted_on_every_line() -> None:
    leaky = event(
        host=f"ws://user:{SECRET_KEY}@10.0.0.1:1234",
        model=f"model {SECRET_KEY}",
        tenant=SECRET_KEY,
        error_class=f"Bearer {SECRET_KEY}",
        meta={"api_key": "hunter22", "tokens": 5},
    )
    for _ in range(3):  # the first line fills the cache, the next ones read it
        line = leaky.to_line()
        assert SECRET_KEY.encode() not in line
        data = json.loads(line)
        assert data["meta"] == {"api_key": "[REDACTED]", "tokens": 5}
        assert data["host"] == "ws://user:[REDACTED]@10.0.0.1:1234"
        assert data["tenant"] == "[REDACTED]"


def test_a_clean_event_is_written_as_it_is() -> None:
    clean = event(meta={"stop_reason": "eosFound", "ratio": float("nan")})
    data = json.loads(clean.to_line())
    assert data == {**json.loads(clean.model_dump_json()), "meta": data["meta"]}
    assert data["meta"] == {"stop_reason": "eosFound", "ratio": None}
    assert data["host"] == "ws://127.0.0.1:1234"


def test_text_utf8_cannot_hold_is_escaped_not_lost() -> None:
    line = event(model="half \ud800 pair").to_line()
    assert line.endswith(b"\n")
    assert line.count(b"\n") == 1
    assert "half" in json.loads(line)["model"]
