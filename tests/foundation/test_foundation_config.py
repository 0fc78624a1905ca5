"""Settings: sources and their precedence, ranges, the all-problems report, secrets."""

from __future__ import annotations

from pathlib import Path

import pytest

from elaria.config import LMStudioSettings, Settings, load_settings
from elaria.errors import ConfigError


def test_defaults_are_valid() -> None:
    s = load_settings()
    assert s.lmstudio.temperature == pytest.approx(0.2)
    assert s.history.max_messages == 50
    assert s.memory.warning_threshold < s.memory.critical_threshold


def test_precedence_defaults_toml_env_arguments(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "elaria.toml").write_text("[lmstudio]\nmax_tokens = 100\ntemperature = 0.5\n")
    assert load_settings().lmstudio.max_tokens == 100
    monkeypatch.setenv("ELARIA_LMSTUDIO__MAX_TOKENS", "200")
    s = load_settings()
    assert s.lmstudio.max_tokens == 200
    assert s.lmstudio.temperature == pytest.approx(0.5)
    s = load_settings(lmstudio={"max_tokens": 300})
    assert s.lmstudio.max_tokens == 300


def test_every_problem_is_reported_at_once(tmp_path: Path) -> None:
    (tmp_path / "elaria.toml").write_text(
        "[lmstudio]\ntemperature = 5\nmax_tokens = 0\nhosts = ['http://localhost:1234']\n"
        "[memory]\nwarning_threshold = 0.95\n"
        "[logging]\nservice_name = 'Bad Name'\nlevel = 'loud'\n"
        "[agent]\nmax_iterations = 1000\n"
    )
    with pytest.raises(ConfigError) as info:
        load_settings()
    fields = {p.field for p in info.value.problems}
    assert {
        "lmstudio.temperature",
        "lmstudio.max_tokens",
        "lmstudio.hosts",
        "logging.service_name",
        "logging.level",
        "agent.max_iterations",
        "memory",
    } <= fields
    by_field = {p.field: p for p in info.value.problems}
    assert by_field["lmstudio.temperature"].allowed == "0.0 <= value <= 2.0"
    assert by_field["agent.max_iterations"].value == 1000
    assert "warning_threshold must be below critical_threshold" in by_field["memory"].allowed
    assert all(p.fix for p in info.value.problems)


@pytest.mark.parametrize(
    ("env", "value"),
    [
        ("ELARIA_LMSTUDIO__TIMEOUT_MS", "999"),
        ("ELARIA_LMSTUDIO__TIMEOUT_MS", "600001"),
        ("ELARIA_RECONNECT__MAX_ATTEMPTS", "0"),
        ("ELARIA_RECONNECT__INITIAL_DELAY_MS", "99"),
        ("ELARIA_RECONNECT__MAX_DELAY_MS", "300001"),
        ("ELARIA_RECONNECT__MAX_DELAY_MS", "999"),
        ("ELARIA_HISTORY__MAX_MESSAGES", "1001"),
        ("ELARIA_HISTORY__MAX_TOKENS", "999"),
        ("ELARIA_MEMORY__CHECK_INTERVAL_MS", "999"),
        ("ELARIA_LMSTUDIO__TEMPERATURE", "-0.1"),
        ("ELARIA_LMSTUDIO__MAX_TOKENS", "1000001"),
    ],
)
def test_ranges_from_the_issue_are_enforced(
    monkeypatch: pytest.MonkeyPatch, env: str, value: str
) -> None:
    monkeypatch.setenv(env, value)
    with pytest.raises(ConfigError):
        load_settings()


def test_bad_toml_syntax_is_a_config_error_not_a_traceback(tmp_path: Path) -> None:
    (tmp_path / "elaria.toml").write_text("[lmstudio\n")
    with pytest.raises(ConfigError) as info:
        load_settings()
    assert "not valid TOML" in str(info.value)
    assert "line 1" in str(info.value)


def test_missing_explicit_config_file_is_reported(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ELARIA_CONFIG", "nowhere/elaria.toml")
    with pytest.raises(ConfigError, match="does not exist"):
        load_settings()


def test_unknown_keys_are_refused_with_their_name(tmp_path: Path) -> None:
    (tmp_path / "elaria.toml").write_text("[lmstudio]\ntemprature = 0.3\n")
    with pytest.raises(ConfigError) as info:
        load_settings()
    assert info.value.problems[0].field == "lmstudio.temprature"


def test_secrets_are_never_rendered(tmp_path: Path) -> None:
    token = "sk-lm-abcdEFGH:abcdefghij0123456789"
    s = Settings(lmstudio=LMStudioSettings.model_validate({"api_token": token}))
    assert token not in repr(s)
    assert token not in str(s.model_dump())
    assert s.lmstudio.api_token is not None
    assert s.lmstudio.api_token.get_secret_value() == token
    (tmp_path / "elaria.toml").write_text(f"[lmstudio]\napi_token = '{token}'\nmax_tokens = 0\n")
    with pytest.raises(ConfigError) as info:
        load_settings()
    assert token not in str(info.value)


def test_failover_targets_are_hosts_then_models() -> None:
    lm = LMStudioSettings(hosts=["ws://a:1", "ws://b:2"], model="m1", models=["m2"])
    s = Settings(lmstudio=lm)
    pairs = [(t.host, t.model) for t in s.lmstudio.targets()]
    assert pairs == [("ws://a:1", "m1"), ("ws://a:1", "m2"), ("ws://b:2", "m1"), ("ws://b:2", "m2")]
