"""The policy vocabulary is spelled once: config/vocabulary.py.

Every other file that speaks it (templates, Lua, Python) must take its words from there. The
checks below read the package's templates, Lua files and Python modules as text and fail on a
second spelling of a `txn.*` variable of the vocabulary or of a verdict, rule id, map action,
limit kind, auth or via word in the places where those words act: haproxy syntax in the
templates, string literals in Lua and Python. What they allow is listed with each check.
"""

from __future__ import annotations

import ast
import io
import re
import tokenize
from dataclasses import fields
from pathlib import Path

import pytest

from haproxy_egress.config import vocabulary as v
from haproxy_egress.config.policy import REFUSALS

ROOT = Path(__file__).resolve().parents[3]
PACKAGE = ROOT / "haproxy_egress"
VOCABULARY_MODULE = PACKAGE / "config" / "vocabulary.py"
TEMPLATES = sorted((ROOT / "templates").glob("*.j2"))
LUA = sorted((ROOT / "lua").glob("*.lua"))
PYTHON = sorted(p for p in PACKAGE.rglob("*.py") if p != VOCABULARY_MODULE)

VARIABLES = tuple(getattr(v.VARS, f.name) for f in fields(v.VARS))
# A vocabulary variable: any txn.egress_* name (also one the vocabulary does not declare yet,
# so a new variable must be added there first) and the declared ones outside that prefix.
# `txn.arg.<hook>.<key>` (hook arguments, render/hooks.py) is not policy vocabulary.
_VARIABLE = re.compile(
    r"txn\.egress_\w+|"
    + "|".join(re.escape(n) + r"(?!\w)" for n in VARIABLES if not n.startswith("txn.egress_"))
)
WORDS = frozenset(
    str(w)
    for e in (v.Verdict, v.AuditVerdict, v.Action, v.RuleId, v.Limit, v.Auth, v.Via, v.Reason)
    for w in e
) | {v.GUARD_PREFIX, v.LIMIT_PREFIX}
# Words that cannot be mistaken for English: never spelled in code outside the vocabulary.
DISTINCT = frozenset(w for w in WORDS if "-" in w or "_" in w) - {"allow_from"}
_DISTINCT = re.compile("|".join(rf"(?<![\w-]){re.escape(w)}(?![\w])" for w in sorted(DISTINCT)))
# Python modules that decide, render, explain or count the policy: there even a short word
# (`"deny"`, `"default"`) as a whole string literal is a second spelling. Elsewhere those
# words mean other things (a guard class set named "default", the `allow_from` field).
POLICY_MODULES = frozenset(
    PACKAGE / m
    for m in (
        "config/policy.py",
        "render/maps.py",
        "render/compiler.py",
        "render/decision/__init__.py",
        "render/decision/conditions.py",
        "render/decision/lines.py",
        "render/decision/lookups.py",
        "render/decision/refusals.py",
        "render/decision/policy.py",
        "render/decision/chain.py",
        "render/hooks.py",
        "commands/explain.py",
        "metrics/decisions.py",
        "metrics/destinations.py",
        "config/categories.py",
    )
)
# Names that only look like a word: map table names in render/maps.py ("parent", "self", "doh")
# (not `Via.PARENT`) and in render/decision/policy.py, which looks those tables up, haproxy's
# own action keyword `allow` (not `Verdict.ALLOW`) that ends an allowed request's rules in
# render/decision/chain.py, the Route field `allow_from` a hook binding tests in render/hooks.py.
_TABLE_NAMES = {
    PACKAGE / "render/maps.py": {"parent", "self", "doh"},
    PACKAGE / "render/decision/policy.py": {"self", "doh"},
    PACKAGE / "render/decision/chain.py": {"allow"},
    PACKAGE / "render/hooks.py": {"allow_from"},
}

# haproxy syntax in a template (outside Jinja tags) where a vocabulary word would act.
_HAPROXY_WORD = re.compile(r"\bstr\(([\w-]+)\)|-m (?:str|beg) ((?:[\w-]+ )+)\}|,([\w-]+)\)")
_JINJA = re.compile(r"\{\{.*?\}\}|\{%.*?%\}|\{#.*?#\}", re.S)
_LUA_STRING = re.compile(r"\"([^\"\\]*)\"|'([^'\\]*)'")
_LUA_KEY = re.compile(r"^\s*([A-Za-z_]\w*)\s*=", re.M)


def template_spellings(text: str) -> list[str]:
    """Vocabulary spelled in a template's own text (Jinja expressions are where it belongs)."""
    found: list[str] = []
    for part in _JINJA.split(text):
        found += _VARIABLE.findall(part)
        found += [m.group(0) for m in _DISTINCT.finditer(part)]
        for m in _HAPROXY_WORD.finditer(part):
            words = (m.group(1) or m.group(3) or "").split() + (m.group(2) or "").split()
            found += [w for w in words if w in WORDS]
    return found


