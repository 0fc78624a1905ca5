"""Secret redaction for every log sink, event line and audit record.

``redact(value)`` returns a value of the same shape (dict, list, tuple, str, bytes, numbers, None,
nested at any depth) in which every secret is replaced by ``"[REDACTED]"``; everything else comes
back equal to what went in. It is a pure function of its argument: any thread, any loop.

What counts as a secret
-----------------------
*By key* (dict keys, ``key=value`` / ``key: value`` text, URL query parameters, HTTP header lines,
2-item ``(name, value)`` pairs such as header lists). A key is split into lowercase words
(``X-Api-Key`` -> ``x api key``, ``accessToken`` -> ``access token``) and is secret-named when it
contains one of the words below. Two strengths, because LLM code is full of numbers *about*
tokens:

* **strong** — password, passwd, pwd, passphrase, passcode, secret, api key, access/private/
  signing/encryption/master/ssh key, authorization, cookie, set-cookie, credential(s),
  session id: every non-empty string *and number* under the key is redacted (a numeric PIN is a
  secret), recursively through nested containers.
* **token** — token, auth: only *strings* are redacted; numbers stay (``{"token": 1234}`` is an
  LLM token id, not a credential).

A key whose words also include a quantity or metadata word is *not* secret-named, whatever its
value: ``max_tokens``, ``token_count``, ``token_limit``, ``auth_type``, ``token_url``,
``password_file``, ``secret_name``. The plural ``tokens`` is never secret-named
(``prompt_tokens``, ``tokens_per_second``). Values under such keys are still scanned for the
token formats below, so ``{"token_url": "https://x/?token=abc"}`` loses its ``abc``.

``None``, booleans and empty strings are never redacted: they carry no secret.

*By value*, in any string (and inside strings that hold a JSON document, which are parsed,
redacted and re-serialised only when something changed):

* LM Studio keys ``sk-lm-<id>:<secret>`` (whole, including the part after the colon);
  OpenAI/Anthropic-style ``sk-…`` (16+ characters after ``sk-``); GitHub ``ghp_ gho_ ghu_ ghs_
  ghr_ github_pat_``; AWS access key ids (``AKIA…``, ``ASIA…``); JWTs (``eyJ….eyJ….sig``); Slack
  ``xox?-`` tokens; Google ``AIza…`` keys; Stripe ``sk_live_``/``rk_live_`` (and ``_test_``);
  PEM private key blocks (``-----BEGIN … PRIVATE KEY-----`` to its END line, or to the end of a
  text cut short).
* ``Bearer <credential>`` (credentials of 8+ characters that are not a plain lowercase word, so
  "bearer authentication" in prose stays).
* URL userinfo: ``scheme://user:[REDACTED]@host``; a user part alone is redacted when it is long
  enough (16+) to be a token, as in ``https://<token>@github.com``.
* HTTP header lines ``Authorization:``, ``Proxy-Authorization:``, ``Cookie:``, ``Set-Cookie:``,
  ``X-…-Key/Token/Secret:`` — the rest of the line.

Limits: structures deeper than :data:`MAX_DEPTH` are replaced by ``"[REDACTED]"`` below that depth
(fail closed; this also ends reference cycles). Dict keys are themselves scanned for token formats;
if two keys redact to the same text, the later one wins. Objects that are not JSON-like are
returned as they are — serialise them (``str``/``json.dumps(default=str)``) and redact the result.

Speed: it runs on every log record. All patterns are compiled once; key verdicts are cached;
strings shorter than :data:`_MIN_SECRET_LEN`, or holding none of the substrings a pattern needs
(plain ``in`` checks), return without running any regex. Short strings found clean are
remembered (a bounded set, cleared when full; only text with no secret in it is ever kept), so a
host, model name or id that comes back on every record is scanned once. Plain dicts, the shape of
nearly every record, are walked with their scalar values handled inline.
"""

from __future__ import annotations

import functools
import json
import re
from collections.abc import Mapping
from typing import Any, Final, Literal

