"""`show info;show stat` → Prometheus: stats parsing, metric families, one exposition path and
the HTTP endpoint. Sees haproxy only through the query callable it is handed."""
