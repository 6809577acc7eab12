-- etcd's JSON gateway (v3), the same shapes as put.lua / get.lua / mix.lua for Spine:
--   PEER_OP=put -> POST /v3/kv/put of ~SPINE_CONTENT_BYTES (200) to a random key p-0..p-(SPINE_PUT_KEYS-1)
--   PEER_OP=get -> POST /v3/kv/range (linearizable, etcd's default) of a random preloaded key k-N
--   PEER_OP=mix -> SPINE_PUT_PCT (10)% puts replacing a preloaded key, the rest ranges as above
-- Keys and values are base64 in the JSON bodies (the gateway's encoding of bytes fields).
-- Each wrk thread is pinned to one member (common.lua's setup over SPINE_PORTS).
package.path = debug.getinfo(1, "S").source:match("^@(.*/)") .. "?.lua;" .. package.path
local c = require "common"

local op = c.env("PEER_OP", "put")
local nkeys = tonumber(c.env("SPINE_KEYS", "20000"))
local nput = tonumber(c.env("SPINE_PUT_KEYS", "100000"))
local bytes = tonumber(c.env("SPINE_CONTENT_BYTES", "200"))
local put_pct = tonumber(c.env("SPINE_PUT_PCT", "10"))
local headers = { ["Content-Type"] = "application/json" }

local alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"

local function b64(s)
  local out = {}
  for i = 1, #s, 3 do
    local a, b, d = s:byte(i, i + 2)
    local n = a * 65536 + (b or 0) * 256 + (d or 0)
    local c1 = math.floor(n / 262144) % 64
    local c2 = math.floor(n / 4096) % 64
    local c3 = math.floor(n / 64) % 64
    local c4 = n % 64
    out[#out + 1] = alphabet:sub(c1 + 1, c1 + 1) .. alphabet:sub(c2 + 1, c2 + 1) ..
      (b and alphabet:sub(c3 + 1, c3 + 1) or "=") .. (d and alphabet:sub(c4 + 1, c4 + 1) or "=")
  end
  return table.concat(out)
end

local cache = {}  -- base64 of each key used, computed once per thread
local function key(prefix, n)
  local k = prefix .. n
  local e = cache[k]
  if e == nil then
    e = b64(k)
    cache[k] = e
  end
  return e
end

local values

setup = c.setup
done = c.done
function init(args)
  c.init()
  values = {}
  for i = 1, 64 do values[i] = b64(c.text(bytes)) end
end

local function put(prefix, n)
  puts = (puts or 0) + 1
  return wrk.format("POST", "/v3/kv/put", headers,
    '{"key":"' .. key(prefix, n) .. '","value":"' .. values[math.random(#values)] .. '"}')
end

local function get(n)
  gets = (gets or 0) + 1
  return wrk.format("POST", "/v3/kv/range", headers, '{"key":"' .. key("k-", n) .. '"}')
end

function request()
  if op == "put" then return put("p-", math.random(0, nput - 1)) end
  if op == "get" then return get(math.random(0, nkeys - 1)) end
  local n = math.random(0, nkeys - 1)
  if math.random(100) <= put_pct then return put("k-", n) end
  return get(n)
end

-- A range that finds no key still answers 200: count it as a 404 so that misses show.
function response(status, hdrs, body)
  if op == "get" and status == 200 and not string.find(body, '"kvs"', 1, true) then
    status = 404
  end
  c.count(status)
end
