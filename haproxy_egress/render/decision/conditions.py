"""The conditions of the decision chain's rules: a `Term` is one ACL test in braces (`!` in
front when negated), a `Cond` the `if`/`unless` of a rule made of terms, and the tests the
chain makes on its variables (`found`, `equals`, ...), each built once per process."""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cache, lru_cache
from typing import Literal

from haproxy_egress.config.vocabulary import PASSING, VARS

__all__ = [
    "OR",
    "PASSES",
    "SNI_PORT",
    "Acl",
    "Cond",
    "Or",
    "Term",
    "begins",
    "equals",
    "found",
    "in_networks",
    "is_true",
    "unless",
    "var",
    "when",
]


@dataclass(frozen=True, slots=True)
class Term:
    """One ACL test in braces: a sample and what it must be (`-m found`, `lt 0`)."""

    sample: str
    test: str
    negated: bool = False

    def __invert__(self) -> Term:
        return _negated(self)

    def __str__(self) -> str:
        return f"{'!' if self.negated else ''}{{ {self.sample} {self.test} }}"


@lru_cache(maxsize=1024)  # bounded: a term may name a route
def _negated(term: Term) -> Term:
    return Term(term.sample, term.test, not term.negated)


@dataclass(frozen=True, slots=True)
class Acl:
    """A named ACL an `AclLine` declared (`acl egress_sni_port ...`), as a term."""

    name: str

    def __str__(self) -> str:
        return self.name


@dataclass(frozen=True, slots=True)
class Or:
    """`||` between the terms of a condition: either side may hold."""

    def __str__(self) -> str:
        return "||"


OR = Or()


@dataclass(frozen=True, slots=True)
class Cond:
    """A rule's condition: all terms hold (`if`), or not all of them (`unless`); `OR`
    between terms separates alternatives."""

    keyword: Literal["if", "unless"]
    terms: tuple[Term | Acl | Or, ...]
    # Printed once per render or twice (both phases of a proxy route): kept as text.
    text: str = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        text = f"{self.keyword} {' '.join(str(t) for t in self.terms)}"
        object.__setattr__(self, "text", text)

    def __str__(self) -> str:
        return self.text


# Most conditions are the same for every route: kept, so each is built and printed once (a
# bounded cache, since some name the route).
@lru_cache(maxsize=2048)
def when(*terms: Term | Acl | Or) -> Cond:
    """`if` all of `terms`."""
    return Cond("if", terms)


@lru_cache(maxsize=256)
def unless(*terms: Term | Acl | Or) -> Cond:
    """`unless` all of `terms`."""
    return Cond("unless", terms)


def var(name: str) -> str:
    """The sample of a variable."""
    return f"var({name})"


# The tests on a variable name no route (their arguments are variable names and vocabulary
# words): each is built once per process, not once per route.
@cache
def found(name: str) -> Term:
    """The variable is set."""
    return Term(var(name), "-m found")


@cache
def is_true(name: str) -> Term:
    """The boolean variable is true."""
    return Term(var(name), "-m bool")


@cache
def equals(name: str, *words: str) -> Term:
    """The variable is one of `words`."""
    return Term(var(name), f"-m str {' '.join(words)}")


@cache
def begins(name: str, prefix: str) -> Term:
    """The variable begins with `prefix`."""
    return Term(var(name), f"-m beg {prefix}")


@cache
def in_networks(name: str, *networks: str) -> Term:
    """The variable is an address in one of `networks`."""
    return Term(var(name), f"-m ip {' '.join(networks)}")


# The policy lets the request through (its verdict is one of PASSING).
PASSES = equals(VARS.verdict, *PASSING)
# connect_sni: match: the CONNECT names one of the route's TLS ports (declared in `connect`).
SNI_PORT = Acl("egress_sni_port")
