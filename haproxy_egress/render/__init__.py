"""The model → `haproxy.cfg` text (pure): the compiler, log formats, Lua hook binding."""
