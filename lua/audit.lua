-- audit: one JSON object per connection (tcp routes) or request (http routes), written on the
-- router's normal log path (socklog or stdout) as the route's log line. See docs/lua.md.
--
-- haproxy builds the object itself in the route's log-format (haproxy_egress/compiler.py,
-- AUDIT_HEAD): time, client, address, port, rule, bytes, duration, status are native log
-- fields. Lua adds only what haproxy cannot say, as two converters (string in, string out; a
-- Lua sample fetch would build a TXN object per log line, which cost 40% of the request rate):
--   %{+Q}[srv_name,lua.egress_audit_name]              the destination's configured name
--   %{+Q}[var(<egress.var.rule>,),lua.egress_audit_verdict] allowed, or denied when a rule is set
-- The log-format quotes both (%{+Q}), so they return bare text.
--
-- Uses only APIs present in HAProxy 2.6 (Lua 5.3) and 3.0 (Lua 5.4): core.register_converters.
-- Its words (egress.audit) come from haproxy_egress/config/vocabulary.py, loaded first.

-- JSON string contents, ASCII only: control characters, '"', '\' and bytes >= 0x80 are
-- escaped as \u00XX. Server names are the compiler's, so this is defence, not decoding.
local function json_text(s)
    if not s:find('[%c"\\\128-\255]') then
        return s
    end
    return (s:gsub('[%c"\\\128-\255]', function(c)
        return string.format("\\u%04x", c:byte())
    end))
end

-- The compiler names servers "<address>_<port>" for an address (IPv6 with ':' written as
-- '-', as haproxy names allow neither brackets nor a readable ':' in every tool) and
-- "<host>_<port>-<slot>" for a DNS name's server-template slots. Server names are fixed by
-- the config, so each is worked out once per thread and kept.
local names = {}

local function destination_name(srv)
    local name = names[srv]
    if name == nil then
        local host = srv:match("^(.*)_%d+%-%d+$")
        if host == nil then
            host = srv:match("^(.*)_%d+$")
            host = host and host:gsub("%-", ":") or srv
        end
        name = json_text(host)
        names[srv] = name
    end
    return name
end

core.register_converters("egress_audit_name", destination_name)

-- A refusal names its rule in egress.var.rule (deny_page, user hooks); the log-format passes ""
-- when it is not set.
core.register_converters("egress_audit_verdict", function(rule)
    if rule == nil or rule == "" then
        return egress.audit.ALLOWED
    end
    return egress.audit.DENIED
end)
