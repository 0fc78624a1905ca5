"""Security validators: every tool call passes them before anything runs (docs SECURITY.md).

Each refusal raises :class:`elaria.errors.SecurityViolation` with a machine-readable ``rule`` and a
message that tells the model what to do instead, and is logged as a security event (a loguru
record bound with ``kind="security"``).
"""

from __future__ import annotations

from elaria.errors import SecurityViolation
from elaria.security.inputs import cap_result, check_tool_arguments, validate_model_id
from elaria.security.keys import check_keys
from elaria.security.paths import PathGuard
from elaria.security.redact import redact
from elaria.security.shell import check_program, check_shell_arg
from elaria.security.sql import SafeSQLite
from elaria.security.sqlcheck import check_sql
from elaria.security.urls import validate_ws_url

__all__ = [
    "PathGuard",
    "SafeSQLite",
    "SecurityViolation",
    "cap_result",
    "check_keys",
    "check_program",
    "check_shell_arg",
    "check_sql",
    "check_tool_arguments",
    "redact",
    "validate_model_id",
    "validate_ws_url",
]
