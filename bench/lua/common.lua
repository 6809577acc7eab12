-- Shared helpers for the Spine wrk scripts.
--
-- Spreading: wrk talks to one host, so setup() pins each wrk *thread* to one node,
-- round-robin over the ports in SPINE_PORTS (thread 1 -> node 1, thread 2 -> node 2, ...).
-- All connections of a thread go to its node: this is an L4 (per-connection) round-robin
-- balancer, and with threads a multiple of the node count every node gets the same number of
-- connections and the same share of requests. One wrk process gives one merged latency
-- histogram for the whole cluster (3 wrk processes could not merge their percentiles).
-- Parameters come from environment variables (setup() runs without the script's args).
local M = {}

local threads = {}
local counter = 0
local addrs = nil

function M.env(name, default)
  local v = os.getenv(name)
  if v == nil or v == "" then return default end
  return v
end

function M.setup(thread)
  if addrs == nil then
    addrs = {}
    local host = M.env("SPINE_HOST", "127.0.0.1")
    for port in string.gmatch(M.env("SPINE_PORTS", "18788"), "%d+") do
      local found = wrk.lookup(host, port)
      table.insert(addrs, found[1])
    end
  end
  thread.addr = addrs[(counter % #addrs) + 1]
  thread:set("node", counter % #addrs)  -- 0-based index of the thread's node in SPINE_PORTS
  counter = counter + 1
  thread:set("tid", counter)
  table.insert(threads, thread)
end

-- Per-thread init: seed the RNG differently in every thread.
function M.init()
  math.randomseed(os.time() * 1000 + (tid or 0) * 7919)
  for _ = 1, 10 do math.random() end
end

-- A function returning random id numbers for ids `<prefix>-0 .. <prefix>-(n-1)`. With
-- SPINE_KEYS_DIR set (run_bench.py --owner-routing), only the ones the thread's node owns, read
-- from SPINE_KEYS_DIR/<prefix>-<node>.txt: no request is forwarded to another node.
function M.picker(prefix, n)
  local dir = M.env("SPINE_KEYS_DIR", nil)
  if dir == nil then
    return function() return math.random(0, n - 1) end
  end
  local owned = {}
  for line in io.lines(dir .. "/" .. prefix .. "-" .. tostring(node or 0) .. ".txt") do
    owned[#owned + 1] = tonumber(line)
  end
  return function() return owned[math.random(#owned)] end
end

local words = {
  "agent", "memory", "cluster", "replica", "quorum", "session", "vector", "shard",
  "token", "handoff", "gossip", "ring", "version", "clock", "record", "search",
  "observed", "user", "prefers", "the", "meeting", "notes", "about", "project",
  "deadline", "tuesday", "budget", "review", "draft", "summary", "decided", "plan",
}

-- A ~`bytes`-byte JSON-safe text of random words.
function M.text(bytes)
  local parts, n = {}, 0
  while n < bytes do
    local w = words[math.random(#words)]
    parts[#parts + 1] = w
    n = n + #w + 1
  end
  return string.sub(table.concat(parts, " "), 1, bytes)
end

-- `count` pre-built PUT bodies with ~`bytes` of content and the given tags (a JSON list literal).
function M.bodies(count, bytes, tags_json)
  local out = {}
  for i = 1, count do
    out[i] = '{"content":"' .. M.text(bytes) .. '","tags":' .. tags_json .. '}'
  end
  return out
end

-- Statuses counted by scripts that define response() (optional).
function M.count(status)
  if status == 200 then s200 = (s200 or 0) + 1
  elseif status == 201 then s201 = (s201 or 0) + 1
  elseif status == 404 then s404 = (s404 or 0) + 1
  elseif status == 503 then s503 = (s503 or 0) + 1
  else sother = (sother or 0) + 1 end
end

-- done(): one machine-readable line that run_bench.py parses (latencies in microseconds).
function M.done(summary, latency, requests)
  local e = summary.errors
  local counts = { s200 = 0, s201 = 0, s404 = 0, s503 = 0, sother = 0, gets = 0, puts = 0 }
  for _, t in ipairs(threads) do
    for k, _ in pairs(counts) do counts[k] = counts[k] + (t:get(k) or 0) end
  end
  local parts = {
    string.format('"requests":%d', summary.requests),
    string.format('"duration_us":%d', summary.duration),
    string.format('"bytes":%d', summary.bytes),
    string.format('"err_connect":%d,"err_read":%d,"err_write":%d,"err_status":%d,"err_timeout":%d',
      e.connect, e.read, e.write, e.status, e.timeout),
    string.format('"lat_mean_us":%.1f,"lat_max_us":%d', latency.mean, latency.max),
    string.format('"p50_us":%d,"p90_us":%d,"p99_us":%d,"p999_us":%d',
      latency:percentile(50), latency:percentile(90), latency:percentile(99),
      latency:percentile(99.9)),
    string.format('"threads":%d', #threads),
  }
  for k, v in pairs(counts) do parts[#parts + 1] = string.format('"%s":%d', k, v) end
  io.write("SPINE_RESULT {" .. table.concat(parts, ",") .. "}\n")
end

return M
