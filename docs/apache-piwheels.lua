-- piwheels' output tree under Apache (mod_lua): GET and HEAD only, no hidden files, no
-- listings, PEP 503 canonical project names, and PEP 691 content negotiation on the Accept
-- header's q-values for /simple/ pages. The same rules as the built-in web server
-- (master/src/web_server.rs); docs/apache.conf hooks these functions in. See
-- docs/web-server.md.

require "apache2"

-- The forms of a simple page: the file each is sent from and its content type.
local OFFERS = {
    { name = "json", main = "application", sub = "vnd.pypi.simple.v1+json",
      file = "index.json", type = "application/vnd.pypi.simple.v1+json" },
    { name = "vnd", main = "application", sub = "vnd.pypi.simple.v1+html",
      file = "index.html", type = "application/vnd.pypi.simple.v1+html" },
    { name = "html", main = "text", sub = "html",
      file = "index.html", type = "text/html; charset=utf-8" },
}

local function trim(s)
    return (s:gsub("^%s+", ""):gsub("%s+$", ""))
end

-- An HTTP quality value in thousandths, or nil when malformed.
local function quality(value)
    local whole, fraction = value:match("^([01])%.?(%d*)$")
    if not whole or #fraction > 3 or (value:find("%.") == nil and #fraction > 0) then
        return nil
    end
    local thousandths = tonumber((fraction .. "000"):sub(1, 3))
    if whole == "1" then
        return thousandths == 0 and 1000 or nil
    end
    return thousandths
end

-- The media ranges of an Accept header; malformed ones are skipped, and the "latest" simple
-- types stand for v1.
local function media_ranges(accept)
    local ranges = {}
    for item in (accept .. ","):gmatch("([^,]*),") do
        local media, parameters = item:match("^([^;]*)(.*)$")
        media = trim(media):lower()
        local main, sub = media:match("^([^/]+)/([^/]+)$")
        if main and not (main == "*" and sub ~= "*") then
            if sub == "vnd.pypi.simple.latest+json" then sub = "vnd.pypi.simple.v1+json" end
            if sub == "vnd.pypi.simple.latest+html" then sub = "vnd.pypi.simple.v1+html" end
            local q = 1000
            for name, value in parameters:gmatch(";%s*([^=;]+)=([^;]*)") do
                if trim(name):lower() == "q" then
                    q = quality(trim(value))
                    break
                end
            end
            if q then
                ranges[#ranges + 1] = { main = main, sub = sub, q = q }
            end
        end
    end
    return ranges
end

-- Breaks ties: a form named outright goes by the PEP's preference (JSON first); among forms
-- only a wildcard admits, plain HTML comes first.
local function rank(name, specificity)
    if specificity == 2 then
        return ({ json = 3, vnd = 2, html = 1 })[name]
    end
    return ({ html = 3, vnd = 2, json = 1 })[name]
end

-- The offer to answer with among `offered` (names to true), or nil when none is acceptable.
local function negotiate(accept, offered)
    if not accept or trim(accept) == "" then
        for _, name in ipairs({ "html", "vnd", "json" }) do
            if offered[name] then
                for _, offer in ipairs(OFFERS) do
                    if offer.name == name then return offer end
                end
            end
        end
        return nil
    end
    local ranges = media_ranges(accept)
    local best, best_key
    for _, offer in ipairs(OFFERS) do
        if offered[offer.name] then
            local match
            for _, range in ipairs(ranges) do
                local specificity
                if range.main == "*" and range.sub == "*" then
                    specificity = 0
                elseif range.main == offer.main and range.sub == "*" then
                    specificity = 1
                elseif range.main == offer.main and range.sub == offer.sub then
                    specificity = 2
                end
                if specificity and (not match or specificity > match.specificity) then
                    match = { specificity = specificity, q = range.q }
                end
            end
            if match and match.q > 0 then
                local key = { match.q, match.specificity, rank(offer.name, match.specificity) }
                local better = not best_key
                    or key[1] > best_key[1]
                    or (key[1] == best_key[1] and (key[2] > best_key[2]
                        or (key[2] == best_key[2] and key[3] > best_key[3])))
                if better then
                    best, best_key = offer, key
                end
            end
        end
    end
    return best
end

local function unescape(s)
    return (s:gsub("%%(%x%x)", function(hex) return string.char(tonumber(hex, 16)) end))
end

local function escape(s)
    return (s:gsub("[^%w%-%._~!%$&'%(%)%*%+,;=:@]", function(c) return string.format("%%%02X", c:byte()) end))
end

local function is_file(r, path)
    local info = r:stat(path)
    return info ~= nil and info.filetype == 1
end

local function is_dir(r, path)
    local info = r:stat(path)
    return info ~= nil and info.filetype == 2
end

-- The translate_name hook.
function piwheels_translate(r)
    if r.method ~= "GET" and r.method ~= "HEAD" then
        -- Answered here: Apache's own 405 page would set its own Allow header.
        r.status = 405
        r.headers_out["Allow"] = "GET, HEAD"
        r.content_type = "text/plain; charset=utf-8"
        r:puts("only GET and HEAD are served\n")
        return apache2.DONE
    end
    local uri = r.uri
    -- Hidden names (the index writer's temporary files) are never served.
    if uri:find("/%.") then
        return 404
    end
    local root = r.document_root

    -- Non-canonical project names, under /simple/ and /project/.
    local area, name, rest = uri:match("^/(%a+)/([^/]+)(.*)$")
    if (area == "simple" or area == "project")
        and not (area == "simple" and rest == "" and (name == "index.html" or name == "index.json")) then
        local canonical = name:gsub("[-_.]+", "-"):lower()
        if canonical ~= name then
            local location = "/" .. area .. "/" .. escape(canonical) .. (rest ~= "" and rest or "/")
            if r.args and r.args ~= "" then
                location = location .. "?" .. r.args
            end
            r.headers_out["Location"] = location
            return 301
        end
    end

    if uri:sub(-1) ~= "/" then
        return apache2.DECLINED
    end
    local dir = root .. uri
    -- /simple/ and /simple/<project>/: the form the client prefers.
    if uri == "/simple/" or uri:match("^/simple/[^/]+/$") then
        r.err_headers_out["Vary"] = "Accept"
        local offered = {}
        if is_file(r, dir .. "index.json") then offered.json = true end
        if is_file(r, dir .. "index.html") then offered.vnd, offered.html = true, true end
        if next(offered) == nil then
            return 404
        end
        local accept = r.headers_in["Accept"]
        local format = r.args and r.args:match("^format=([^&]*)") or (r.args or ""):match("&format=([^&]*)")
        if format then
            accept = unescape(format):gsub(" ", "+")
        end
        local offer = negotiate(accept, offered)
        if not offer then
            return 406
        end
        r.notes["piwheels-type"] = offer.type
        r.uri = uri .. offer.file
        return apache2.DECLINED
    end
    -- Any other directory: its index, never a listing.
    if is_dir(r, dir) and not is_file(r, dir .. "index.html") and not is_file(r, dir .. "index.json") then
        return 404
    end
    return apache2.DECLINED
end

-- The fixups hook: the negotiated form's content type (after mod_mime has had its say).
function piwheels_fixups(r)
    local content_type = r.notes["piwheels-type"]
    if content_type then
        r.content_type = content_type
    end
    return apache2.DECLINED
end
