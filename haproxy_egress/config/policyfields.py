"""The policy fields of a route: rule lists, guard classes, client groups and limits; the rule
semantics are config/policy.py's."""

from __future__ import annotations

from typing import Annotated

from pydantic import (
    AfterValidator,
    ConfigDict,
    Field,
    ValidationError,
    ValidatorFunctionWrapHandler,
    WithJsonSchema,
    field_validator,
    model_validator,
)
from pydantic_core import InitErrorDetails, PydanticCustomError

from haproxy_egress.config import classes as egress_classes
from haproxy_egress.config import policy as egress_policy
from haproxy_egress.config import vocabulary
from haproxy_egress.config.scalars import ClientNetwork, Duration, Frozen
from haproxy_egress.config.users import USER_NAME

POLICY_MODES = ("proxy", "tls")
DEFAULT_GROUP = vocabulary.DEFAULT_GROUP


def _policy_rule(value: str) -> str:
    """A rule must parse (policy.parse_rule); the text is kept as written, for messages."""
    egress_policy.parse_rule(value)
    return value


def rule_list(value: object, handler: ValidatorFunctionWrapHandler) -> tuple[str, ...]:
    """A rule list: each rule checked (PolicyRuleText), and `*` only last; a misplaced `*`
    is reported in the same pass as the bad rules, not after they are fixed."""
    texts = list(value) if isinstance(value, list | tuple) else []
    misplaced = any(isinstance(t, str) and t.strip() == "*" for t in texts[:-1])
    try:
        rules: tuple[str, ...] = handler(value)
    except ValidationError as exc:
        if not misplaced:
            raise
        details = [
            InitErrorDetails(
                type=PydanticCustomError(e["type"], e["msg"]),
                loc=e["loc"],
                input=e["input"],
            )
            for e in exc.errors()
        ]
        details.append(
            InitErrorDetails(
                type=PydanticCustomError("value_error", egress_policy.WILDCARD_LAST),
                loc=(),
                input=value,
            )
        )
        raise ValidationError.from_exception_data(exc.title, details) from None
    egress_policy.check_order([egress_policy.parse_rule(text) for text in rules])
    return rules


PolicyRuleText = Annotated[
    str,
    AfterValidator(_policy_rule),
    WithJsonSchema({"type": "string", "examples": ["*.example.com", "!10.0.0.0/8", "*"]}),
]


def _guard_classes(value: tuple[str, ...]) -> tuple[str, ...]:
    """`default`, class names and `-name`; kept as written, checked by classes.expand."""
    egress_classes.expand(value)
    return value


GuardList = Annotated[
    tuple[Annotated[str, Field(pattern=r"^-?[a-z0-9-]{1,32}$")], ...],
    AfterValidator(_guard_classes),
    WithJsonSchema(
        {
            "type": "array",
            "items": {"type": "string", "enum": ["default", *egress_classes.BY_NAME]},
            "examples": [["default", "private"], ["default", "-cgnat"]],
        }
    ),
]


GROUP_NAME = r"^[a-z0-9][a-z0-9_-]{0,31}$"


class ClientGroup(Frozen):
    """A client group of a policy route: its clients (source networks) and their own ordered
    rule list (docs/policy.md)."""

    model_config = ConfigDict(
        frozen=True, extra="forbid", str_strip_whitespace=True, populate_by_name=True
    )

    name: Annotated[str, Field(pattern=GROUP_NAME)]
    sources: tuple[ClientNetwork, ...] = Field((), alias="from")  # (): any address
    # Proxy users (Proxy-Authorization: Basic, config/users.py) this group is for; (): anyone.
    users: tuple[Annotated[str, Field(pattern=USER_NAME)], ...] = ()
    policy: tuple[PolicyRuleText, ...]
    enforce: bool | None = None  # None: the route's `enforce`

    @model_validator(mode="after")
    def _someone(self) -> ClientGroup:
        if not self.sources and not self.users:
            raise ValueError("a client group needs `from` (client networks), `users`, or both")
        return self

    @field_validator("name")
    @classmethod
    def _not_default(cls, value: str) -> str:
        if value == DEFAULT_GROUP:
            raise ValueError(f"{DEFAULT_GROUP!r} is the route's own list (its `policy`)")
        return value

    @field_validator("policy", mode="wrap")
    @classmethod
    def _policy_order(cls, value: object, handler: ValidatorFunctionWrapHandler) -> tuple[str, ...]:
        if not value:
            raise ValueError("a client group needs a policy")
        return rule_list(value, handler)


class Limits(Frozen):
    """Bounds of a policy route: concurrent CONNECT tunnels, and per client address a
    connection and a request rate (over `period`)."""

    tunnels: int | None = Field(None, ge=1, le=1_000_000)
    connection_rate: int | None = Field(None, ge=1, le=1_000_000)
    request_rate: int | None = Field(None, ge=1, le=1_000_000)
    period: Duration = 10_000
