-- One upstream's circuit breaker: every read-modify-write of its shared state, atomically.
--
-- KEYS[1] state hash: state, gen, consec, opened, half_opened, probes, probe_ok, name, base
-- KEYS[2] failure-rate window: per bucket i<slot> (bucket number), c<slot> (calls), f<slot> (failures)
-- KEYS[3] transition events (a capped list, drained into the database by the gateway)
-- ARGV: deadline (Redis time in microseconds after which the call changes nothing; '' for none), op,
--       caller generation ('' for none), consecutive threshold, rate threshold (%), window (s),
--       minimum calls, open (ms), probes, may transition (1/0), upstream name, channel, extra, upstream id
--   op: view | acquire | fail | ok | flush | reset | release
--   extra: fail -> what failed; flush -> number of successes (0: only evaluate the failure rate);
--          reset -> who reset it
--
-- Every transition increments `gen`. A result reported with an older generation belongs to an earlier
-- open/close cycle and changes nothing. Time is the Redis server's.
--
-- Returns {state, gen, consec, open_remaining_ms, granted, transitioned, probe, state before the call}.

local t = redis.call('TIME')
if ARGV[1] ~= '' and tonumber(t[1]) * 1000000 + tonumber(t[2]) > tonumber(ARGV[1]) then
  return redis.error_reply('EXPIRED the gateway gave up on this call')
end
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local op = ARGV[2]
local caller_gen = ARGV[3]
local consec_threshold = tonumber(ARGV[4])
local rate_threshold = tonumber(ARGV[5])
local window = tonumber(ARGV[6])
local minimum_calls = tonumber(ARGV[7])
local open_ms = tonumber(ARGV[8])
local probes = tonumber(ARGV[9])
local may_transition = ARGV[10] == '1'
local name = ARGV[11]
local channel = ARGV[12]
local extra = ARGV[13]
local id = ARGV[14]

local s = redis.call('HMGET', KEYS[1], 'state', 'gen', 'consec', 'opened', 'half_opened', 'probes', 'probe_ok',
  'base')
local state = s[1] or 'closed'
local from_state = state
-- Generations must only grow, whatever Redis loses: workers hold the generation they last saw and drop views
-- older than it, and a result reported with another generation is stale. So a breaker without state (never
-- written, expired after its TTL, or lost with a Redis that restarted empty) starts a new lifetime whose
-- generations begin at the current Redis time in milliseconds, above any generation of an earlier lifetime (a
-- lifetime makes far fewer transitions than it lasts milliseconds). `base` is where the current lifetime
-- began: a result reported with a generation older than that belongs to a cycle Redis no longer knows, and
-- counts in the current one.
local gen, base
if s[2] then
  gen, base = tonumber(s[2]), tonumber(s[8] or '0')
else
  gen, base = now, now
end
local consec = tonumber(s[3] or '0')
local opened = tonumber(s[4] or '0')
local half_opened = tonumber(s[5] or '0')
local issued = tonumber(s[6] or '0')
local probe_ok = tonumber(s[7] or '0')

local dirty, transitioned, announce = false, false, false
local granted, probe = 0, 0

-- The window is about 60 buckets of (window / 60) seconds, reused as a ring.
local width = math.max(1, math.ceil(window / 60))
local slots = math.ceil(window / width) + 2
local bucket = math.floor(now / 1000 / width)
local slot = bucket % slots

local function count(calls, failures)
  if calls == 0 and failures == 0 then return end
  local key = KEYS[2]
  if tonumber(redis.call('HGET', key, 'i' .. slot) or '-1') ~= bucket then
    redis.call('HSET', key, 'i' .. slot, bucket, 'c' .. slot, 0, 'f' .. slot, 0)
  end
  if calls > 0 then redis.call('HINCRBY', key, 'c' .. slot, calls) end
  if failures > 0 then redis.call('HINCRBY', key, 'f' .. slot, failures) end
  redis.call('PEXPIRE', key, (window + 2 * width + 5) * 1000)
end

