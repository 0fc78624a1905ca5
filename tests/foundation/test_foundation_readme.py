"""The README's two commands are the project's contract with a new user and with CI."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def _commands() -> list[str]:
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    section = readme.split("## Two commands", 1)[1].split("\n## ", 1)[0]
    return [b.strip() for b in re.findall(r"```bash\n(.*?)```", section, flags=re.S)]


def test_readme_has_exactly_two_commands_run_then_test() -> None:
    commands = _commands()
    assert len(commands) == 2
    run, test = commands
    assert "elaria run" in run
    assert "[embedded]" in run
    for gate in ("ruff check", "ruff format --check", "mypy --strict", "pytest"):
        assert gate in test


def test_ci_runs_exactly_the_readme_test_command() -> None:
    ci = (ROOT / ".ci" / "run").read_text(encoding="utf-8")
    assert f"( {_commands()[1]} )" in ci
    assert "passed" in ci  # fails when pytest ran no test


def test_both_commands_install_into_a_project_local_virtualenv() -> None:
    for command in _commands():
        assert command.startswith("python3 -m venv .venv && .venv/bin/pip install")


def test_pyproject_declares_the_extras_and_entry_point() -> None:
    meta = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
    project = meta["project"]
    assert project["scripts"]["elaria"] == "elaria.cli:main"
    assert any(
        d.startswith("llama-cpp-python") for d in project["optional-dependencies"]["embedded"]
    )
    assert any(d.startswith("pytest") for d in project["optional-dependencies"]["dev"])
    assert meta["tool"]["pytest"]["ini_options"]["filterwarnings"] == ["error"]


def test_secrets_and_runtime_output_are_git_ignored() -> None:
    ignored = (ROOT / ".gitignore").read_text(encoding="utf-8").splitlines()
    for pattern in (".env", "*.pem", "*.key", "logs/*", ".venv/", "*.db"):
        assert pattern in ignored
    assert (ROOT / "logs" / ".gitkeep").exists()
    assert (ROOT / "elaria" / "py.typed").exists()
