-- PUTs of ~SPINE_CONTENT_BYTES (200) bytes of content to random ids
-- SPINE_PREFIX-0 .. SPINE_PREFIX-(SPINE_PUT_KEYS-1) (100k).
--   SPINE_LEVEL   -> sent as Spine-Consistency (e.g. "strong"); unset: the default, session
--   SPINE_TAGS    -> JSON list of tags (e.g. ["analytics"], whose override makes a write eventual:
--                    a header cannot weaken the level below the default unless the operator allows it)
-- Like the Python client, each thread carries its session token: it sends the newest one it got.
package.path = debug.getinfo(1, "S").source:match("^@(.*/)") .. "?.lua;" .. package.path
local c = require "common"

local ns = c.env("SPINE_NS", "bench")
local nkeys = tonumber(c.env("SPINE_PUT_KEYS", "100000"))
local bytes = tonumber(c.env("SPINE_CONTENT_BYTES", "200"))
local level = c.env("SPINE_LEVEL", nil)
local tags = c.env("SPINE_TAGS", "[]")
local letter = c.env("SPINE_PREFIX", "p")
local prefix = "/v1/ns/" .. ns .. "/memories/" .. letter .. "-"
local token = c.env("SPINE_TOKEN", nil)
local bodies, pick
local headers = { ["Content-Type"] = "application/json" }
if level then headers["Spine-Consistency"] = level end

setup = c.setup
done = c.done
function init(args)
  c.init()
  bodies = c.bodies(64, bytes, tags)
  pick = c.picker(letter, nkeys)
end

function request()
  headers["Spine-Session"] = token
  puts = (puts or 0) + 1
  return wrk.format("PUT", prefix .. pick(), headers,
    bodies[math.random(#bodies)])
end

function response(status, hdrs, body)
  c.count(status)
  local t = hdrs["Spine-Session"] or hdrs["spine-session"]
  if t then token = t end
end
