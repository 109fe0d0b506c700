"""The lines of the decision chain: a `RuleAction` renders its own haproxy words, a `Rule` is
an action and its condition, an `AclLine` declares a named ACL, a `Comment` is a line for the
reader of the live haproxy.cfg, `BLANK` an empty line; `rules` prints a part of a chain."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from haproxy_egress.render.decision.conditions import Acl, Cond

__all__ = [
    "BLANK",
    "AclLine",
    "Blank",
    "Comment",
    "Line",
    "Rule",
    "RuleAction",
    "comments",
    "increment",
    "rules",
    "set_var",
    "track",
    "unset_var",
]


@dataclass(frozen=True, slots=True)
class RuleAction:
    """What a rule does: its keyword (`set-var`, `unset-var`, `set-var-fmt`, `do-resolve`,
    `track-sc0`, `sc-inc-gpc0`, `sc-set-gpt0`), its arguments in parentheses and its operand
    (a sample, a log-format text, a key and its table)."""

    keyword: str
    args: tuple[str, ...] = ()
    operand: str = ""
    text: str = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        head = f"{self.keyword}({','.join(self.args)})" if self.args else self.keyword
        object.__setattr__(self, "text", f"{head} {self.operand}" if self.operand else head)

    def __str__(self) -> str:
        return self.text


def set_var(name: str, sample: str) -> RuleAction:
    """`set-var(<name>) <sample>`."""
    return RuleAction("set-var", (name,), sample)


def unset_var(name: str) -> RuleAction:
    """`unset-var(<name>)`."""
    return RuleAction("unset-var", (name,))


def track(counter: int, key: str, table: str) -> RuleAction:
    """`track-sc<counter> <key> table <table>`: the stream's entry of the table."""
    return RuleAction(f"track-sc{counter}", (), f"{key} table {table}")


def increment(gpc: int, counter: int) -> RuleAction:
    """`sc-inc-gpc<gpc>(<counter>)`: count in the tracked entry."""
    return RuleAction(f"sc-inc-gpc{gpc}", (str(counter),))


# -- lines --

_INDENT = "    "


@dataclass(frozen=True, slots=True)
class Rule:
    """One rule: an action and, unless it always runs, its condition."""

    action: RuleAction
    cond: Cond | None = None
    text: str = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        action = self.action.text
        object.__setattr__(self, "text", f"{action} {self.cond.text}" if self.cond else action)

    def __str__(self) -> str:
        return self.text

    def line(self, prefix: str) -> str:
        """The rule as a line of its section, after `prefix` (http-request, ...)."""
        return f"{_INDENT}{prefix} {self.text}"


@dataclass(frozen=True, slots=True)
class Comment:
    """A line that explains the rules after it, for the reader of the live haproxy.cfg."""

    text: str

    def line(self, prefix: str) -> str:
        """The comment line (the prefix is for rules only)."""
        return f"{_INDENT}# {self.text}"


@dataclass(frozen=True, slots=True)
class Blank:
    """An empty line between parts of the chain."""

    def line(self, prefix: str) -> str:
        """Nothing: the line is empty."""
        return ""


BLANK = Blank()


@dataclass(frozen=True, slots=True)
class AclLine:
    """The declaration of a named ACL (`acl <name> <criterion>`), which later rules test."""

    acl: Acl
    criterion: str

    def line(self, prefix: str) -> str:
        """The declaration (an acl line takes no rule prefix)."""
        return f"{_INDENT}acl {self.acl} {self.criterion}"


Line = Rule | Comment | Blank | AclLine


def rules(prefix: str, lines: Sequence[Line]) -> str:
    """The text of a part of the chain: its lines, each rule after `prefix` (`http-request`,
    `tcp-request content`), joined without a newline at the end (the template's `rules`)."""
    return "\n".join(line.line(prefix) for line in lines)


def comments(*texts: str) -> list[Line]:
    return [Comment(t) for t in texts]
