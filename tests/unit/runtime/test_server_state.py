"""The server state a reload starts from: health kept, removed-in-runtime state dropped."""

from __future__ import annotations

from pathlib import Path

from haproxy_egress.runtime import changes
from haproxy_egress.runtime.reload import state_for

HEADER = (
    "1\n# be_id be_name srv_id srv_name srv_addr srv_op_state srv_admin_state srv_uweight "
    "srv_iweight srv_time_since_last_change srv_check_status srv_check_result srv_check_health "
    "srv_check_state srv_agent_state bk_f_forced_id srv_f_forced_id srv_fqdn srv_port srvrecord "
    "srv_use_ssl srv_check_port srv_check_addr srv_agent_addr srv_agent_port"
)
TEXT = """backend web
    mode http
    server 10.0.0.1_80 10.0.0.1:80 check inter 2s rise 2 fall 3
    server 10.0.0.2_80 10.0.0.2:80 check inter 2s rise 2 fall 3
    server-template api.test_443- 2 api.test:443 resolvers dns
"""


def line(name: str, addr: str, admin: int, port: int) -> str:
    return f"3 web 1 {name} {addr} 0 {admin} 1 1 5 6 3 4 6 0 0 0 - {port} - 0 0 - - 0"


def test_keeps_health_of_listed_servers_and_drops_maintenance_and_moved_ones() -> None:
    down = line("10.0.0.1_80", "10.0.0.1", 0, 80)  # checks said down: keep it down
    drained = line("10.0.0.2_80", "10.0.0.2", 1, 80)  # removed at runtime, listed again
    decoy = line("10.0.0.2_80", "10.0.0.9", 0, 80)  # same name, another address
    slot = line("api.test_443-1", "192.0.2.7", 0, 443)  # a resolved slot: keep its address
    gone = line("10.0.0.3_80", "10.0.0.3", 0, 80)  # not in the cfg: haproxy ignores it
    # Never filled: starts empty, as at a first start, instead of "DOWN after a reload".
    empty = line("api.test_443-2", "-", 32, 443).replace(" - 443 ", " api.test 443 ")
    state = "\n".join([HEADER, down, drained, decoy, slot, empty, gone]) + "\n"
    assert state_for(state, TEXT) == "\n".join([HEADER, down, slot, gone]) + "\n"


def test_the_reload_reads_the_same_servers_as_the_diff_does() -> None:
    """`server_addresses` (what a reload needs, as strings) is `servers` (the diff's objects)."""
    goldens = sorted(Path(__file__).parents[2].glob("data/golden/*/haproxy.cfg"))
    assert goldens
    for cfg in goldens:
        text = cfg.read_text()
        expected = {ref: server.address for ref, server in changes.servers(text).items()}
        assert changes.server_addresses(text) == expected, cfg


def test_an_answer_without_server_lines_stays_a_valid_state_file() -> None:
    assert state_for("", TEXT) == "\n"
    assert state_for(HEADER + "\n", TEXT) == HEADER + "\n"
    assert state_for(HEADER.replace("\n", "\r\n") + "\r\n", TEXT) == HEADER + "\n"
