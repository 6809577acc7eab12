-- GETs of random preloaded keys k-0 .. k-(SPINE_KEYS-1).
-- With SPINE_TOKEN set, every request carries that one session token: keys not in the token
-- need no particular version, so a session read is R=1 (answered from the local replica).
-- Without it, a session read goes to a read quorum.
package.path = debug.getinfo(1, "S").source:match("^@(.*/)") .. "?.lua;" .. package.path
local c = require "common"

local ns = c.env("SPINE_NS", "bench")
local nkeys = tonumber(c.env("SPINE_KEYS", "20000"))
local token = c.env("SPINE_TOKEN", nil)
local headers = {}
if token then headers["Spine-Session"] = token end
local prefix = "/v1/ns/" .. ns .. "/memories/k-"
local pick

setup = c.setup
done = c.done
function init(args)
  c.init()
  pick = c.picker("k", nkeys)
end

function request()
  return wrk.format("GET", prefix .. pick(), headers)
end
