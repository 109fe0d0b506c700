"""pydantic's validation errors turned into located problems (source, YAML path, message)."""

from __future__ import annotations

import difflib
import re
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, get_args

from pydantic import BaseModel, ValidationError
from pydantic.fields import FieldInfo

from haproxy_egress.errors import Problem

_PLAIN_KEY = re.compile(r"[A-Za-z_][A-Za-z0-9_-]*")


def format_loc(loc: Sequence[int | str]) -> str:
    """('routes', 1, 'listen') → 'routes[1].listen'; odd keys (a typo'd "\n") come quoted."""
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        elif part.startswith("function-") or part in ("tagged-union",):
            continue  # pydantic's internal validator names carry no meaning for users
        elif not _PLAIN_KEY.fullmatch(part):
            out += f"[{part!r}]"  # repr: a key cannot break the one-line-per-problem output
        else:
            out += f".{part}" if out else part
    return out


def _fields(kind: type) -> dict[str, FieldInfo] | None:
    """The fields of a model or of a pydantic dataclass (endpoints, listeners), else None."""
    if issubclass(kind, BaseModel):
        return kind.model_fields
    fields: dict[str, FieldInfo] | None = getattr(kind, "__pydantic_fields__", None)
    return fields


def _model_in(annotation: object) -> type | None:
    """The model (or pydantic dataclass) a field holds: itself, or inside tuple[...],
    `X | None` or Annotated[...]."""
    if isinstance(annotation, type) and _fields(annotation) is not None:
        return annotation
    for arg in get_args(annotation):
        found = _model_in(arg)
        if found is not None:
            return found
    return None


def _fields_at(model: type | None, loc: Sequence[int | str]) -> list[str]:
    """The field names (as written in YAML: aliases) of the model at `loc` under `model`."""
    fields = _fields(model) if model is not None else None
    for part in loc:
        if isinstance(part, int) or part.startswith("function-") or fields is None:
            continue
        info = fields.get(part) or next((f for f in fields.values() if f.alias == part), None)
        inner = _model_in(info.annotation) if info is not None else None
        fields = _fields(inner) if inner is not None else None
    if fields is None:
        return []
    return [info.alias or name for name, info in fields.items()]


_LAST_STEP = re.compile(r"(?:\.[^.\[]+|\[[^\]]*\])$")


def nearest_line(lines: Mapping[str, int], path: str) -> int | None:
    """The line of `path`, or of the nearest enclosing path that has one: a field that is
    missing has no line, the mapping that lacks it does."""
    while path:
        line = lines.get(path)
        if line is not None:
            return line
        shorter = _LAST_STEP.sub("", path)
        if shorter == path:
            return None
        path = shorter
    return None


def closest(name: str, known: Iterable[str]) -> str:
    """ "did you mean `x`? " for the known name closest to a misspelt one, or ""."""
    close = difflib.get_close_matches(name.replace("-", "_").lower(), list(known), n=1)
    return f"did you mean `{close[0]}`? " if close else ""


def unknown_field(name: str, known: Iterable[str]) -> str:
    """The message for an unknown field, with the closest known name when one is close."""
    return f"unknown field ({closest(name, known)}see `haproxy-egress schema` for every field)"


def _not_a_list(err: Mapping[str, Any]) -> str:
    """A single value where a list belongs, with the list spelled out for this value."""
    got = err["input"]
    name = next((p for p in reversed(err["loc"]) if isinstance(p, str)), "field")
    if not isinstance(got, str) or not got.isprintable():
        # A value with a line break or a control character is shown quoted, never spelled
        # into the example: a problem stays one line.
        return f"must be a list, not the single value {got!r}"
    return (
        f"must be a list, not the single value {got!r}: write `{name}: [{got}]`, "
        f"or one `- {got}` per line below `{name}:`"
    )


def _message(err: Mapping[str, Any], model: type | None = None) -> str:
    msg = str(err["msg"])
    for prefix in ("Value error, ", "Assertion failed, "):
        if msg.startswith(prefix):
            msg = msg[len(prefix) :]
    if err["type"] == "too_short":
        return "must not be empty"
    # A model says extra_forbidden, a pydantic dataclass unexpected_keyword_argument.
    if err["type"] in ("extra_forbidden", "unexpected_keyword_argument"):
        return unknown_field(str(err["loc"][-1]), _fields_at(model, err["loc"][:-1]))
    if err["type"] in ("tuple_type", "list_type") and isinstance(err.get("input"), str | int):
        return _not_a_list(err)
    if any("password" in str(part) for part in err["loc"]):
        return (
            msg.split(" (got", 1)[0]
            if err["type"] != "string_pattern_mismatch"
            else (
                "invalid value (not shown: it is a secret): printable ASCII without blanks, "
                "quotes, backslash, '#' or '$'"
            )
        )
    if err["type"] == "string_pattern_mismatch":
        got = err.get("input")
        return f"invalid value {got!r}: must match {err['ctx']['pattern']}"
    if err["type"] not in ("value_error", "missing") and "input" in err:
        got = err["input"]
        if not isinstance(got, Mapping | list | tuple):
            msg += f" (got {got!r})"
    return msg


def problems_from(
    error: ValidationError, source: str, prefix: str = "", model: type | None = None
) -> list[Problem]:
    """All of a ValidationError's errors as problems under `source` and a path prefix
    (`model`, the one validated, names the known fields when one is unknown)."""
    problems = []
    errors = error.errors()
    item_locs = {
        format_loc(e["loc"][:-1]) for e in errors if e["loc"] and isinstance(e["loc"][-1], int)
    }
    for err in errors:
        loc = format_loc(err["loc"])
        if err["type"] == "too_short" and loc in item_locs:
            continue  # pydantic counts only valid items: "empty" would be wrong, the item is bad
        if prefix and loc:
            path = f"{prefix}.{loc}" if not loc.startswith("[") else prefix + loc
        else:
            path = prefix or loc
        problems.append(Problem(source, path, _message(err, model)))
    return problems


def validate(model: type[Any], data: object, source: str, prefix: str = "") -> Any:
    """Validate `data` as `model` (a model or a pydantic dataclass); raise ProblemList with
    located problems on failure."""
    try:
        return model.__pydantic_validator__.validate_python(data)
    except ValidationError as exc:
        raise ProblemList(problems_from(exc, source, prefix, model)) from None


class ProblemList(Exception):
    """Internal carrier of located problems between the model and the loaders."""

    def __init__(self, problems: Iterable[Problem]) -> None:
        self.problems = list(problems)
        super().__init__("; ".join(map(str, self.problems)))
