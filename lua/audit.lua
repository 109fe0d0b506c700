-- audit: one JSON object per connection (tcp routes) or request (http routes), written on the
-- router's normal log path (socklog or stdout) as the route's log line. See docs/lua.md.
--
-- The route's log-format calls the sample fetch `lua.egress_audit` when haproxy writes the
-- log line and appends the numbers only the log knows (bytes, duration, termination state,
-- HTTP status), then the closing brace:
--   log-format "%[lua.egress_audit],\"bytes_up\":%U,...,\"termination\":\"%ts\"}"
-- So this function returns an unterminated JSON object: '{"type":"egress-audit",...'.
--
-- Uses only APIs present in HAProxy 2.6 (Lua 5.3) and 3.0 (Lua 5.4): core.register_fetches,
-- core.now, core.backends[..].servers[..]:get_addr, txn.f fetches, txn:get_var.

local MAX_TEXT = 200 -- longer strings (a silly Host header) are cut; a log line has a limit

-- JSON string literal, ASCII only: control characters, '"', '\' and bytes >= 0x80 are
-- escaped as \u00XX, so any input yields valid JSON on one line.
local function json_string(value)
    if value == nil then
        return "null"
    end
    local s = tostring(value)
    if #s > MAX_TEXT then
        s = s:sub(1, MAX_TEXT)
    end
    local escaped = s:gsub('[%c"\\\128-\255]', function(c)
        return string.format("\\u%04x", c:byte())
    end)
    return '"' .. escaped .. '"'
end

local function json_int(value)
    local n = tonumber(value)
    if n == nil then
        return "null"
    end
    return string.format("%d", math.floor(n))
end

-- "192.0.2.1:443" or "2001:db8::1:443" (get_addr does not bracket IPv6) → address, port.
local function split_addr(addr)
    if addr == nil then
        return nil, nil
    end
    local host, port = addr:match("^%[?(.-)%]?:(%d+)$")
    if host == nil then
        return addr, nil
    end
    return host, port
end

-- The destination's configured name, from the server name the compiler gave it:
-- "<host>_<port>" for an address, "<host>_<port>-<slot>" for a DNS name's server-template
-- slot (IPv6 addresses have ':' written as '-'). An address destination is named by itself.
local function destination_name(srv, address)
    if srv == nil then
        return nil
    end
    local host = srv:match("^(.*)_%d+%-%d+$") or srv:match("^(.*)_%d+$") or srv
    if address ~= nil and host:gsub("%-", ":") == address then
        return address
    end
    return host
end

-- One ISO-8601 UTC timestamp per second, per thread (os.date is not free).
local last_sec, last_stamp = -1, ""
local function timestamp()
    local now = core.now()
    if now.sec ~= last_sec then
        last_sec = now.sec
        last_stamp = os.date("!%Y-%m-%dT%H:%M:%S", now.sec)
    end
    return string.format("%s.%03dZ", last_stamp, now.usec // 1000)
end

local function server_addr(backend, srv)
    if backend == nil or srv == nil then
        return nil
    end
    local be = core.backends[backend]
    if be == nil then
        return nil
    end
    local server = be.servers[srv]
    if server == nil then
        return nil
    end
    return server:get_addr()
end

core.register_fetches("egress_audit", function(txn)
    local f = txn.f
    local route = f:fe_name()
    local srv = f:srv_name()
    local address, port = split_addr(server_addr(f:be_name(), srv))
    -- A refusal names its rule in txn.egress_rule (deny_page, the policy proxy).
    local rule = txn:get_var("txn.egress_rule")
    local out = {
        '{"type":"egress-audit","time":', json_string(timestamp()),
        ',"route":', json_string(route),
        ',"client":{"address":', json_string(f:src()),
        ',"port":', json_int(f:src_port()),
        '},"destination":{"name":', json_string(destination_name(srv, address)),
        ',"address":', json_string(address),
        ',"port":', json_int(port),
        '},"verdict":', rule and '"denied"' or '"allowed"',
        ',"rule":', json_string(rule),
    }
    local host = txn:get_var("txn.audit_host")
    local method = f:method()
    if method ~= nil then -- an HTTP route: the request line's method and the Host asked for
        out[#out + 1] = ',"method":' .. json_string(method)
        out[#out + 1] = ',"host":' .. json_string(host)
    end
    return table.concat(out)
end)