__all__ = ["MAX_DEPTH", "REDACTED", "is_secret_key", "redact", "redact_text", "secret_strength"]

REDACTED: Final = "[REDACTED]"
#: Deeper than any sane log record; a cycle or hostile input hits it and fails closed.
MAX_DEPTH: Final = 64
#: "pwd=x" is the shortest thing we redact.
_MIN_SECRET_LEN: Final = 5

Strength = Literal["strong", "token"]

_STRONG_WORDS = re.compile(
    r"(?:^|_)(?:password|passwd|pwd|passphrase|passcode|secret|secrets|client_secret|"
    r"api_?key|apikey|(?:access|private|signing|encryption|master|ssh|secret)_?key|"
    r"authorization|cookie|cookies|set_cookie|credential|credentials|session_?id|sessionid|"
    r"x_amz_signature)(?:_|$)"
)
_TOKEN_WORDS = re.compile(r"(?:^|_)(?:token|auth)(?:_|$)")
# fmt: off
_NOT_SECRET_WORDS: Final = frozenset((
    "max", "min", "count", "counts", "num", "number", "limit", "limits", "total", "per", "used",
    "usage", "remaining", "budget", "length", "len", "size", "type", "types", "kind", "method",
    "methods", "scheme", "schemes", "mode", "url", "uri", "endpoint", "file", "path", "env",
    "name", "names", "expires", "expiry", "expiration", "ttl", "enabled", "required", "estimate",
    "estimated", "ratio", "rate", "timeout", "header", "provider", "policy",
))
# fmt: on
_CAMEL = re.compile(r"(?<=[a-z0-9])(?=[A-Z])|(?<=[A-Z])(?=[A-Z][a-z])")
_NON_ALNUM = re.compile(r"[^a-z0-9]+")

_TOKEN_FORMATS = re.compile(
    r"sk-lm-[A-Za-z0-9]{4,}(?::[A-Za-z0-9]+)?"
    r"|(?<![A-Za-z0-9])sk-[A-Za-z0-9_-]{16,}"
    r"|(?<![A-Za-z0-9])(?:gh[pousr]_[A-Za-z0-9]{20,}|github_pat_[A-Za-z0-9_]{20,})"
    r"|(?<![A-Za-z0-9])(?:AKIA|ASIA|ABIA|ACCA|AGPA|AIDA|AROA|AIPA|ANPA|ANVA|APKA)[A-Z0-9]{16}"
    r"(?![A-Za-z0-9])"
    r"|(?<![A-Za-z0-9])eyJ[A-Za-z0-9_-]{5,}\.[A-Za-z0-9_-]{5,}\.[A-Za-z0-9_-]*"
    r"|(?<![A-Za-z0-9])xox[abprs]-[A-Za-z0-9-]{10,}"
    r"|(?<![A-Za-z0-9])AIza[A-Za-z0-9_-]{35}"
    r"|(?<![A-Za-z0-9])[sr]k_(?:live|test)_[A-Za-z0-9]{16,}"
    r"|-----BEGIN[A-Z ]*PRIVATE KEY-----[\s\S]*?(?:-----END[A-Z ]*PRIVATE KEY-----|$)"
)
_BEARER = re.compile(
    r"\b(?P<scheme>[Bb]earer|BEARER)(?P<sp>\s+)(?!\[REDACTED\])"
    r"(?=[A-Za-z0-9._~+/-]*[A-Z0-9._~+/-])[A-Za-z0-9._~+/-]{8,}=*"
)
_URL_USERINFO = re.compile(
    r"(?P<scheme>\b[A-Za-z][A-Za-z0-9+.-]*://)(?P<user>[^\s/@:?#\[\]]*)"
    r"(?::(?P<password>[^\s/@?#]*))?@"
)
_HEADER_LINE = re.compile(
    r"(?im)(?<![\w-])(?P<name>(?:proxy-)?authorization|set-cookie|cookie|"
    r"x-[a-z0-9-]*(?:token|key|secret)[a-z0-9-]*)(?P<sep>[ \t]*:[ \t]*)(?![\"'\[{])"
    r"(?P<value>[^\r\n\"']+)"
)
_KEY_VALUE = re.compile(
    r"(?<![\w.-])(?P<q>[\"']?)(?P<key>[A-Za-z_][A-Za-z0-9_.-]{0,63})(?P=q)"
    r"(?P<sep>\s*(?:=>|[=:])\s*)"
    r"(?P<value>\"(?:[^\"\\\n]|\\.)*\"|'(?:[^'\\\n]|\\.)*'"
    r"|(?:(?:Bearer|Basic|Digest|Token|Bot|bearer|basic|token)\s+)?[^\s&;,'\"<>()\[\]{}]+)"
)
_AWS_PREFIX = re.compile(r"A(?:KIA|SIA|BIA|CCA|GPA|IDA|ROA|IPA|NPA|NVA|PKA)")
_NUMBER = re.compile(r"-?\d+(?:\.\d+)?")
_USERINFO_TOKEN_MIN: Final = 16


