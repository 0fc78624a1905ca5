"""Human approval of tool calls: per-tool policy, remembered rules, and where they are saved.

Policy per tool (``agent.approval``, keys may be globs; a tool's own mode, such as an MCP
server's ``approval`` config, comes after an exact key and before the globs; others use
``agent.default_approval``):

* ``auto`` — run it (unless a saved ``deny`` rule matches);
* ``ask`` — ask the callback (the CLI asks y/n/always/never); a saved rule answers instead when
  one matches;
* ``deny`` — never run it; no rule overrides an operator's ``deny``.

Rules (:class:`~elaria.config.ApprovalRule`) match a tool glob and optionally one argument whose
value matches a glob (``write_file`` with ``path`` under ``notes/*``). Path-like values are
normalised first (``./notes/../x`` is ``x``), so ``..`` cannot sneak a call under a pattern.
``deny`` rules win over ``allow`` rules.

Persistence: "always" and "never" answers become rules saved to a dedicated JSON file,
``agent.approvals_file`` (default ``elaria.approvals.json`` beside the config file), written
atomically (temporary file, fsync, rename) so a crash never leaves half a file.
:func:`with_saved_rules` merges the file into validated :class:`~elaria.config.Settings`; the
runtime does that at start-up. A hand-edited file that is invalid raises a
:class:`~elaria.errors.ConfigError` naming the file and the rule.

Sans-I/O except :class:`ApprovalStore`; decisions are plain values.
"""

from __future__ import annotations

import json
import os
import posixpath
import tempfile
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from fnmatch import fnmatchcase
from pathlib import Path
from typing import Any, Literal

from pydantic import ValidationError

from elaria.config import AgentSettings, ApprovalMode, ApprovalRule, Settings, config_file_path
from elaria.errors import ConfigError, ConfigProblem

__all__ = [
    "APPROVALS_FILE_NAME",
    "Answer",
    "ApprovalAnswer",
    "ApprovalCallback",
    "ApprovalPolicy",
    "ApprovalRequest",
    "ApprovalStore",
    "Decision",
    "approvals_path",
    "with_saved_rules",
]

APPROVALS_FILE_NAME = "elaria.approvals.json"
_FILE_VERSION = 1

Answer = Literal["yes", "no", "always", "never"]


@dataclass(frozen=True)
class ApprovalRequest:
    """What the callback is asked about."""

    call_id: str
    tool: str
    arguments: Mapping[str, Any]
    #: The argument a remembered rule would naturally scope to (the first path argument), if any.
    scope_argument: str | None = None


@dataclass(frozen=True)
class ApprovalAnswer:
    """A callback's answer; ``argument`` + ``pattern`` narrow an always/never rule."""

    answer: Answer
    argument: str | None = None
    pattern: str | None = None


ApprovalCallback = Callable[
    [ApprovalRequest], Awaitable[Answer | ApprovalAnswer] | Answer | ApprovalAnswer
]


@dataclass(frozen=True)
class Decision:
    verdict: Literal["allow", "deny", "ask"]
    #: ``policy`` (the tool's mode) or ``rule`` (a saved rule matched).
    by: Literal["policy", "rule"]
    rule: ApprovalRule | None = None

    def describe(self) -> str:
        if self.rule is None:
            return f"policy {self.verdict}"
        return describe_rule(self.rule)


#: The decision each mode gives when no rule matches; decisions are frozen, so one of each
#: serves every call (most calls of a run end here).
_ASK = Decision("ask", "policy")
_POLICY_DECISIONS: dict[str, Decision] = {
    "auto": Decision("allow", "policy"),
    "ask": _ASK,
    "deny": Decision("deny", "policy"),
}


def describe_rule(rule: ApprovalRule) -> str:
    scope = f" with {rule.argument} matching {rule.pattern!r}" if rule.argument else ""
    return f"rule {rule.decision} {rule.tool}{scope}"


