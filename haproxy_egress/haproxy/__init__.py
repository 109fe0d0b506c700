"""Every haproxy fact, and the only place that reads haproxy's text.

- `program.py`: command lines (master-worker argv), `haproxy -v`, the pid file, a worker's RSS
- `check.py`: `haproxy -c` and the alerts it prints (Lua errors, unregistered actions)
- `cli.py`: the stats socket and master CLI client (one command in, the answer out)
- `show.py`: a typed parser per `show …` answer (proc, sess, info, servers state, table,
  acl/map) and the server admin bits
- `stat.py`: the `show stat` CSV (the metrics' hot path)
- `replies.py`: the answers to commands that change things (`add`/`del server`, `reload`)

It depends on nothing in the package above `errors`: `runtime/`, `render/` (hook alerts) and
`metrics/` read haproxy through it. Recorded answers of each haproxy version the router runs
on are under tests/data/haproxy/<version>/ (tools/record_haproxy.py re-records them).
"""