def _words(key: str) -> list[str]:
    return [w for w in _NON_ALNUM.split(_CAMEL.sub("_", key).lower()) if w]


@functools.lru_cache(maxsize=4096)  # the same few hundred keys come back on every record
def secret_strength(key: str) -> Strength | None:
    """``"strong"``, ``"token"`` or ``None`` for a key name (see the module docstring)."""
    words = _words(key)
    if not words or any(w in _NOT_SECRET_WORDS for w in words):
        return None
    joined = "_".join(words)
    if _STRONG_WORDS.search(joined):
        return "strong"
    if _TOKEN_WORDS.search(joined):
        return "token"
    return None


def is_secret_key(key: str) -> bool:
    """Whether values under ``key`` are treated as secrets."""
    return secret_strength(key) is not None


def redact(value: Any) -> Any:
    """Return ``value`` with every secret replaced by ``"[REDACTED]"``; same shape otherwise."""
    return _walk(value, None, 0)


def redact_text(text: str) -> str:
    """Redact one string (the fast path callers with plain text use)."""
    return _redact_str(text)


def _walk(value: Any, forced: Strength | None, depth: int) -> Any:
    if depth > MAX_DEPTH:
        return REDACTED
    # Exact-type fast paths for what log records are made of; ABC checks below are slower.
    kind = type(value)
    if kind is str:
        return REDACTED if forced is not None and value else _redact_str(value)
    if kind is dict and forced is None and depth < MAX_DEPTH:
        return _walk_dict(value, depth)
    if kind is int or kind is float:
        return REDACTED if forced == "strong" else value
    if value is None or isinstance(value, bool):
        return value
    if isinstance(value, str):
        if forced is not None and value:
            return REDACTED
        return _redact_str(value)
    if isinstance(value, int | float):
        return REDACTED if forced == "strong" else value
    if isinstance(value, bytes | bytearray):
        if forced is not None and value:
            return REDACTED
        try:
            text = bytes(value).decode("utf-8")
        except UnicodeDecodeError:
            return value
        cleaned = _redact_str(text)
        return value if cleaned is text else type(value)(cleaned.encode("utf-8"))
    if isinstance(value, Mapping):
        out: dict[Any, Any] = {}
        for key, item in value.items():
            strength = forced
            if isinstance(key, str):
                strength = strength or secret_strength(key)
                key = _redact_key(key)
            out[key] = _walk(item, strength, depth + 1)
        return out
    if isinstance(value, list | tuple):
        if (
            forced is None
            and len(value) == 2
            and isinstance(value[0], str)
            and isinstance(value[1], str)
            and value[1]
        ):
            strength = secret_strength(value[0])
            if strength is not None:
                pair = [value[0], REDACTED]
                return tuple(pair) if isinstance(value, tuple) else pair
        items = [_walk(item, forced, depth + 1) for item in value]
        if isinstance(value, tuple):
            return type(value)(*items) if hasattr(value, "_fields") else tuple(items)
        return items
    return value


