-- deny_page: a readable 403 for HTTP requests the router refuses, naming the route and the
-- rule and nothing about the router's insides (no addresses, versions or backend names).
-- See docs/lua.md.
--
-- Interface (also used by the policy proxy for its refusals):
--   http-request set-var(<egress.var.rule>) str(<rule name>)   [if <refused>]
--   http-request use-service lua.deny_page                    [if <refused>]
-- Inputs: the route is the frontend's name; the rule is egress.var.rule; an optional
-- txn.arg.deny_page.contact (the hook's `contact` argument) says whom to ask for access.
--
-- Uses only APIs present in HAProxy 2.6 (Lua 5.3) and 3.0 (Lua 5.4): core.register_service,
-- AppletHTTP set_status/add_header/start_response/send/get_var, applet.f.
-- Its words (egress.var, egress.rule) come from haproxy_egress/config/vocabulary.py, loaded first.

-- Every value shown was validated by the compiler; the filter keeps the page plain text
-- even if a future caller passes something else.
local function clean(value, fallback)
    if value == nil or value == "" then
        return fallback
    end
    return (tostring(value):gsub("[^%w%._:/@+=%-]", "?"):sub(1, 128))
end

-- What would change each rule's refusal, for the reader of the page (no router insides).
local remedies = {
    [egress.rule.ALLOW_FROM] = "your address is not in this route's allow_from list; "
        .. "its owner can add your network to it",
}

core.register_service("deny_page", "http", function(applet)
    local route = clean(applet.f:fe_name(), "?")
    local rule = clean(applet:get_var(egress.var.rule), "not named")
    local contact = applet:get_var("txn.arg.deny_page.contact")
    local lines = {
        "403 Forbidden",
        "",
        "The egress router refused this request.",
        "",
        "  route: " .. route,
        "  rule:  " .. rule,
    }
    if remedies[rule] ~= nil then
        lines[#lines + 1] = "  why:   " .. remedies[rule]
    end
    lines[#lines + 1] = ""
    if contact ~= nil then
        lines[#lines + 1] = "To ask for access, contact " .. clean(contact, "?") .. "."
        lines[#lines + 1] = ""
    end
    local body = table.concat(lines, "\n")
    applet:set_status(403, "Forbidden")
    applet:add_header("content-type", "text/plain; charset=utf-8")
    applet:add_header("content-length", tostring(#body))
    applet:add_header("cache-control", "no-store")
    applet:start_response()
    applet:send(body)
end)
