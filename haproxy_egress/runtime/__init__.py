"""Running haproxy: its command lines and CLI sockets, the supervised children, the PID 1
supervisor, the reload transaction and the ConfigMap watcher."""