-- The failure rate over the buckets that ended at least a second ago: workers report successes in
-- batches once a second, so a younger bucket would look worse than it is.
local function rate()
  if rate_threshold <= 0 then return nil end
  local all = redis.call('HGETALL', KEYS[2])
  local fields = {}
  for i = 1, #all, 2 do fields[all[i]] = tonumber(all[i + 1]) end
  local calls, failures = 0, 0
  local newest = math.floor((now / 1000 - 1) / width) - 1
  local oldest = bucket - math.ceil(window / width)
  for k = 0, slots - 1 do
    local b = fields['i' .. k]
    if b and b >= oldest and b <= newest then
      calls = calls + (fields['c' .. k] or 0)
      failures = failures + (fields['f' .. k] or 0)
    end
  end
  if calls >= minimum_calls and failures * 100 >= rate_threshold * calls then
    return string.format('failure rate %d%% of %d calls', math.floor(failures * 100 / calls), calls)
  end
  return nil
end

local function transition(to, reason)
  local actor = ''
  if op == 'reset' then actor = extra end
  redis.call('LPUSH', KEYS[3], table.concat({now, state, to, actor, reason}, '|'))
  redis.call('LTRIM', KEYS[3], 0, 999)
  redis.call('PEXPIRE', KEYS[3], 7 * 86400000)
  state = to
  gen = gen + 1
  consec, issued, probe_ok = 0, 0, 0
  if to == 'open' then opened = now end
  if to == 'half_open' then half_opened = now end
  if to == 'closed' then redis.call('DEL', KEYS[2]) end
  dirty, transitioned = true, true
end

local stale = caller_gen ~= '' and tonumber(caller_gen) ~= gen and tonumber(caller_gen) >= base

if op == 'acquire' then
  if state == 'open' and may_transition and now >= opened + open_ms then
    transition('half_open', string.format('open for %.1f s', open_ms / 1000))
  end
  if state == 'half_open' then
    if issued < probes then
      issued = issued + 1
      granted, probe, dirty = 1, 1, true
    elseif now - half_opened >= open_ms then
      -- Probes that never reported (a crashed worker, a client that went away) are issued again.
      issued, probe_ok, half_opened = 1, 0, now
      granted, probe, dirty = 1, 1, true
    end
  elseif state == 'closed' then
    granted = 1
  end
elseif op == 'fail' and not stale then
  count(1, 1)
  if state == 'closed' then
    consec = consec + 1
    dirty, announce = true, true
    if may_transition then
      if consec_threshold > 0 and consec >= consec_threshold then
        transition('open', string.format('%d consecutive failures (last: %s)', consec, extra))
      else
        local why = rate()
        if why then transition('open', why .. ' (last: ' .. extra .. ')') end
      end
    end
  elseif state == 'half_open' and may_transition then
    transition('open', 'probe failed (' .. extra .. ')')
  end
elseif op == 'ok' and not stale then
  if state == 'closed' and consec > 0 then
    consec = 0
    dirty, announce = true, true
  elseif state == 'half_open' then
    probe_ok = probe_ok + 1
    dirty = true
    if probe_ok >= probes and may_transition then
      transition('closed', string.format('%d probe(s) succeeded', probe_ok))
    end
  end
elseif op == 'flush' then
  count(tonumber(extra), 0)
  if state == 'closed' and may_transition then
    local why = rate()
    if why then transition('open', why) end
  end
elseif op == 'reset' then
  transition('closed', 'reset by ' .. extra)
elseif op == 'release' and not stale then
  -- A probe that never reached the upstream (the gateway answered it, 413 say) gives its slot back.
  if state == 'half_open' and issued > 0 then
    issued = issued - 1
    dirty = true
  end
end

if dirty then
  redis.call('HSET', KEYS[1], 'state', state, 'gen', gen, 'consec', consec, 'opened', opened,
    'half_opened', half_opened, 'probes', issued, 'probe_ok', probe_ok, 'name', name, 'base', base)
  redis.call('PEXPIRE', KEYS[1], open_ms + window * 1000 + 3600000)
end

local open_remaining = 0
if state == 'open' then open_remaining = math.max(0, opened + open_ms - now) end
if transitioned or announce then
  redis.call('PUBLISH', channel, table.concat({id, state, gen, consec, open_remaining, transitioned and 1 or 0}, '|'))
end
return {state, gen, consec, open_remaining, granted, transitioned and 1 or 0, probe, from_state}