class ApprovalPolicy:
    """Decides allow / deny / ask for one call, and remembers always/never answers."""

    def __init__(self, agent: AgentSettings, store: ApprovalStore | None = None) -> None:
        self._modes = dict(agent.approval)
        self._default: ApprovalMode = agent.default_approval
        self._rules: list[ApprovalRule] = list(agent.approval_rules)
        self._store = store

    @property
    def rules(self) -> tuple[ApprovalRule, ...]:
        return tuple(self._rules)

    def mode(self, tool: str, own: ApprovalMode | None = None) -> ApprovalMode:
        """The operator's mode for ``tool`` by exact name; else the tool's ``own`` mode (what
        its source asks for, e.g. an MCP server's config); else the operator's first matching
        glob; else ``agent.default_approval``."""
        if tool in self._modes:
            return self._modes[tool]
        if own is not None:
            return own
        for pattern, mode in self._modes.items():
            if fnmatchcase(tool, pattern):
                return mode
        return self._default

    def decide(
        self, tool: str, arguments: Mapping[str, Any], own: ApprovalMode | None = None
    ) -> Decision:
        mode = self.mode(tool, own)
        if mode == "deny":
            return _POLICY_DECISIONS["deny"]
        if not self._rules:
            return _POLICY_DECISIONS.get(mode, _ASK)
        matching = [r for r in self._rules if _matches(r, tool, arguments)]
        for rule in matching:
            if rule.decision == "deny":
                return Decision("deny", "rule", rule)
        if matching:
            return Decision("allow", "rule", matching[0])
        return _POLICY_DECISIONS.get(mode, _ASK)

    def remember(
        self,
        tool: str,
        answer: ApprovalAnswer,
    ) -> ApprovalRule | None:
        """Turn an ``always``/``never`` answer into a saved rule; ``yes``/``no`` save nothing."""
        if answer.answer not in ("always", "never"):
            return None
        rule = ApprovalRule(
            tool=tool,
            decision="allow" if answer.answer == "always" else "deny",
            argument=answer.argument if answer.pattern else None,
            pattern=answer.pattern if answer.argument else None,
        )
        if rule not in self._rules:
            self._rules.append(rule)
            if self._store is not None:
                self._store.add(rule)
        return rule


def _matches(rule: ApprovalRule, tool: str, arguments: Mapping[str, Any]) -> bool:
    if not fnmatchcase(tool, rule.tool):
        return False
    if rule.argument is None or rule.pattern is None:
        return True
    value = arguments.get(rule.argument)
    if not isinstance(value, str):
        return False
    return fnmatchcase(_normalised(value), rule.pattern)


def _normalised(value: str) -> str:
    """Path-like text as a rule sees it: separators unified, ``.``/``..`` applied."""
    text = value.replace("\\", "/")
    if "/" not in text and not text.startswith("."):
        return text
    norm = posixpath.normpath(text)
    return norm


# ------------------------------------------------------------------------------- persistence


def approvals_path(agent: AgentSettings) -> Path:
    """Where rules are saved: ``agent.approvals_file``, else beside the config file."""
    if agent.approvals_file is not None:
        return agent.approvals_file
    config = config_file_path()
    base = config.parent if config is not None else Path()
    return base / APPROVALS_FILE_NAME


class ApprovalStore:
    """The JSON file of remembered rules. Writes are atomic; reads validate every rule."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def load(self) -> list[ApprovalRule]:
        try:
            text = self.path.read_text(encoding="utf-8")
        except FileNotFoundError:
            return []
        except OSError as exc:
            raise ConfigError(
                f"cannot read {self.path}: {exc.strerror}", where=str(self.path)
            ) from None
        try:
            data = json.loads(text)
        except ValueError as exc:
            raise ConfigError(
                f"{self.path} is not valid JSON: {exc}",
                where=str(self.path),
                hint="Fix it by hand, or delete it to forget every saved approval.",
            ) from None
        raw_rules = data.get("rules") if isinstance(data, dict) else None
        if not isinstance(raw_rules, list):
            raise ConfigError(
                f'{self.path} must hold an object with a "rules" list',
                where=str(self.path),
                hint="Delete the file to forget every saved approval.",
            )
        rules: list[ApprovalRule] = []
        problems: list[ConfigProblem] = []
        for index, item in enumerate(raw_rules):
            try:
                rules.append(ApprovalRule.model_validate(item))
            except ValidationError as exc:
                for err in exc.errors(include_url=False):
                    loc = ".".join(str(x) for x in err["loc"])
                    problems.append(
                        ConfigProblem(
                            field=f"rules[{index}]{'.' + loc if loc else ''}",
                            value=err.get("input") if not isinstance(item, dict) else item,
                            allowed=err["msg"],
                            fix="correct or delete this rule",
                            source=str(self.path),
                        )
                    )
        if problems:
            raise ConfigError(
                f"{len(problems)} invalid approval rule(s) in {self.path}",
                problems=problems,
                hint="Fix each rule, or delete the file to forget every saved approval.",
            )
        return rules

    def add(self, rule: ApprovalRule) -> None:
        rules = self.load()
        if rule not in rules:
            rules.append(rule)
            self.save(rules)

    def save(self, rules: Sequence[ApprovalRule]) -> None:
        payload = {
            "version": _FILE_VERSION,
            "rules": [r.model_dump(exclude_none=True) for r in rules],
        }
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{self.path.name}.", dir=self.path.parent)
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as fh:
                json.dump(payload, fh, indent=2)
                fh.write("\n")
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, self.path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise


def with_saved_rules(settings: Settings) -> Settings:
    """``settings`` with the saved rules appended to ``agent.approval_rules`` (validated)."""
    saved = ApprovalStore(approvals_path(settings.agent)).load()
    merged = list(settings.agent.approval_rules)
    merged.extend(r for r in saved if r not in merged)
    if len(merged) == len(settings.agent.approval_rules):
        return settings
    agent = settings.agent.model_copy(update={"approval_rules": merged})
    return settings.model_copy(update={"agent": agent})
