"""What the running router does not load unless its config needs it: each is memory the
supervisor would hold for as long as it runs (docs/operations.md, "Memory")."""

from __future__ import annotations

import subprocess
import sys

from haproxy_egress.config.addresses import a_labels

# Module → what needs it.
ON_DEMAND = {
    "idna": "a non-ASCII name (config/addresses.py a_labels)",
    "bcrypt": "a web config with basic_auth_users (metrics/websecurity.py)",
    "cryptography": "a route originating TLS, or `explain`",
    "dns": "`lookup` and `explain`",
}


def test_the_router_loads_what_an_ascii_config_without_tls_does_not_need_only_on_demand() -> None:
    probe = (
        "import sys\n"
        "import haproxy_egress.cli, haproxy_egress.runtime.assembly\n"
        "from haproxy_egress.config.addresses import a_labels\n"
        "assert a_labels('www.example.com') == 'www.example.com'\n"
        f"print(' '.join(m for m in {sorted(ON_DEMAND)!r} if m in sys.modules))\n"
    )
    loaded = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, check=True, timeout=60
    ).stdout.split()
    assert loaded == [], {m: ON_DEMAND[m] for m in loaded}


def test_a_non_ascii_name_still_gets_its_a_labels() -> None:
    assert a_labels("bücher.example") == "xn--bcher-kva.example"
