-- haproxy-egress: CONNECT for the policy proxy (haproxy 2.6 / Lua 5.3 and 3.x / Lua 5.4).
--
-- haproxy does not terminate CONNECT itself. The proxy frontend runs in TCP mode; for a
-- connection that starts with "CONNECT ", `egress_connect` (a tcp-request content action)
-- reads the request head once, stores the authority in var.dsthost / var.dstport and removes
-- the head from the request buffer. The policy itself stays in haproxy ACLs, which read those
-- variables. `egress_established` (a tcp-response content action in the tunnel backend) runs
-- when the upstream connection is up and puts "200 Connection established" in front of
-- whatever the origin sends, so a dead origin never gets a fake 200. The tunnel bytes are then
-- forwarded by haproxy itself: Lua runs once per tunnel, never per byte.
--
-- Only APIs present in both haproxy 2.6 and 3.x are used: Channel:line/remove/insert,
-- TXN:set_var/get_var, core.register_action/register_service and AppletTCP:get_var/send.

local MAX_HEAD_LINES = 64  -- a CONNECT head is a request line and a few headers

-- The txn.* variable names, from haproxy_egress/config/vocabulary.py (loaded before this file).
local var = egress.var

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

-- The head at the start of a channel (request or status line, header lines, blank line):
-- its lines without the blank one, and its length; or nil and "incomplete" / "too long".
-- Channel:line yields until a whole line is buffered (bounded by the inspect-delay).
local function read_head(chn)
    local lines = {}
    local offset = 0
    for _ = 1, MAX_HEAD_LINES do
        local line = chn:line(offset, -1)
        if line == nil or line:sub(-1) ~= "\n" then
            return nil, "incomplete"
        end
        offset = offset + #line
        if #lines > 0 and (line == "\r\n" or line == "\n") then
            return lines, offset
        end
        lines[#lines + 1] = line
    end
    return nil, "too long"
end

-- Reads the CONNECT head; `keep` leaves it in the buffer (its length in var.headlen)
-- for egress_drop_head or egress_parent_connect to take out later: an empty request buffer
-- may be released while later rules wait (do-resolve), and nothing can be inserted into a
-- released one.
local function read_connect(txn, keep)
    local lines, length = read_head(txn.req)
    if lines == nil then
        txn:set_var(var.bad, length == "incomplete"
            and "incomplete CONNECT request head" or "CONNECT request head too long")
        return
    end
    for i = 2, #lines do
        local credential = lines[i]:match("^[Pp][Rr][Oo][Xx][Yy]%-[Aa][Uu][Tt][Hh][Oo][Rr][Ii][Zz][Aa][Tt][Ii][Oo][Nn]:[ \t]*(.-)[ \t]*\r?\n$")
        if credential ~= nil then
            -- Checked by the route's ACLs (templates/policy.cfg.j2), never sent on.
            txn:set_var(var.pauth, credential)
        end
    end
    local target = lines[1]:match("^CONNECT ([^ ]+) HTTP/1%.[01]\r?\n$")
    local host, port = nil, nil
    if target and target:find("[\128-\255]") then
        -- Never resolved nor sent on: a name travels as A-labels (docs/policy.md).
        txn:set_var(var.rule, egress.rule.NON_ASCII)
        txn:set_var(var.bad, "CONNECT target is not ASCII: send international names as A-labels (xn--...)")
        return
    end
    if target then
        host, port = authority(target)
    end
    if not host then
        txn:set_var(var.bad, "malformed CONNECT request line")
        return
    end
    if keep then
        txn:set_var(var.headlen, length)
    else
        txn.req:remove(0, length)
    end
    txn:set_var(var.dsthost, host)
    txn:set_var(var.dstport, port)
end

core.register_action("egress_connect", { "tcp-req" }, function(txn)
    read_connect(txn, false)
end)

-- Routes with parent proxies: the head stays until the route knows where the tunnel goes.
core.register_action("egress_connect_keep", { "tcp-req" }, function(txn)
    read_connect(txn, true)
end)

-- A tunnel that goes direct after all: the client's head is taken out, as egress_connect does.
core.register_action("egress_drop_head", { "tcp-req" }, function(txn)
    txn.req:remove(0, txn:get_var(var.headlen) or 0)
end)

-- Runs when the tunnel's upstream connection is established: the client may send now.
core.register_action("egress_established", { "tcp-res" }, function(txn)
    txn.res:insert("HTTP/1.1 200 Connection established\r\n\r\n", 0)
end)

-- Through a parent proxy: the CONNECT head for the parent replaces the client's. The
-- destination goes as the client named it (host:port; the parent resolves it); the router's
-- credential comes from the route's map file (var.pcred), never from the client,
-- whose own Proxy-Authorization goes out with its head.
core.register_action("egress_parent_connect", { "tcp-req" }, function(txn)
    local host = txn:get_var(var.dsthost)
    local port = txn:get_var(var.dstport)
    if host:find(":", 1, true) then
        host = "[" .. host .. "]"
    end
    local target = host .. ":" .. tostring(port)
    local head = "CONNECT " .. target .. " HTTP/1.1\r\nHost: " .. target .. "\r\n"
    local credential = txn:get_var(var.pcred)
    if credential ~= nil and credential ~= "" then
        head = head .. "Proxy-Authorization: Basic " .. credential .. "\r\n"
    end
    -- The client's head (and its Proxy-Authorization) out, the router's in its place.
    txn.req:remove(0, txn:get_var(var.headlen) or 0)
    txn.req:insert(head .. "\r\n", 0)
end)

-- The parent's answer to that CONNECT. Its 200 becomes our own "200 Connection established"
-- (the parent's headers stay here); a 407 means the router's credentials were refused, which
-- is the router's problem, not the destination's: the client gets a 502 saying so, and the
-- log a parent_status of 407. Any other answer (the parent's 403 or 503 for the
-- destination) goes to the client as the parent sent it.
core.register_action("egress_parent_established", { "tcp-res" }, function(txn)
    local res = txn.res
    local lines, length = read_head(res)
    local status = lines and tonumber(lines[1]:match("^HTTP/1%.[01] (%d%d%d)"))
    if status == nil then
        -- Not an HTTP answer, or the parent closed mid-head: nothing of it reaches the client.
        txn:set_var(var.pstatus, "bad-answer")
        txn:set_var(var.pclose, true)
        res:remove(0, res:input())
        return
    end
    txn:set_var(var.pstatus, status)
    if status == 200 then
        res:remove(0, length)
        res:insert("HTTP/1.1 200 Connection established\r\n\r\n", 0)
    elseif status == 407 then
        local body = string.format(egress.reason.PARENT_AUTH, txn:get_var(var.route) or "egress")
            .. "\n"
        res:remove(0, res:input())
        -- Sent (forwarded) at once: `tcp-response content close` then drops only what the
        -- parent sends after it (haproxy 3.0 discards data still waiting in the buffer).
        res:send(string.format(
            "HTTP/1.1 502 Bad Gateway\r\nContent-Type: text/plain\r\nContent-Length: %d\r\nConnection: close\r\n\r\n%s",
            #body, body))
        txn:set_var(var.pclose, true)
    end
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
    local status = applet:get_var(var.status) or 403
    local reason = applet:get_var(var.reason) or "denied by the egress policy"
    local titles = {
        [400] = "Bad Request", [403] = "Forbidden", [407] = "Proxy Authentication Required",
        [429] = "Too Many Requests", [503] = "Service Unavailable",
    }
    local challenge = ""
    if status == 407 then
        challenge = string.format('Proxy-Authenticate: Basic realm="%s"\r\n',
            applet:get_var(var.route) or "egress")
    end
    local body = reason .. "\n"
    applet:send(string.format(
        "HTTP/1.1 %d %s\r\nContent-Type: text/plain\r\n%sContent-Length: %d\r\nConnection: close\r\n\r\n%s",
        status, titles[status] or "Error", challenge, #body, body))
end)
