-- Check and count every rate-limit policy that applies to one request, atomically.
--
-- KEYS[i]             the counter of policy i for this request's client
-- ARGV[1]             deadline: Redis time (microseconds) after which this call changes nothing ('' for none)
-- ARGV[2]             a unique member for this request (sliding-log entries); '' for a dry run (the route
--                     tester's): decide as for a request, count nothing
-- ARGV[3 + 5(i-1) ..] policy i: algorithm ("L" sliding log, "G" GCRA), limit, window (ms), burst, shadow (1/0)
--
-- Phase 1 checks every policy without writing (besides dropping expired log entries). Phase 2 counts the
-- request in every policy that allowed it, but only when no enforced policy rejected it: a rejected request
-- consumes no quota anywhere. Time comes from the Redis server, never from a gateway worker's clock.
--
-- A call that runs after its deadline (the gateway already answered the request with its failure mode, say
-- after Redis was frozen) counts nothing and answers an EXPIRED error.
--
-- Returns {all_allowed, then per policy: allowed, remaining, reset_ms, retry_after_ms}.

local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])  -- microseconds
if ARGV[1] ~= '' and now > tonumber(ARGV[1]) then
  return redis.error_reply(string.format('EXPIRED %.0f us after the deadline', now - tonumber(ARGV[1])))
end
local member = ARGV[2]
local n = #KEYS
local result = {1}
local commit = {}
local all_allowed = true

for i = 1, n do
  local base = 2 + (i - 1) * 5
  local key = KEYS[i]
  local algorithm = ARGV[base + 1]
  local limit = tonumber(ARGV[base + 2])
  local window = tonumber(ARGV[base + 3]) * 1000
  local burst = tonumber(ARGV[base + 4])
  local shadow = ARGV[base + 5] == '1'
  local allowed, remaining, reset, retry

  if algorithm == 'L' then
    redis.call('ZREMRANGEBYSCORE', key, '-inf', now - window)
    local count = redis.call('ZCARD', key)
    allowed = count < limit
    if allowed then
      remaining = limit - count - 1
      retry = 0
    else
      remaining = 0
      local freeing = redis.call('ZRANGE', key, count - limit, count - limit, 'WITHSCORES')
      retry = tonumber(freeing[2]) + window - now
    end
    if count > 0 then
      local oldest = redis.call('ZRANGE', key, 0, 0, 'WITHSCORES')
      reset = tonumber(oldest[2]) + window - now
    else
      reset = window
    end
    commit[i] = allowed and 'L' or false
  else
    local interval = window / limit
    local tolerance = interval * burst
    local tat = tonumber(redis.call('GET', key) or '0')
    if tat < now then tat = now end
    local new_tat = tat + interval
    allowed = new_tat - now <= tolerance
    if allowed then
      remaining = math.floor((tolerance - (new_tat - now)) / interval)
      reset = new_tat - now
      retry = 0
      commit[i] = new_tat
    else
      remaining = 0
      reset = tat - now
      retry = new_tat - now - tolerance
      commit[i] = false
    end
  end

  if not allowed and not shadow then all_allowed = false end
  result[#result + 1] = allowed and 1 or 0
  result[#result + 1] = remaining
  result[#result + 1] = math.ceil(reset / 1000)
  result[#result + 1] = math.ceil(retry / 1000)
end

if not all_allowed then
  result[1] = 0
elseif member ~= '' then
  for i = 1, n do
    local c = commit[i]
    if c then
      local key = KEYS[i]
      local window_ms = tonumber(ARGV[2 + (i - 1) * 5 + 3])
      if c == 'L' then
        redis.call('ZADD', key, now, member)
        redis.call('PEXPIRE', key, window_ms)
      else
        redis.call('SET', key, string.format('%.0f', c), 'PX', math.ceil((c - now) / 1000) + 1)
      end
    end
  end
end
return result
