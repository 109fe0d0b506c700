"""A route's Lua hooks as written in the config: the hook, its phase and its arguments (resolved
against the hook files by render/hooks.py)."""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Annotated, Literal

from pydantic import BeforeValidator, Field, WithJsonSchema, model_validator

from haproxy_egress.config.scalars import Frozen

HOOK_NAME = r"^[a-z][a-z0-9_]{0,31}$"  # also the Lua action/service name: `lua.<name>`
HOOK_ARG_KEY = r"^[a-z][a-z0-9_]{0,31}$"
# Arguments reach haproxy.cfg only as `set-var(txn.arg.<hook>.<key>) str(<value>)`: no blank,
# quote, comma, parenthesis, backslash, '#', '%' or '$' can get in to end the token.
HOOK_ARG_VALUE = r"^[A-Za-z0-9._:/@+=-]{1,128}$"
HookPhase = Literal["tcp-request", "http-request", "http-response", "service"]


def _hook_args(value: object) -> object:
    """A mapping of arguments → sorted (key, value) pairs; numbers and booleans become text."""
    if value is None:
        return ()
    if not isinstance(value, Mapping):
        raise ValueError(f"must be a mapping of name: value (got {value!r})")
    out = []
    for key, raw in value.items():
        if not isinstance(key, str) or not re.fullmatch(HOOK_ARG_KEY, key):
            raise ValueError(f"argument name {key!r} must match {HOOK_ARG_KEY}")
        item = raw
        if isinstance(raw, bool):
            item = "true" if raw else "false"
        elif isinstance(raw, int | float):
            item = str(raw)
        if not isinstance(item, str) or not re.fullmatch(HOOK_ARG_VALUE, item):
            raise ValueError(f"argument {key}: invalid value {item!r}: must match {HOOK_ARG_VALUE}")
        out.append((key, item))
    return tuple(sorted(out))


HookArgs = Annotated[
    tuple[
        tuple[
            Annotated[str, Field(pattern=HOOK_ARG_KEY)],
            Annotated[str, Field(pattern=HOOK_ARG_VALUE)],
        ],
        ...,
    ],
    BeforeValidator(_hook_args),
    WithJsonSchema(
        {
            "type": "object",
            "propertyNames": {"pattern": HOOK_ARG_KEY},
            "additionalProperties": {"type": "string", "pattern": HOOK_ARG_VALUE},
        }
    ),
]


class HookUse(Frozen):
    """One Lua hook attached to a route: which hook, where it runs, and its arguments."""

    use: Annotated[str, Field(pattern=HOOK_NAME)]
    # Not `on`: YAML 1.1 reads that key as the boolean true.
    at: HookPhase | None = None  # shipped hooks know where they run; user hooks must say
    args: HookArgs = ()

    @model_validator(mode="before")
    @classmethod
    def _shorthand(cls, value: object) -> object:
        """`- audit` as a shorthand for `- use: audit`."""
        return {"use": value} if isinstance(value, str) else value

    def arg(self, key: str) -> str | None:
        """One argument's value, or None."""
        return dict(self.args).get(key)