def _walk_dict(value: dict[Any, Any], depth: int) -> dict[Any, Any]:
    """A plain dict with no secret key above it: the shape nearly every record has."""
    if len(value) <= _SHAPE_MAX_KEYS:
        shape = tuple(value)
        plain = _plain_shapes.get(shape)
        if plain is None:
            plain = _is_plain_shape(shape)
        if plain:
            return _walk_plain_dict(value, depth)
    out: dict[Any, Any] = {}
    for key, item in value.items():
        if type(key) is not str:
            out[key] = _walk(item, None, depth + 1)
            continue
        clean_key, strength = _key_verdict(key)
        kind = type(item)
        # Scalars inline: most values are numbers, None, booleans or short plain strings, and a
        # call per value costs more than the checks. Each branch is the one _walk would take.
        if item is None or kind is bool:
            out[clean_key] = item
        elif kind is int or kind is float:
            out[clean_key] = REDACTED if strength == "strong" else item
        elif kind is str:
            if strength is not None and item:
                out[clean_key] = REDACTED
            elif len(item) < _MIN_SECRET_LEN or item in _clean:  # _redact_str's first test
                out[clean_key] = item
            else:
                out[clean_key] = _redact_str(item)
        else:
            out[clean_key] = _walk(item, strength, depth + 1)
    return out


def _walk_plain_dict(value: dict[Any, Any], depth: int) -> dict[Any, Any]:
    """:func:`_walk_dict` for a dict whose keys are all plain (no secret in them or named by
    them): the keys need no look, only the values; the same branches, per value."""
    out = value.copy()
    for key, item in value.items():
        kind = type(item)
        if kind is str:
            if len(item) >= _MIN_SECRET_LEN and item not in _clean:
                out[key] = _redact_str(item)
        elif not (item is None or kind is bool or kind is int or kind is float):
            out[key] = _walk(item, None, depth + 1)
    return out


def _is_plain_shape(shape: tuple[Any, ...]) -> bool:
    """Whether every key in ``shape`` is a string that redaction leaves alone and that makes
    nothing under it secret; remembered per shape (records of one kind share theirs)."""
    # A plain key's verdict is itself, unredacted, with no strength.
    plain = all(type(key) is str and _key_verdict(key) == (key, None) for key in shape)
    if sum(len(key) for key in shape if type(key) is str) > _SHAPE_MAX_KEY_CHARS:
        return plain  # judged, not remembered: long keys are data, and would be kept alive
    if len(_plain_shapes) >= _PLAIN_SHAPES_MAX:
        _plain_shapes.clear()  # a bound: the shapes in use come back at once
    _plain_shapes[shape] = plain
    return plain


#: Key tuples of dicts already judged by :func:`_is_plain_shape`, and the verdict.
_plain_shapes: dict[tuple[Any, ...], bool] = {}
_PLAIN_SHAPES_MAX: Final = 4096
#: Larger dicts (documents, not records) take the per-key walk: their shapes rarely repeat.
_SHAPE_MAX_KEYS: Final = 64
#: A shape whose keys are longer in all is judged each time, never kept (see _is_plain_shape).
_SHAPE_MAX_KEY_CHARS: Final = 1024


@functools.lru_cache(maxsize=4096)  # keys repeat on every record; their verdict does not change
def _key_verdict(key: str) -> tuple[str, Strength | None]:
    """A dict key's redacted text and the strength it gives its value, in one cache lookup."""
    return _redact_key(key), secret_strength(key)


def _redact_str(text: str) -> str:
    if len(text) < _MIN_SECRET_LEN or text in _clean:
        return text
    result = _scan_str(text)
    if result is text and type(text) is str and len(text) <= _CLEAN_MAX_LEN:
        if len(_clean) >= _CLEAN_MAX_ENTRIES:
            _clean.clear()  # crude, but a bound: the common values come back within a record
        _clean.add(text)
    return result


