"""``elaria run`` and ``elaria chat`` as a user runs them: real processes, exit codes, output."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

#: The done-when bound for ``--backend lmstudio`` with nothing reachable.
LMSTUDIO_FAIL_FAST_S = 5.0
#: Bound on any CLI process in these tests (start-up included, on a busy machine).
PROCESS_TIMEOUT_S = 60


def elaria(
    *args: str, env: dict[str, str] | None = None, stdin: str | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "elaria.cli", *args],
        capture_output=True,
        text=True,
        input=stdin,
        timeout=PROCESS_TIMEOUT_S,
        env={**os.environ, **(env or {})},
        check=False,
    )


def test_run_with_lmstudio_unreachable_fails_fast_with_one_paragraph() -> None:
    started = time.monotonic()
    out = elaria("run", "hello", "--backend", "lmstudio")
    elapsed = time.monotonic() - started
    assert out.returncode == 1
    assert elapsed < LMSTUDIO_FAIL_FAST_S, f"took {elapsed:.1f} s"
    assert "No LM Studio server answered" in out.stderr
    assert "localhost:1234" in out.stderr
    assert "Start LM Studio" in out.stderr
    assert "--backend embedded" in out.stderr
    assert "Traceback" not in out.stderr
    assert out.stdout == ""


def test_run_json_on_the_embedded_scripted_engine_creates_the_sample_workspace(
    tmp_path: Path,
) -> None:
    out = elaria("run", "hello there", "--json", env={"ELARIA_EMBEDDED__ENGINE": "scripted"})
    assert out.returncode == 0, out.stderr
    report = json.loads(out.stdout)
    assert report["ok"] is True
    assert report["result"]["answer"] == "You said: hello there"
    assert report["result"]["rounds"] == 1
    assert report["events"][0]["kind"] == "run_started"
    assert "list_dir" in report["events"][0]["tools"]
    assert report["events"][-1]["kind"] == "final_answer"
    assert "No LM Studio found" in out.stderr  # the fallback banner
    assert (tmp_path / "workspace" / "notes.md").is_file()
    assert (tmp_path / "logs" / "inference.jsonl").is_file()


def test_run_streams_the_answer_and_a_summary_line() -> None:
    out = elaria("run", "hi", "--backend", "embedded", env={"ELARIA_EMBEDDED__ENGINE": "scripted"})
    assert out.returncode == 0, out.stderr
    lines = out.stdout.strip().splitlines()
    assert lines[0] == "You said: hi"
    assert "1 round · 0 tool calls" in lines[-1]
    assert "No LM Studio found" not in out.stderr  # asked for embedded: no fallback banner


def test_run_with_bad_settings_is_exit_2_without_traceback(tmp_path: Path) -> None:
    (tmp_path / "elaria.toml").write_text("[agent]\nmax_iterations = 0\n")
    out = elaria("run", "hi", "--json")
    assert out.returncode == 2
    report = json.loads(out.stdout)
    assert report["ok"] is False
    assert "agent.max_iterations" in report["error"]["message"]
    assert "Traceback" not in out.stderr


def test_chat_keeps_history_and_answers_slash_commands() -> None:
    script = "/tools\nmy name is Ann\n/history\n/health\n/reset\n/history\n/nope\n/quit\n"
    out = elaria(
        "chat", "--backend", "embedded", env={"ELARIA_EMBEDDED__ENGINE": "scripted"}, stdin=script
    )
    assert out.returncode == 0, out.stderr
    assert "read_file" in out.stdout  # /tools
    assert "You said: my name is Ann" in out.stdout
    assert "3 messages" in out.stdout  # system, user, assistant
    assert "conversation forgotten" in out.stdout
    assert "unknown command /nope" in out.stdout
    assert '"status"' in out.stdout  # /health shows the runtime's health snapshot
    assert '"sections"' in out.stdout
    assert "Traceback" not in out.stderr


def test_run_serves_health_while_running_when_asked() -> None:
    out = elaria(
        "run",
        "hi",
        "--backend",
        "embedded",
        "--health-port",
        "0",
        env={"ELARIA_EMBEDDED__ENGINE": "scripted"},
    )
    assert out.returncode == 0, out.stderr
    assert "health: http://127.0.0.1:" in out.stderr
    assert "/health (and /metrics)" in out.stderr


def test_health_port_out_of_range_is_a_settings_error() -> None:
    out = elaria("run", "hi", "--health-port", "70000")
    assert out.returncode == 2
    assert "health.port" in out.stderr
    assert "Traceback" not in out.stderr
