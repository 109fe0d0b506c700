"""Every error the program raises on purpose, and the exit codes the CLI maps them to."""

from __future__ import annotations

import enum
from collections.abc import Iterable, Sequence
from dataclasses import dataclass


class ExitCode(enum.IntEnum):
    """Process exit codes; documented in docs/operations.md."""

    OK = 0
    DENIED = 1  # `explain`: the destination would be denied; also generic failure
    CONFIG = 2  # bad configuration or usage
    HAPROXY = 3  # haproxy refused the config or could not be started
    CRASHLOOP = 4  # children kept dying; let the kubelet restart us
    FORCED_STOP = 5  # the drain deadline passed and connections were cut


@dataclass(frozen=True, order=True)
class Problem:
    """One thing wrong with the input, and exactly where it came from."""

    source: str  # file name or env var, e.g. "routes.yaml" or "SERVICE_DEST"
    path: str  # YAML path or "item 2" / "line 3"; "" when the whole source is meant
    message: str
    line: int | None = None  # 1-based line in the source file, when known

    def __str__(self) -> str:
        source = f"{self.source}:{self.line}" if self.line else self.source
        where = f"{source}: {self.path}" if self.path else source
        return f"{where}: {self.message}"


class EgressError(Exception):
    """Base of every error raised on purpose."""

    exit_code: ExitCode = ExitCode.DENIED


class ConfigError(EgressError):
    """The configuration cannot be used; carries every problem found, not just the first."""

    exit_code = ExitCode.CONFIG

    def __init__(self, problems: Iterable[Problem]) -> None:
        self.problems: tuple[Problem, ...] = tuple(problems)
        super().__init__(self.summary())

    def summary(self) -> str:
        """The multi-line text users see: a headline and one line per problem."""
        n = len(self.problems)
        lines = [f"invalid configuration ({n} problem{'s' if n != 1 else ''})"]
        lines += [f"  {p}" for p in self.problems]
        return "\n".join(lines)


class HaproxyCheckError(EgressError):
    """`haproxy -c` rejected a rendered configuration."""

    exit_code = ExitCode.HAPROXY

    def __init__(self, output: str, alerts: Sequence[str] = ()) -> None:
        # `alerts`: haproxy's [ALERT] lines (haproxy/check.py reads them); without any, the
        # output's last lines say what went wrong.
        self.output = output
        shown = list(alerts) or output.splitlines()[-3:]
        super().__init__("haproxy rejected the configuration:\n  " + "\n  ".join(shown))


class SetupError(EgressError):
    """The pod around the router is not usable (a run dir it cannot write, a binary that is
    missing): nothing was started. The message names the path, who we run as, and the fix."""

    exit_code = ExitCode.CONFIG


class LookupFailed(EgressError):
    """A DNS lookup `explain` needed got no answer (timeout, SERVFAIL): neither allowed nor
    denied can be said, so it exits like a usage error, never 0 or 1."""

    exit_code = ExitCode.CONFIG


class HaproxyError(EgressError):
    """haproxy could not be run or talked to (binary missing, socket dead, reload refused)."""

    exit_code = ExitCode.HAPROXY
