"""bench/peers.py --quick runs end to end: every candidate and workload gets its table line;
and tinyproxy's filter there allows what the policy allows.

A smoke run of the real bench (network namespaces, haproxy, nginx, squid, tinyproxy, wrk,
iperf3): it proves the bench still works, never how fast anything is.
"""

from __future__ import annotations

import ipaddress
import re
import subprocess
import sys
from pathlib import Path

import pytest

from bench.peers import QUICK_TUNED, WORKLOADS, plan, tinyproxy_filter
from bench.policy_proxy import RULES
from haproxy_egress.config import policy
from haproxy_egress.config.vocabulary import Verdict
from tests.netns import available

pytestmark = pytest.mark.netns

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.timeout(240)
def test_quick_run_prints_every_candidate_and_workload() -> None:
    why = available()
    assert why is None, f"this test needs network namespaces: {why}"
    proc = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "peers.py"), "--quick"],
        capture_output=True,
        text=True,
        timeout=200,
        check=False,
        cwd=ROOT,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    cells = set()
    for line in proc.stdout.splitlines():
        parts = [p.strip() for p in line.strip("|").split("|")]
        if len(parts) == 8 and parts[0] in {w.name for w in WORKLOADS}:
            float(parts[2].replace(",", ""))  # a figure, not an error text
            cells.add((parts[0], parts[1]))
    expected = plan(QUICK_TUNED)
    assert len(expected) == len(set(expected)) > 40
    missing = [cell for cell in expected if cell not in cells]
    assert not missing, f"no line for {missing}\n{proc.stdout}"
    assert "goals (haproxy-egress against peers in this run):" in proc.stdout


@pytest.mark.parametrize(
    "host",
    [
        "www.good.test",
        "good.test",
        "a.b.good.test",
        "notgood.test",
        "x.bad.test",
        "exact.test",
        "www.exact.test",
        "198.18.2.7",
        "198.18.3.7",
        "198.18.20.7",
        "other.test",
    ],
)
def test_tinyproxy_gets_the_same_allow_list(host: str) -> None:
    """tinyproxy's filter (regexes on the host name) decides as the policy does, for names and
    for address literals (a name's address is not looked at: tinyproxy cannot)."""
    rules = policy.parse_rules(RULES)
    address = ipaddress.ip_address(host) if host[0].isdigit() else None
    expected = policy.decide(rules, host, address, 80).verdict == Verdict.ALLOW
    patterns = tinyproxy_filter(rules)
    assert any(re.search(p, host) for p in patterns) == expected
