"""Approval policy, remembered rules and their file: sans-I/O apart from a temp directory."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from elaria.agent.approval import (
    APPROVALS_FILE_NAME,
    ApprovalAnswer,
    ApprovalPolicy,
    ApprovalStore,
    approvals_path,
    with_saved_rules,
)
from elaria.config import AgentSettings, ApprovalRule, Settings
from elaria.errors import ConfigError


def policy(**agent: object) -> ApprovalPolicy:
    return ApprovalPolicy(AgentSettings.model_validate(agent))


def test_modes_per_tool_with_globs_and_default() -> None:
    p = policy(approval={"write_file": "ask", "sql_*": "deny"}, default_approval="auto")
    assert p.decide("read_file", {}).verdict == "allow"
    assert p.decide("write_file", {"path": "a"}).verdict == "ask"
    assert p.decide("sql_query", {}).verdict == "deny"
    assert p.decide("sql_query", {}).by == "policy"


def test_a_tools_own_mode_sits_between_the_operators_exact_name_and_globs() -> None:
    p = policy(approval={"fetch": "auto", "mcp_*": "deny"}, default_approval="auto")
    # The operator's exact name wins over what the tool's source asks for ...
    assert p.decide("fetch", {}, "ask").verdict == "allow"
    # ... the tool's own mode wins over the operator's globs and the default ...
    assert p.decide("mcp_shout", {}, "ask").verdict == "ask"
    assert p.decide("other", {}, "deny").verdict == "deny"
    # ... and without one, globs and the default decide as before.
    assert p.decide("mcp_shout", {}).verdict == "deny"
    assert p.decide("other", {}).verdict == "allow"
    assert p.mode("other", "ask") == "ask"


def test_rules_scope_by_argument_and_cannot_be_escaped_with_dotdot() -> None:
    rule = ApprovalRule(tool="write_file", decision="allow", argument="path", pattern="notes/*")
    p = policy(approval={"write_file": "ask"}, approval_rules=[rule])
    assert p.decide("write_file", {"path": "notes/todo.md"}).verdict == "allow"
    assert p.decide("write_file", {"path": "./notes/todo.md"}).verdict == "allow"
    assert p.decide("write_file", {"path": "notes/../secrets.txt"}).verdict == "ask"
    assert p.decide("write_file", {"path": "other/x"}).verdict == "ask"
    assert p.decide("write_file", {}).verdict == "ask"
    decision = p.decide("write_file", {"path": "notes/a"})
    assert decision.by == "rule"
    assert "notes/*" in decision.describe()


def test_deny_rules_win_and_operator_deny_cannot_be_overridden() -> None:
    rules = [
        ApprovalRule(tool="*", decision="allow"),
        ApprovalRule(tool="run_command", decision="deny"),
    ]
    p = policy(approval={"drop_all": "deny"}, approval_rules=rules)
    assert p.decide("run_command", {}).verdict == "deny"
    assert p.decide("list_dir", {}).verdict == "allow"
    assert p.decide("drop_all", {}).verdict == "deny"
    assert p.decide("drop_all", {}).by == "policy"


def test_always_and_never_are_saved_atomically_and_reloaded(tmp_path: Path) -> None:
    store = ApprovalStore(tmp_path / "approvals.json")
    p = ApprovalPolicy(AgentSettings(approval={"write_file": "ask"}), store)
    assert p.remember("write_file", ApprovalAnswer("yes")) is None
    assert not store.path.exists()
    saved = p.remember("write_file", ApprovalAnswer("always", argument="path", pattern="notes/*"))
    assert saved == ApprovalRule(
        tool="write_file", decision="allow", argument="path", pattern="notes/*"
    )
    p.remember("run_command", ApprovalAnswer("never"))
    p.remember("run_command", ApprovalAnswer("never"))  # no duplicate
    assert p.decide("write_file", {"path": "notes/x"}).verdict == "allow"
    data = json.loads(store.path.read_text())
    assert data["version"] == 1
    assert data["rules"] == [
        {"tool": "write_file", "decision": "allow", "argument": "path", "pattern": "notes/*"},
        {"tool": "run_command", "decision": "deny"},
    ]
    assert [p.name for p in tmp_path.iterdir()] == ["approvals.json"]  # no temp file left
    assert store.load() == list(p.rules)


def test_saved_rules_merge_into_settings_beside_the_config_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = tmp_path / "conf" / "elaria.toml"
    config.parent.mkdir()
    config.write_text("[agent]\nmax_iterations = 5\n")
    monkeypatch.setenv("ELARIA_CONFIG", str(config))
    settings = Settings()
    path = approvals_path(settings.agent)
    assert path == config.parent / APPROVALS_FILE_NAME
    ApprovalStore(path).save([ApprovalRule(tool="list_dir", decision="allow")])
    merged = with_saved_rules(settings)
    assert merged.agent.approval_rules == [ApprovalRule(tool="list_dir", decision="allow")]
    assert merged.agent.max_iterations == 5
    assert with_saved_rules(merged) is merged  # idempotent


def test_explicit_approvals_file_setting(tmp_path: Path) -> None:
    agent = AgentSettings(approvals_file=tmp_path / "mine.json")
    assert approvals_path(agent) == tmp_path / "mine.json"


def test_an_invalid_rules_file_names_the_file_and_the_rule(tmp_path: Path) -> None:
    path = tmp_path / "approvals.json"
    path.write_text(json.dumps({"rules": [{"tool": "x", "decision": "allow"}, {"tool": ""}]}))
    with pytest.raises(ConfigError) as info:
        ApprovalStore(path).load()
    text = str(info.value)
    assert "approvals.json" in text
    assert "rules[1]" in text
    path.write_text("{not json")
    with pytest.raises(ConfigError, match="not valid JSON"):
        ApprovalStore(path).load()
    path.write_text("[]")
    with pytest.raises(ConfigError, match="rules"):
        ApprovalStore(path).load()
    assert ApprovalStore(tmp_path / "missing.json").load() == []
