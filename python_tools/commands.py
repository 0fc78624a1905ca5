"""``run_command``: an allowlisted program, checked arguments, resource limits, no shell.

The program must be a bare name in the allowlist (``agent.allowed_commands``; empty by default,
which disables the tool), resolved on ``PATH`` here. Each argument passes
:func:`~elaria.security.check_shell_arg`, and ``--`` goes before them so none is read as an
option. The process runs with ``shell=False``, the workspace as its working directory, a minimal
environment (no inherited secrets), stdin closed, in its own process group, under ``RLIMIT_CPU``,
``RLIMIT_AS``, ``RLIMIT_FSIZE`` and ``RLIMIT_CORE``; its output is capped and a wall-clock
timeout kills the whole group with SIGKILL.

The limits are set by a tiny exec wrapper (``python -c``) rather than ``preexec_fn``, which is
unsafe in a threaded process. The call blocks; it runs in a worker thread. If the awaiting task
is cancelled, the thread still reaps the child by its own timeout.
"""

from __future__ import annotations

import os
import selectors
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from elaria.security import check_program, check_shell_arg
from python_tools._common import tool_error

__all__ = ["CommandLimits", "CommandTools"]

# Sets the limits, then becomes the program: argv = cpu, as, fsize, program path, argv0, args...
_LIMITED_EXEC = (
    "import os,resource as r,sys;a=sys.argv;"
    "r.setrlimit(r.RLIMIT_CPU,(int(a[1]),int(a[1])));"
    "r.setrlimit(r.RLIMIT_AS,(int(a[2]),int(a[2])));"
    "r.setrlimit(r.RLIMIT_FSIZE,(int(a[3]),int(a[3])));"
    "r.setrlimit(r.RLIMIT_CORE,(0,0));"
    "os.execv(a[4],a[5:])"
)
#: Bytes read from the pipes at a time.
_READ_CHUNK = 64 * 1024


@dataclass(frozen=True)
class CommandLimits:
    """Resource limits for one run_command call."""

    #: CPU seconds (RLIMIT_CPU): a busy loop dies even if the wall clock is generous.
    cpu_seconds: int = 10
    #: Address space (RLIMIT_AS): enough for coreutils, grep, git; not for a runaway.
    memory_bytes: int = 512 * 1024 * 1024
    #: Largest file the command may write (RLIMIT_FSIZE).
    file_bytes: int = 64 * 1024 * 1024
    #: stdout + stderr kept; past it the process is killed and the output marked truncated.
    output_bytes: int = 64 * 1024
    #: Default and maximum wall-clock seconds per call.
    default_timeout_s: float = 30.0
    max_timeout_s: float = 120.0


class CommandTools:
    """``run_command`` bound to a working directory and an allowlist."""

    def __init__(
        self,
        workspace: str | os.PathLike[str],
        allowed: Sequence[str],
        *,
        limits: CommandLimits | None = None,
    ) -> None:
        self.workspace = Path(workspace)
        self.allowed = tuple(allowed)
        self.limits = limits or CommandLimits()

    def run_command(
        self, program: str, args: list[str] | None = None, timeout_s: float | None = None
    ) -> dict[str, Any]:
        """Run an allowed program in the workspace (no shell: no pipes, redirects or options).

        Args:
            program: The program's bare name, one of the allowed commands.
            args: Arguments (file names, words); none may start with '-'.
            timeout_s: Seconds before the program is killed (default 30, at most 120).
        """
        check_program(program, self.allowed)
        arguments = [check_shell_arg(a) for a in args or []]
        resolved = shutil.which(program, path=_search_path())
        if resolved is None:
            raise tool_error(
                "run_command",
                f"{program} is allowed but not installed on this machine",
                "Answer without it.",
            )
        limit = self.limits
        timeout = limit.default_timeout_s if timeout_s is None else timeout_s
        timeout = min(timeout, limit.max_timeout_s)
        if timeout <= 0:
            raise tool_error("run_command", "timeout_s must be positive", "Use a few seconds.")
        argv = [
            sys.executable, "-I", "-S", "-c", _LIMITED_EXEC,
            str(limit.cpu_seconds), str(limit.memory_bytes), str(limit.file_bytes),
            resolved, program, *(["--", *arguments] if arguments else []),
        ]  # fmt: skip
        started = time.monotonic()
        try:
            proc = subprocess.Popen(
                argv,
                cwd=self.workspace,
                env=_minimal_env(),
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                shell=False,
                start_new_session=True,
            )
        except OSError as exc:
            raise tool_error("run_command", f"{program} could not start: {exc.strerror}") from exc
        outcome = _collect(proc, timeout, limit.output_bytes)
        result: dict[str, Any] = {
            "program": program,
            "args": arguments,
            "exit_code": proc.returncode,
            "stdout": outcome.stdout.decode("utf-8", errors="replace"),
            "stderr": outcome.stderr.decode("utf-8", errors="replace"),
            "seconds": round(time.monotonic() - started, 3),
        }
        if proc.returncode is not None and proc.returncode < 0:
            result["signal"] = signal.Signals(-proc.returncode).name
        if outcome.timed_out:
            result["timed_out"] = True
            result["hint"] = f"The program was killed after {timeout:g} s."
        if outcome.truncated:
            result["truncated"] = True
            result["hint"] = (
                f"The output passed {limit.output_bytes} bytes; the program was stopped there."
            )
        return result


@dataclass
class _Outcome:
    stdout: bytes
    stderr: bytes
    timed_out: bool
    truncated: bool


def _collect(proc: subprocess.Popen[bytes], timeout: float, cap: int) -> _Outcome:
    """Read both pipes until EOF, the output cap or the deadline; kill the group on the latter."""
    assert proc.stdout is not None
    assert proc.stderr is not None
    buffers = {proc.stdout.fileno(): bytearray(), proc.stderr.fileno(): bytearray()}
    deadline = time.monotonic() + timeout
    timed_out = truncated = False
    with selectors.DefaultSelector() as selector:
        selector.register(proc.stdout, selectors.EVENT_READ)
        selector.register(proc.stderr, selectors.EVENT_READ)
        while selector.get_map():
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                timed_out = True
                break
            for key, _ in selector.select(remaining):
                chunk = os.read(key.fd, _READ_CHUNK)
                if not chunk:
                    selector.unregister(key.fileobj)
                    continue
                buffers[key.fd] += chunk
            if sum(len(b) for b in buffers.values()) > cap:
                truncated = True
                break
    if timed_out or truncated:
        _kill_group(proc)
    # The pipes are at EOF (or the group is dead), so this wait is short; bounded regardless.
    try:
        proc.wait(timeout=max(1.0, deadline - time.monotonic()))
    except subprocess.TimeoutExpired:
        _kill_group(proc)
        proc.wait()
        timed_out = True
    proc.stdout.close()
    proc.stderr.close()
    out, err = (bytes(b) for b in buffers.values())
    if truncated:
        out, err = out[:cap], err[: max(0, cap - len(out))]
    return _Outcome(out, err, timed_out, truncated)


def _kill_group(proc: subprocess.Popen[bytes]) -> None:
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def _search_path() -> str:
    return os.environ.get("PATH") or os.defpath


def _minimal_env() -> dict[str, str]:
    """What a command needs to find its peers and print text; never the caller's secrets."""
    return {"PATH": _search_path(), "LANG": "C.UTF-8", "LC_ALL": "C.UTF-8"}
