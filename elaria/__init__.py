"""Elaria: an agent runtime for LM Studio."""

from __future__ import annotations

__version__ = "0.1.0"

__all__ = ["__version__"]
