-- proxy_auth: sets Proxy-Authorization: Basic ... on requests towards a corporate parent
-- proxy, from a mounted Kubernetes Secret of type kubernetes.io/basic-auth (files `username`
-- and `password` in the directory given as the `secret_dir` argument). See docs/lua.md.
--
-- Why Lua: the credential never appears in haproxy.cfg, the ConfigMap, `haproxy-egress
-- render` or the process environment, and a rotated Secret is picked up without a reload.
-- The files are re-read at most every REFRESH seconds per thread (small files on a tmpfs).
-- A client's own Proxy-Authorization is always replaced or removed, never forwarded.
--
-- Uses only APIs present in HAProxy 2.6 (Lua 5.3) and 3.0 (Lua 5.4): core.register_action,
-- core.now, core.Warning, txn:get_var, txn.c:base64, txn.http req_set_header/req_del_header.

local REFRESH = 30 -- seconds

local cache = {} -- secret_dir → { value = "Basic ..." or false, checked = seconds }

local function read_trimmed(path)
    local fh = io.open(path, "rb")
    if fh == nil then
        return nil
    end
    local data = fh:read("a")
    fh:close()
    if data == nil then
        return nil
    end
    -- `echo secret > file` leaves a newline that is not part of the secret.
    return (data:gsub("\r?\n$", ""))
end

local function credentials(txn, dir)
    local now = core.now().sec
    local entry = cache[dir]
    if entry ~= nil and now - entry.checked < REFRESH then
        return entry.value
    end
    local user = read_trimmed(dir .. "/username")
    local password = read_trimmed(dir .. "/password")
    local value = false
    if user == nil or password == nil or user == "" then
        core.Warning("proxy_auth: cannot read " .. dir .. "/username and /password; "
            .. "requests go out without Proxy-Authorization")
    else
        value = "Basic " .. txn.c:base64(user .. ":" .. password)
    end
    cache[dir] = { value = value, checked = now }
    return value
end

core.register_action("proxy_auth", { "http-req" }, function(txn)
    local dir = txn:get_var("txn.arg.proxy_auth.secret_dir")
    local value = dir and credentials(txn, dir)
    if value then
        txn.http:req_set_header("Proxy-Authorization", value)
    else
        txn.http:req_del_header("Proxy-Authorization")
    end
end, 0)
