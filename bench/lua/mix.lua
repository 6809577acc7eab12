-- The 90/10 get/put mix over the preloaded keys k-0 .. k-(SPINE_KEYS-1), session level.
-- Each thread is one client carrying its session token: it starts with SPINE_TOKEN and
-- replaces it with the Spine-Session header of every response, so reads of keys it wrote
-- (the token keeps its 32 newest) must see at least that version; other reads are R=1.
-- Note: reads add the version they saw to the token too, so after 32 distinct keys the token
-- has overflowed, and from then on reads of keys it does not hold go to a quorum (DESIGN §4).
-- Puts replace the content (~SPINE_CONTENT_BYTES) of an existing key.
package.path = debug.getinfo(1, "S").source:match("^@(.*/)") .. "?.lua;" .. package.path
local c = require "common"

local ns = c.env("SPINE_NS", "bench")
local nkeys = tonumber(c.env("SPINE_KEYS", "20000"))
local bytes = tonumber(c.env("SPINE_CONTENT_BYTES", "200"))
local put_pct = tonumber(c.env("SPINE_PUT_PCT", "10"))
local token = c.env("SPINE_TOKEN", nil)
-- SPINE_TOKEN_UPDATE=0: keep the starting token (a comparison run; a real client updates it).
local update = c.env("SPINE_TOKEN_UPDATE", "1") ~= "0"
local prefix = "/v1/ns/" .. ns .. "/memories/k-"
local bodies, pick
local get_headers = {}
local put_headers = { ["Content-Type"] = "application/json" }

setup = c.setup
done = c.done
function init(args)
  c.init()
  bodies = c.bodies(64, bytes, "[]")
  pick = c.picker("k", nkeys)
end

function request()
  local path = prefix .. pick()
  if math.random(100) <= put_pct then
    puts = (puts or 0) + 1
    put_headers["Spine-Session"] = token
    return wrk.format("PUT", path, put_headers, bodies[math.random(#bodies)])
  end
  gets = (gets or 0) + 1
  get_headers["Spine-Session"] = token
  return wrk.format("GET", path, get_headers)
end

function response(status, hdrs, body)
  c.count(status)
  local t = hdrs["Spine-Session"] or hdrs["spine-session"]
  if t and update then token = t end
end