def lua_spellings(text: str) -> list[str]:
    """Vocabulary spelled in a Lua file: variable names anywhere (comments too), and words as
    string literals or table keys. The generated `egress` table is where Lua reads them."""
    found = _VARIABLE.findall(text)
    for m in _LUA_STRING.finditer(text):
        literal = m.group(1) if m.group(1) is not None else m.group(2)
        if literal in WORDS or _DISTINCT.search(literal):
            found.append(literal)
    found += [k for k in _LUA_KEY.findall(text) if k in WORDS]
    return found


def _docstring_lines(source: str) -> set[int]:
    lines: set[int] = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef):
            body = node.body
            if body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant):
                first = body[0]
                lines.update(range(first.lineno, (first.end_lineno or first.lineno) + 1))
    return lines


def python_spellings(source: str, *, policy_module: bool, allowed: frozenset[str]) -> list[str]:
    """Vocabulary spelled in a Python module's string literals (docstrings and comments may
    name the words for the reader): variable names and distinct words anywhere; in a policy
    module also a short word as a whole literal."""
    docstrings = _docstring_lines(source)
    found: list[str] = []
    for tok in tokenize.generate_tokens(io.StringIO(source).readline):
        if tok.type != tokenize.STRING or tok.start[0] in docstrings:
            continue
        found += _VARIABLE.findall(tok.string)
        found += [m.group(0) for m in _DISTINCT.finditer(tok.string)]
        if policy_module:
            try:
                value = ast.literal_eval(tok.string)
            except ValueError:  # an f-string
                continue
            if isinstance(value, str) and value in WORDS and value not in allowed:
                found.append(value)
    return found


def _name(path: Path) -> str:
    return str(path.relative_to(ROOT))


@pytest.mark.parametrize("path", TEMPLATES, ids=_name)
def test_templates_take_every_policy_word_from_the_vocabulary(path: Path) -> None:
    assert template_spellings(path.read_text()) == []


@pytest.mark.parametrize("path", LUA, ids=_name)
def test_lua_takes_every_policy_word_from_the_vocabulary(path: Path) -> None:
    assert lua_spellings(path.read_text()) == []


@pytest.mark.parametrize("path", PYTHON, ids=_name)
def test_python_takes_every_policy_word_from_the_vocabulary(path: Path) -> None:
    allowed = frozenset(_TABLE_NAMES.get(path, ()))
    spelled = python_spellings(
        path.read_text(), policy_module=path in POLICY_MODULES, allowed=allowed
    )
    assert spelled == []


def test_the_checks_catch_a_second_spelling() -> None:
    """The checks are not vacuous: each kind of second spelling is reported."""
    template = (
        "    http-request set-var(txn.egress_rule) str(no-parent) if { var(x) -m str allow }\n"
        "    set-var(txn.dsthost) map_str(f,deny)\n{{ V.var.rule }} {# txn.egress_ok #}\n"
    )
    assert template_spellings(template) == [
        "txn.egress_rule",
        "txn.dsthost",
        "no-parent",
        "no-parent",
        "allow",
        "deny",
    ]
    lua = 'txn:set_var("txn.egress_bad", "x")\nif v == "would-deny" then end\n'
    assert sorted(lua_spellings(lua)) == ["txn.egress_bad", "would-deny"]
    assert lua_spellings("local t = {\n    allow_from = 1,\n}\n") == ["allow_from"]
    python = (
        '"""Docstrings may say would-deny."""\nA = "txn.egress_x"\nB = f"guard-{c}"\nC = "deny"\n'
    )
    assert python_spellings(python, policy_module=False, allowed=frozenset()) == [
        "txn.egress_x",
        "guard-",
    ]
    assert python_spellings(python, policy_module=True, allowed=frozenset()) == [
        "txn.egress_x",
        "guard-",
        "deny",
    ]


def test_variables_are_distinct_txn_names() -> None:
    assert len(set(VARIABLES)) == len(VARIABLES)
    assert all(re.fullmatch(r"txn\.[a-z_]+", n) for n in VARIABLES)


def test_lua_module_holds_every_variable_and_word() -> None:
    text = v.lua_module(REFUSALS)
    for name in VARIABLES:
        assert f'"{name}",' in text
    for enum in (v.Verdict, v.AuditVerdict, v.RuleId, v.Limit, v.Auth, v.Via):
        for member in enum:
            assert f'{member.name} = "{member.value}",' in text
    # The refusals Lua sends itself, as string.format patterns for the route.
    parent_auth = REFUSALS[v.Reason.PARENT_AUTH].replace("{route}", "%s")
    assert f'PARENT_AUTH = "{parent_auth}",' in text
    assert "LIMIT_TUNNELS" not in text  # more blanks than the route: haproxy fills those


def test_the_rule_ids_the_vocabulary_builds() -> None:
    assert v.guard_rule("private") == "guard-private"
    assert v.limit_rule(v.Limit.TUNNELS) == "limit-tunnels"
