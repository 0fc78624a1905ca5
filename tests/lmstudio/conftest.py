"""Fixtures for the LM Studio layer: an in-process embedded server and fast pool settings."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from elaria.config import LMStudioSettings, ReconnectSettings
from elaria.embedded import EmbeddedServer, ScriptedEngine
from elaria.testing import embedded_server


@pytest.fixture
def engine() -> ScriptedEngine:
    return ScriptedEngine()


@pytest.fixture
async def server(engine: ScriptedEngine) -> AsyncIterator[EmbeddedServer]:
    async with embedded_server(engine=engine) as srv:
        yield srv


@pytest.fixture
def fast_reconnect() -> ReconnectSettings:
    """Short delays so reconnect tests take a fraction of a second."""
    return ReconnectSettings(initial_delay_ms=100, max_delay_ms=1_000, stable_after_ms=2_000)


@pytest.fixture
def lms_settings(server: EmbeddedServer) -> LMStudioSettings:
    return LMStudioSettings(
        hosts=[server.ws_url],
        model="scripted-llm",
        connect_timeout_ms=3_000,
        probe_interval_ms=200,
        probe_timeout_ms=1_000,
        first_token_timeout_ms=3_000,
        fragment_gap_timeout_ms=3_000,
    )
