"""Exit codes: each name says what it answers, and the numbers stay those docs promise."""

from __future__ import annotations

import re
from pathlib import Path

from haproxy_egress.errors import EgressError, ExitCode

OPERATIONS = Path(__file__).parent.parent.parent / "docs" / "operations.md"


def test_the_numbers_are_those_the_operations_guide_lists() -> None:
    section = OPERATIONS.read_text().split("## Exit codes", 1)[1].split("\n## ", 1)[0]
    documented = {int(code) for code in re.findall(r"^\| (\d+) \|", section, re.MULTILINE)}
    assert {code.value for code in ExitCode} == documented
    assert {int(ExitCode.DIFFERS), int(ExitCode.DENIED), int(ExitCode.FAILED)} == {1}


def test_an_error_without_a_code_of_its_own_fails_with_1() -> None:
    assert EgressError("x").exit_code is ExitCode.FAILED
