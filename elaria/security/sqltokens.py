"""A tokenizer that reads SQL the way SQLite does, for the rules a regex cannot decide.

It knows SQLite's quoting: ``'...'`` string literals, ``"..."`` / `` `...` `` / ``[...]``
identifiers, ``x'..'`` blobs, ``--`` and ``/* */`` comments, numbers and parameters (``?``,
``?NNN``, ``:name``, ``@name``, ``$name``). :class:`~elaria.security.sql.SafeSQLite` uses it to
find literals, statement boundaries (cross-checked with ``sqlite3.complete_statement``), the
leading keyword, CTE names and placeholders, and to respell double-quoted identifiers with
backticks so SQLite can never silently turn one into a string. Pure functions, any thread.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal

__all__ = [
    "SqlSyntaxError",
    "Token",
    "TokenKind",
    "cte_names",
    "respell_double_quotes",
    "significant",
    "tokenize",
]

TokenKind = Literal[
    "space", "comment", "string", "blob", "ident", "word", "number", "param", "semicolon", "op"
]

_MASTER = re.compile(
    r"""
    (?P<space>\s+)
  | (?P<comment>--[^\n]*|/\*(?:.|\n)*?(?:\*/|\Z))
  | (?P<blob>[xX]'[^']*')
  | (?P<string>'(?:[^']|'')*')
  | (?P<ident>"(?:[^"]|"")*"|`(?:[^`]|``)*`|\[[^\]]*\])
  | (?P<number>0[xX][0-9A-Fa-f]+|(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][+-]?\d+)?)
  | (?P<param>\?\d*|[:@$][A-Za-z0-9_\u0080-\U0010ffff]+)
  | (?P<word>[A-Za-z_\u0080-\U0010ffff][A-Za-z0-9_$\u0080-\U0010ffff]*)
  | (?P<semicolon>;)
  | (?P<op>.)
    """,
    re.VERBOSE | re.DOTALL,
)
_UNTERMINATED = {"'": "string literal", '"': "identifier", "`": "identifier", "[": "identifier"}


class SqlSyntaxError(ValueError):
    """The text cannot be tokenized (an unterminated literal or identifier)."""


@dataclass(frozen=True, slots=True)
class Token:
    kind: TokenKind
    text: str
    start: int

    @property
    def upper(self) -> str:
        return self.text.upper()

    @property
    def name(self) -> str:
        """The identifier a word or quoted identifier names, unquoted."""
        if self.kind != "ident":
            return self.text
        quote, body = self.text[0], self.text[1:-1]
        if quote == "[":
            return body
        return body.replace(quote * 2, quote)


def tokenize(sql: str) -> list[Token]:
    """All tokens of ``sql``, whitespace and comments included, in order."""
    tokens: list[Token] = []
    pos = 0
    end = len(sql)
    while pos < end:
        match = _MASTER.match(sql, pos)
        assert match is not None  # "op" matches any character
        kind: TokenKind = match.lastgroup  # type: ignore[assignment]
        text = match.group()
        if kind == "op" and text in _UNTERMINATED:
            raise SqlSyntaxError(f"unterminated {_UNTERMINATED[text]} at offset {pos}")
        tokens.append(Token(kind, text, pos))
        pos = match.end()
    return tokens


def significant(tokens: list[Token]) -> list[Token]:
    """Tokens without whitespace and comments."""
    return [t for t in tokens if t.kind not in ("space", "comment")]


def cte_names(tokens: list[Token]) -> set[str]:
    """Lower-cased names a leading ``WITH`` clause defines (``WITH a AS (...), b(x) AS (...)``)."""
    sig = significant(tokens)
    if not sig or sig[0].upper != "WITH":
        return set()
    names: set[str] = set()
    depth = 0
    expect_name = True
    for tok in sig[1:]:
        if depth == 0 and expect_name and tok.kind in ("word", "ident"):
            if tok.kind == "word" and tok.upper == "RECURSIVE":
                continue
            names.add(tok.name.lower())
            expect_name = False
        elif tok.text == "(":
            depth += 1
        elif tok.text == ")":
            depth -= 1
        elif depth == 0 and tok.text == ",":
            expect_name = True
        elif depth == 0 and tok.kind == "word" and tok.upper in _MAIN_STATEMENT:
            break
    return names


_MAIN_STATEMENT = frozenset({"SELECT", "VALUES", "INSERT", "UPDATE", "DELETE", "REPLACE"})


def respell_double_quotes(tokens: list[Token]) -> str:
    """The SQL text with every ``"identifier"`` written as `` `identifier` ``.

    SQLite turns a double-quoted identifier that names no column into a string literal (the
    "DQS" misfeature); a backticked one is always an identifier, so the quirk cannot happen.
    """
    parts: list[str] = []
    for tok in tokens:
        if tok.kind == "ident" and tok.text[0] == '"':
            parts.append("`" + tok.name.replace("`", "``") + "`")
        else:
            parts.append(tok.text)
    return "".join(parts)
