-- Give back what check.lua counted for a request that was rejected after all: on a Redis Cluster a request's
-- counters may live in several slots, checked by one call each, and another slot's policy said no.
--
-- KEYS[i]             a counter that check.lua counted this request in
-- ARGV[1]             the request's member (sliding-log entries)
-- ARGV[2 + 3(i-1) ..] policy i: algorithm ("L" sliding log, "G" GCRA), limit, window (ms)
--
-- Sliding log: the request's entry goes. GCRA: the theoretical arrival time moves back by one interval, which
-- is what counting one request moved it forward by.

local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local member = ARGV[1]
for i = 1, #KEYS do
  local base = 1 + (i - 1) * 3
  local key = KEYS[i]
  if ARGV[base + 1] == 'L' then
    redis.call('ZREM', key, member)
  else
    local tat = tonumber(redis.call('GET', key) or '0')
    local back = tat - tonumber(ARGV[base + 3]) * 1000 / tonumber(ARGV[base + 2])
    if back <= now then
      redis.call('DEL', key)
    else
      redis.call('SET', key, string.format('%.0f', back), 'PX', math.ceil((back - now) / 1000) + 1)
    end
  end
end
return #KEYS
