"""Where telemetry files may live: ``./logs`` and the user's data directory, nowhere else.

:func:`resolve_telemetry_path` is called once at start-up (``EventLog``/``AuditLedger``
construction). It resolves the candidate with every symlink followed and ``..`` applied, and
accepts it only when the result is, component by component, inside the real path of an allowed
directory. Anything else raises :class:`~elaria.errors.ConfigError` naming the setting, the
resolved path, the allowed directories and the fix. Files are later opened with ``O_NOFOLLOW``
(see :mod:`elaria.telemetry.writer`), so a symlink planted at the file name afterwards is
refused too.

Pure functions of the environment and the working directory; call from any thread.
"""

from __future__ import annotations

import os
from pathlib import Path

from elaria.errors import ConfigError

__all__ = ["allowed_log_dirs", "resolve_telemetry_path", "user_data_dir"]


def user_data_dir() -> Path:
    """``$XDG_DATA_HOME/elaria`` when that is an absolute path, else ``~/.local/share/elaria``."""
    xdg = os.environ.get("XDG_DATA_HOME", "")
    base = Path(xdg) if xdg and os.path.isabs(xdg) else Path.home() / ".local" / "share"
    return base / "elaria"


def allowed_log_dirs() -> tuple[Path, ...]:
    """The real paths of ``./logs`` (relative to the working directory) and the data dir (left
    out when there is no home directory to find it in)."""
    try:
        data_dir = user_data_dir().resolve()
    except RuntimeError:  # no HOME and no passwd entry: only ./logs remains
        return (Path("logs").resolve(),)
    return (Path("logs").resolve(), data_dir)


def resolve_telemetry_path(candidate: str | os.PathLike[str], *, setting: str) -> Path:
    """The real absolute path of ``candidate``, or ConfigError when it leaves the allowed dirs.

    ``setting`` names the configuration field the path came from, for the message.
    """
    raw = os.fspath(candidate)
    if not raw or "\x00" in raw:
        raise ConfigError(
            f"{setting} is not a usable file path: {raw!r}",
            where=setting,
            hint="Use a file name such as 'inference.jsonl' under ./logs.",
        )
    resolved = Path(os.path.realpath(Path(raw).expanduser()))
    allowed = allowed_log_dirs()
    for root in allowed:
        if resolved != root and _inside(resolved, root):
            return resolved
    shown = " or ".join(str(root) for root in allowed)
    raise ConfigError(
        f"{setting} resolves to {resolved}, which is outside the allowed log directories ({shown})",
        where=setting,
        hint=(
            "Telemetry files may only be written under ./logs or the user data directory "
            "($XDG_DATA_HOME/elaria, default ~/.local/share/elaria); symlinks and '..' are "
            "resolved before the check. Set logging.log_dir or the file name accordingly."
        ),
    )


def _inside(path: Path, root: Path) -> bool:
    try:
        return os.path.commonpath([path, root]) == str(root)
    except ValueError:  # different drives (not on POSIX) or mixed absolute/relative
        return False
