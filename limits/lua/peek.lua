-- What check.lua would answer for one request, without counting it or changing anything (the route tester's
-- dry run). Same arguments as check.lua but no deadline and no member; same reply.
--
-- KEYS[i]             the counter of policy i for this request's client
-- ARGV[1 + 5(i-1) ..] policy i: algorithm ("L" sliding log, "G" GCRA), limit, window (ms), burst, shadow (1/0)
--
-- Expired sliding-log entries are not dropped here (that would be a write): only entries inside the window
-- count, which is what check.lua counts after dropping them.

local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local result = {1}
local all_allowed = true

for i = 1, #KEYS do
  local base = (i - 1) * 5
  local key = KEYS[i]
  local algorithm = ARGV[base + 1]
  local limit = tonumber(ARGV[base + 2])
  local window = tonumber(ARGV[base + 3]) * 1000
  local burst = tonumber(ARGV[base + 4])
  local shadow = ARGV[base + 5] == '1'
  local allowed, remaining, reset, retry

  if algorithm == 'L' then
    local since = '(' .. string.format('%.0f', now - window)
    local count = redis.call('ZCOUNT', key, since, '+inf')
    allowed = count < limit
    if allowed then
      remaining = limit - count - 1
      retry = 0
    else
      remaining = 0
      local freeing = redis.call('ZRANGEBYSCORE', key, since, '+inf', 'WITHSCORES', 'LIMIT', count - limit, 1)
      retry = tonumber(freeing[2]) + window - now
    end
    if count > 0 then
      local oldest = redis.call('ZRANGEBYSCORE', key, since, '+inf', 'WITHSCORES', 'LIMIT', 0, 1)
      reset = tonumber(oldest[2]) + window - now
    else
      reset = window
    end
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
    else
      remaining = 0
      reset = tat - now
      retry = new_tat - now - tolerance
    end
  end

  if not allowed and not shadow then all_allowed = false end
  result[#result + 1] = allowed and 1 or 0
  result[#result + 1] = remaining
  result[#result + 1] = math.ceil(reset / 1000)
  result[#result + 1] = math.ceil(retry / 1000)
end

if not all_allowed then result[1] = 0 end
return result