#: Strings already scanned and found to hold no secret. Only clean text is kept, so the memo
#: never holds a secret; hosts, model names, ids and tool names repeat on every record.
_clean: set[str] = set()
_CLEAN_MAX_ENTRIES: Final = 4096
#: Longer text (prompts, answers, tool output) rarely repeats; not worth the memory.
_CLEAN_MAX_LEN: Final = 256


def _scan_str(text: str) -> str:
    lowered = text.lower()
    has_key = _has_key_hint(lowered)
    has_token = _has_token_hint(text)
    has_bearer = "bearer" in lowered
    has_url = "://" in text
    if not (has_key or has_token or has_bearer or has_url):
        return text
    stripped = text.strip()
    if stripped[:1] in ("{", "[") and stripped[-1:] in ("}", "]"):
        embedded = _redact_embedded_json(stripped)
        if embedded is not None:
            return embedded if embedded != stripped else text
    result = _TOKEN_FORMATS.sub(REDACTED, text) if has_token else text
    if has_bearer:
        result = _BEARER.sub(lambda m: f"{m['scheme']}{m['sp']}{REDACTED}", result)
    if has_url:
        result = _URL_USERINFO.sub(_userinfo_sub, result)
    if has_key:
        result = _HEADER_LINE.sub(lambda m: f"{m['name']}{m['sep']}{REDACTED}", result)
        result = _KEY_VALUE.sub(_key_value_sub, result)
    return text if result == text else result


# The two hint checks are written out (no any() over a tuple): they run on every string of every
# log record, and a generator costs more than the substring tests themselves. A string without
# the substrings cannot match the patterns they guard.


def _has_key_hint(lowered: str) -> bool:
    """Stems of every secret-named key (see _STRONG_WORDS / _TOKEN_WORDS)."""
    return (
        "pass" in lowered
        or "pwd" in lowered
        or "secret" in lowered
        or "token" in lowered
        or "key" in lowered
        or "auth" in lowered
        or "cookie" in lowered
        or "credential" in lowered
        or "session" in lowered
        or "signature" in lowered
    )


def _has_token_hint(text: str) -> bool:
    """Prefixes of every token format in _TOKEN_FORMATS."""
    return (
        "sk-" in text
        or "eyJ" in text
        or "xox" in text
        or "AIza" in text
        or "-----BEGIN" in text
        or ("_" in text and ("gh" in text or "_live_" in text or "_test_" in text))
        or ("A" in text and _AWS_PREFIX.search(text) is not None)
    )


@functools.lru_cache(maxsize=4096)  # keys repeat on every record; their verdict does not change
def _redact_key(key: str) -> str:
    return _redact_str(key)


def _redact_embedded_json(text: str) -> str | None:
    """The redacted JSON text, or None when ``text`` is not a JSON object/array."""
    try:
        parsed = json.loads(text)
    except (ValueError, RecursionError):
        return None
    if not isinstance(parsed, dict | list):
        return None
    cleaned = _walk(parsed, None, 0)
    if cleaned == parsed:
        return text
    return json.dumps(cleaned, ensure_ascii=False)


def _userinfo_sub(match: re.Match[str]) -> str:
    user, password = match["user"], match["password"]
    if password is not None and password != REDACTED:
        return f"{match['scheme']}{user}:{REDACTED}@"
    if password is None and len(user) >= _USERINFO_TOKEN_MIN:
        return f"{match['scheme']}{REDACTED}@"
    return match[0]


def _key_value_sub(match: re.Match[str]) -> str:
    strength = secret_strength(match["key"])
    value = match["value"]
    if strength is None:
        return match[0]
    quote = value[0] if value[:1] in ("'", '"') else ""
    inner = value[1:-1] if quote else value
    if not inner or inner == REDACTED or (strength == "token" and _NUMBER.fullmatch(inner)):
        return match[0]
    q = match["q"]
    return f"{q}{match['key']}{q}{match['sep']}{quote}{REDACTED}{quote}"
