-- haproxy-egress: CONNECT for the policy proxy (haproxy 2.6 / Lua 5.3 and 3.x / Lua 5.4).
--
-- haproxy does not terminate CONNECT itself. The proxy frontend runs in TCP mode; for a
-- connection that starts with "CONNECT ", `egress_connect` (a tcp-request content action)
-- reads the request head once, stores the authority in txn.dsthost / txn.dstport and removes
-- the head from the request buffer. The policy itself stays in haproxy ACLs, which read those
-- variables. `egress_established` (a tcp-response content action in the tunnel backend) runs
-- when the upstream connection is up and puts "200 Connection established" in front of
-- whatever the origin sends, so a dead origin never gets a fake 200. The tunnel bytes are then
-- forwarded by haproxy itself: Lua runs once per tunnel, never per byte.
--
-- Only APIs present in both haproxy 2.6 and 3.x are used: Channel:line/remove/insert,
-- TXN:set_var/get_var, core.register_action/register_service and AppletTCP:get_var/send.

local MAX_HEAD_LINES = 64  -- a CONNECT head is a request line and a few headers

-- Parse "host:port" / "[v6]:port"; returns lower-case host (no brackets) and port, or nil.
local function authority(text)
    local host, port = text:match("^%[([%x:%.]+)%]:(%d+)$")
    if not host then
        host, port = text:match("^([%w%.%-]+):(%d+)$")
    end
    if not host then
        return nil
    end
    port = tonumber(port)
    if port == nil or port < 1 or port > 65535 or #host > 253 then
        return nil
    end
    return host:lower(), port
end

core.register_action("egress_connect", { "tcp-req" }, function(txn)
    local req = txn.req
    local offset = 0
    local first = nil
    for _ = 1, MAX_HEAD_LINES do
        -- Channel:line yields until a whole line is buffered (bounded by inspect-delay).
        local line = req:line(offset, -1)
        if line == nil or line:sub(-1) ~= "\n" then
            txn:set_var("txn.egress_bad", "incomplete CONNECT request head")
            return
        end
        offset = offset + #line
        local credential = line:match("^[Pp][Rr][Oo][Xx][Yy]%-[Aa][Uu][Tt][Hh][Oo][Rr][Ii][Zz][Aa][Tt][Ii][Oo][Nn]:[ \t]*(.-)[ \t]*\r?\n$")
        if first == nil then
            first = line
        elseif credential ~= nil then
            -- Checked by the route's ACLs (templates/policy.cfg.j2), never sent on.
            txn:set_var("txn.egress_pauth", credential)
        elseif line == "\r\n" or line == "\n" then
            local target = first:match("^CONNECT ([^ ]+) HTTP/1%.[01]\r?\n$")
            local host, port = nil, nil
            if target and target:find("[\128-\255]") then
                -- Never resolved nor sent on: a name travels as A-labels (docs/policy.md).
                txn:set_var("txn.egress_rule", "non-ascii")
                txn:set_var("txn.egress_bad", "CONNECT target is not ASCII: send international names as A-labels (xn--...)")
                return
            end
            if target then
                host, port = authority(target)
            end
            if not host then
                txn:set_var("txn.egress_bad", "malformed CONNECT request line")
                return
            end
            req:remove(0, offset)
            txn:set_var("txn.dsthost", host)
            txn:set_var("txn.dstport", port)
            return
        end
    end
    txn:set_var("txn.egress_bad", "CONNECT request head too long")
end)

-- Runs when the tunnel's upstream connection is established: the client may send now.
core.register_action("egress_established", { "tcp-res" }, function(txn)
    txn.res:insert("HTTP/1.1 200 Connection established\r\n\r\n", 0)
end)

-- connect_sni: match. The client sends its TLS ClientHello only after "200 Connection
-- established", and haproxy must read it before it connects upstream: so for these CONNECTs
-- the 200 comes first (the documented trade-off), from here, before the SNI is checked.
core.register_action("egress_early_established", { "tcp-req" }, function(txn)
    txn.res:send("HTTP/1.1 200 Connection established\r\n\r\n")
end)

-- The answer to a refused CONNECT (or a malformed head): an HTTP response naming the reason,
-- then close. Denials are rare, so a Lua applet here costs nothing on the allowed path.
core.register_service("egress_refuse", "tcp", function(applet)
    local status = applet:get_var("txn.egress_status") or 403
    local reason = applet:get_var("txn.egress_reason") or "denied by the egress policy"
    local titles = {
        [400] = "Bad Request", [403] = "Forbidden", [407] = "Proxy Authentication Required",
        [429] = "Too Many Requests", [503] = "Service Unavailable",
    }
    local challenge = ""
    if status == 407 then
        challenge = string.format('Proxy-Authenticate: Basic realm="%s"\r\n',
            applet:get_var("txn.egress_route") or "egress")
    end
    local body = reason .. "\n"
    applet:send(string.format(
        "HTTP/1.1 %d %s\r\nContent-Type: text/plain\r\n%sContent-Length: %d\r\nConnection: close\r\n\r\n%s",
        status, titles[status] or "Error", challenge, #body, body))
end)
