"""Shared fixtures of the MCP tests."""

from __future__ import annotations

import pytest

from elaria.config import McpSettings


@pytest.fixture
def fast_settings() -> McpSettings:
    """A health check twice a second, so watch-loop behaviour shows up quickly."""
    return McpSettings(health_interval_ms=500, init_timeout_ms=30_000, call_timeout_ms=20_000)
