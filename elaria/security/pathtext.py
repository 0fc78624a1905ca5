"""What a path string may contain, and every way a downstream reader might read it.

:func:`check_path_text` refuses characters and sizes no honest path needs. :func:`readings` lists
the spellings another component could turn the same string into (percent-decoding, backslash as
separator, NFKC, ``~`` expansion); :class:`~elaria.security.paths.PathGuard` requires each of
them to stay inside a root. :func:`check_windows_forms` refuses drive letters, UNC paths, device
names, alternate data streams and dot-space components, which a Windows peer would honour.
Pure functions, any thread.
"""

from __future__ import annotations

import os
import re
import unicodedata
from urllib.parse import unquote_to_bytes

from elaria.security.violations import refuse

__all__ = [
    "MAX_COMPONENT_BYTES",
    "MAX_DECODE_ROUNDS",
    "MAX_PATH_BYTES",
    "check_path_text",
    "check_windows_forms",
    "readings",
]

#: PATH_MAX on Linux; longer input is an attack or a mistake.
MAX_PATH_BYTES = 4096
#: NAME_MAX on Linux and most file systems.
MAX_COMPONENT_BYTES = 255
#: Double and triple encoding are real bypasses; deeper nesting is refused rather than chased.
MAX_DECODE_ROUNDS = 3

_REFUSED_CATEGORIES = {
    "Cc": ("path.control", "a control character"),
    "Zl": ("path.control", "a line separator"),
    "Zp": ("path.control", "a paragraph separator"),
    "Cf": ("path.format", "an invisible formatting character (bidi or zero-width)"),
    "Cs": ("path.encoding", "an unpaired surrogate"),
}
_DRIVE = re.compile(r"[A-Za-z]:")
_SEPARATORS = re.compile(r"[/\\]")
_DEVICE_NAMES = frozenset(
    {"CON", "PRN", "AUX", "NUL", "CONIN$", "CONOUT$", "CLOCK$"}
    | {f"{kind}{n}" for kind in ("COM", "LPT") for n in "0123456789¹²³"}
)


def check_path_text(text: str) -> None:
    """Refuse empty paths, NUL, control and format characters, and oversized paths."""
    if not text:
        raise refuse("path.empty", "the path is empty; name a file or directory", severity="low")
    if "\x00" in text:
        raise refuse(
            "path.nul", "the path contains a NUL byte; remove it", value=text, severity="high"
        )
    if not (text.isascii() and text.isprintable()):
        for ch in text:
            found = _REFUSED_CATEGORIES.get(unicodedata.category(ch))
            if found is not None:
                rule, what = found
                raise refuse(
                    rule,
                    f"the path contains {what} (U+{ord(ch):04X}); use a plain file name",
                    value=text,
                    severity="high",
                )
    size = len(text.encode("utf-8"))
    if size > MAX_PATH_BYTES:
        raise refuse(
            "path.too_long",
            f"the path is {size} bytes, over the limit of {MAX_PATH_BYTES}; use a shorter path",
            value=text,
        )
    for part in _SEPARATORS.split(text):
        if len(part.encode("utf-8")) > MAX_COMPONENT_BYTES:
            raise refuse(
                "path.component_too_long",
                f"a path component is longer than {MAX_COMPONENT_BYTES} bytes; use shorter names",
                value=text,
            )


def check_windows_forms(text: str) -> None:
    """Refuse what a Windows reader would treat as a drive, share, device or stream."""
    if _DRIVE.match(text):
        raise refuse(
            "path.windows_drive",
            "the path starts with a drive letter; use a path relative to the workspace",
            value=text,
        )
    if text.startswith(("\\\\", "//", "\\/", "/\\")):
        raise refuse(
            "path.windows_unc",
            "the path is a network share (UNC) path; use a path relative to the workspace",
            value=text,
        )
    for part in _SEPARATORS.split(text):
        if ":" in part:
            raise refuse(
                "path.windows_stream",
                f"the path component {part!r} contains ':' (an alternate data stream on "
                "Windows); rename without ':'",
                value=text,
            )
        if part.split(".", 1)[0].rstrip(" ").upper() in _DEVICE_NAMES:
            raise refuse(
                "path.windows_device",
                f"the path component {part!r} is a reserved device name on Windows "
                "(CON, NUL, COM1, ...); choose another name",
                value=text,
            )
        if part not in ("", ".", "..") and not part.strip(". "):
            raise refuse(
                "path.windows_dots",
                f"the path component {part!r} is only dots and spaces, which Windows "
                "reads as '.' or '..'; choose another name",
                value=text,
            )


def readings(text: str) -> list[str]:
    """``text`` first, then each distinct spelling a downstream reader could derive from it."""
    decoded = _percent_decodings(text)
    seen = dict.fromkeys(decoded)
    for form in decoded:
        nfkc = unicodedata.normalize("NFKC", form)
        for variant in {form, nfkc}:
            for spelled in {variant, variant.replace("\\", "/")}:
                seen.setdefault(spelled)
                if spelled.startswith("~"):
                    seen.setdefault(os.path.expanduser(spelled))
    return list(seen)


def _percent_decodings(text: str) -> list[str]:
    forms = [text]
    if "%" not in text:
        return forms
    current = text
    for _ in range(MAX_DECODE_ROUNDS):
        following = _percent_decode_once(current)
        if following == current:
            return forms
        forms.append(following)
        current = following
    if _percent_decode_once(current) != current:
        raise refuse(
            "path.encoding",
            f"the path is percent-encoded more than {MAX_DECODE_ROUNDS} times; send the plain path",
            value=text,
            severity="high",
        )
    return forms


def _percent_decode_once(text: str) -> str:
    try:
        return unquote_to_bytes(text).decode("utf-8")
    except UnicodeDecodeError:
        raise refuse(
            "path.encoding",
            "the path decodes (percent-encoding) to invalid UTF-8; send the plain path",
            value=text,
            severity="high",
        ) from None
