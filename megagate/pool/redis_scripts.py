"""The Lua scripts of the shared pool (`redis_store.RedisKeyPool`) and the shared client windows
(`client_windows.RedisClientWindows`): each runs atomically in Redis, with `redis.call('TIME')` as the clock."""

# A window is a sorted set of entry ids by time plus a hash of their tokens, whose field '=sum' keeps their total
# (no entry id starts with '='). No script unpacks an unbounded list: Lua's unpack() fails past about 8,000 values,
# and a key with only a tpm limit holds one entry per request of the last minute. Lists go CHUNK at a time.
_PRUNE = """
local CHUNK = 1000
local function window_tokens(tokn)
  return math.max(0, tonumber(redis.call('HGET', tokn, '=sum') or '0'))
end
local function window_ready_at(win, tokn, rpm, tpm, tokens, now)
  local at = now
  local count = redis.call('ZCARD', win)
  if rpm > 0 and count >= rpm then
    local oldest = redis.call('ZRANGE', win, count - rpm, count - rpm, 'WITHSCORES')
    at = math.max(at, tonumber(oldest[2]) + 60)
  end
  if tpm > 0 and count > 0 then
    local sum = window_tokens(tokn)
    if sum + tokens > tpm then
      -- the oldest entries leave first: when enough of them have left, the request fits
      local excess, freed, last, start = sum + tokens - tpm, nil, nil, 0
      while freed == nil and start < count do
        local entries = redis.call('ZRANGE', win, start, start + CHUNK - 1, 'WITHSCORES')
        if #entries == 0 then break end
        local ids = {}
        for j = 1, #entries, 2 do ids[#ids + 1] = entries[j] end
        local counts = redis.call('HMGET', tokn, unpack(ids))
        for j = 1, #counts do
          excess = excess - (tonumber(counts[j]) or 0)
          if excess <= 0 then
            freed = tonumber(entries[j * 2]) + 60
            break
          end
        end
        last = tonumber(entries[#entries])
        start = start + CHUNK
      end
      at = math.max(at, freed or (last + 60))
    end
  end
  return at
end
local function record(win, tokn, entry, tokens, now)
  redis.call('ZADD', win, now, entry)
  redis.call('HSET', tokn, entry, tokens)
  redis.call('HINCRBYFLOAT', tokn, '=sum', tokens)
  redis.call('PEXPIRE', win, 120000)
  redis.call('PEXPIRE', tokn, 120000)
end
local function prune(win, tokn, lease, now)
  while true do
    local old = redis.call('ZRANGEBYSCORE', win, '-inf', now - 60, 'LIMIT', 0, CHUNK)
    if #old == 0 then break end
    local gone = 0
    for _, v in ipairs(redis.call('HMGET', tokn, unpack(old))) do gone = gone + (tonumber(v) or 0) end
    redis.call('HDEL', tokn, unpack(old))
    redis.call('ZREM', win, unpack(old))
    if gone > 0 then redis.call('HINCRBYFLOAT', tokn, '=sum', -gone) end
    if #old < CHUNK then break end
  end
  redis.call('ZREMRANGEBYSCORE', lease, '-inf', now)
end
"""
# Settling an entry with the real usage: its count and the window's total move together.
_SETTLE = """
local function settle(win, tokn, entry, used)
  if redis.call('ZSCORE', win, entry) then
    local before = tonumber(redis.call('HGET', tokn, entry) or '0')
    redis.call('HSET', tokn, entry, used)
    redis.call('HINCRBYFLOAT', tokn, '=sum', tonumber(used) - before)
  end
end
"""
ACQUIRE = (
    _PRUNE
    + """
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local tokens, model, lease_id = tonumber(ARGV[1]), ARGV[2], ARGV[3]
local ttl, strategy, n, session = tonumber(ARGV[4]), ARGV[5], tonumber(ARGV[6]), ARGV[7] == '1'
local cursor = tonumber(redis.call('GET', KEYS[1]) or '0') % n
local earliest, refused, release_helps = nil, 1, 0
local best, best_busy, best_probe = nil, nil, 0
-- the order to look at keys in: the session's last key first (affinity), then round robin from the cursor
local order, prefer = {}, nil
if session then prefer = tonumber(redis.call('GET', KEYS[#KEYS]) or '') end
if prefer ~= nil and prefer < n then order[1] = prefer else prefer = nil end
for offset = 0, n - 1 do
  local i = (cursor + offset) % n
  if i ~= prefer then order[#order + 1] = i end
end
for _, i in ipairs(order) do
  local a = 8 + i * 4
  local rpm, tpm, maxc = tonumber(ARGV[a]), tonumber(ARGV[a + 1]), tonumber(ARGV[a + 2])
  if ARGV[a + 3] ~= '1' then
    local k = 2 + i * 5
    local win, tokn, lease, st, mcool = KEYS[k], KEYS[k + 1], KEYS[k + 2], KEYS[k + 3], KEYS[k + 4]
    prune(win, tokn, lease, now)
    local disabled = redis.call('HGET', st, 'disabled') == '1'
    if not disabled then refused = 0 end
    local at = now
    if disabled then
      local probe_at = tonumber(redis.call('HGET', st, 'probe_at') or '0')
      local probing = redis.call('HGET', st, 'probing')
      if probing and probing ~= '' and redis.call('ZSCORE', lease, probing) then
        at = math.max(probe_at, now + 1)
      elseif now < probe_at then
        at = probe_at
      end
    else
      at = math.max(now, tonumber(redis.call('HGET', st, 'cool') or '0'))
      if model ~= '' then
        local mc = redis.call('HGET', mcool, model)
        if mc then at = math.max(at, tonumber(mc)) end
      end
      at = math.max(at, window_ready_at(win, tokn, rpm, tpm, tokens, now))
      if maxc > 0 and at <= now and redis.call('ZCARD', lease) >= maxc then
        at = nil
        release_helps = 1
      end
    end
    if at ~= nil then
      if at <= now then
        local busy = redis.call('ZCARD', lease)
        if best == nil or busy < best_busy then
          best, best_busy, best_probe = i, busy, disabled and 1 or 0
        end
        if strategy == 'round_robin' or (i == prefer and not disabled) then break end
      elseif earliest == nil or at < earliest then
        earliest = at
      end
    end
  end
end
if best ~= nil then
  local k = 2 + best * 5
  record(KEYS[k], KEYS[k + 1], lease_id, tokens, now)
  redis.call('ZADD', KEYS[k + 2], now + ttl, lease_id)
  redis.call('PEXPIRE', KEYS[k + 2], math.ceil(ttl * 2000))
  if best_probe == 1 then redis.call('HSET', KEYS[k + 3], 'probing', lease_id) end
  if best ~= prefer then redis.call('SET', KEYS[1], best + 1) end
  if session then redis.call('SET', KEYS[#KEYS], best, 'EX', 3600) end
  return {best, best_probe}
end
return {-1, earliest and tostring(earliest - now) or '', refused, release_helps}
"""
)
RELEASE = (
    _SETTLE
    + """
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local win, tokn, lease, st, mcool = KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5]
local lease_id, outcome, used, retry_after, model, err = ARGV[1], ARGV[2], ARGV[3], ARGV[4], ARGV[5], ARGV[6]
local probe_interval, threshold, penalty, was_probe = tonumber(ARGV[7]), tonumber(ARGV[8]), tonumber(ARGV[9]), ARGV[10]
redis.call('ZREM', lease, lease_id)
if used ~= '' then settle(win, tokn, lease_id, used) end
if redis.call('HGET', st, 'probing') == lease_id then redis.call('HSET', st, 'probing', '') end
local function cool(until_)
  if model ~= '' then
    redis.call('HSET', mcool, model, math.max(tonumber(redis.call('HGET', mcool, model) or '0'), until_))
  else
    redis.call('HSET', st, 'cool', math.max(tonumber(redis.call('HGET', st, 'cool') or '0'), until_))
  end
end
if outcome == 'success' then
  redis.call('HSET', st, 'failures', 0, 'backoff', 0)
  if was_probe == '1' then redis.call('HSET', st, 'disabled', 0) end
elseif outcome == 'rate_limited' then
  local wait = tonumber(retry_after)
  if wait == nil then
    local backoff = tonumber(redis.call('HGET', st, 'backoff') or '0')
    wait = backoff > 0 and math.min(60, backoff * 2) or 1
    redis.call('HSET', st, 'backoff', wait)
  end
  cool(now + wait)
elseif outcome == 'auth_failed' then
  redis.call('HSET', st, 'disabled', 1, 'probe_at', now + probe_interval)
elseif outcome == 'server_error' or outcome == 'timeout' then
  local failures = redis.call('HINCRBY', st, 'failures', 1)
  if failures >= threshold then
    cool(now + penalty)
    redis.call('HSET', st, 'failures', 0)
  end
end
if err ~= '' and outcome ~= 'success' then redis.call('HSET', st, 'last_error', err) end
return 1
"""
)
REPORT = (
    _PRUNE
    + """
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local out = {}
for i = 1, #KEYS, 5 do
  local win, tokn, lease, st, mcool = KEYS[i], KEYS[i + 1], KEYS[i + 2], KEYS[i + 3], KEYS[i + 4]
  prune(win, tokn, lease, now)
  local sum = window_tokens(tokn)
  local models = {}
  local cooling = redis.call('HGETALL', mcool)
  for j = 1, #cooling, 2 do
    local left = tonumber(cooling[j + 1]) - now
    if left > 0 then models[#models + 1] = cooling[j]; models[#models + 1] = tostring(left) end
  end
  out[#out + 1] = {
    redis.call('HGET', st, 'disabled') or '0',
    tostring(tonumber(redis.call('HGET', st, 'cool') or '0') - now),
    redis.call('ZCARD', lease), redis.call('ZCARD', win), tostring(sum),
    redis.call('HGET', st, 'last_error') or '', models,
  }
end
return out
"""
)
# A client's window: admit (check and record, or say how long to wait) and settle, as ClientLimitsMiddleware does.
CLIENT_ADMIT = (
    _PRUNE
    + """
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local tokens, rpm, tpm, entry = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3]), ARGV[4]
prune(KEYS[1], KEYS[2], KEYS[3], now)
local at = window_ready_at(KEYS[1], KEYS[2], rpm, tpm, tokens, now)
if at > now then return tostring(at - now) end
record(KEYS[1], KEYS[2], entry, tokens, now)
return ''
"""
)
CLIENT_SETTLE = (
    _SETTLE
    + """
settle(KEYS[1], KEYS[2], ARGV[1], ARGV[2])
return 1
"""
)
RENEW = """
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
for i = 1, #KEYS do redis.call('ZADD', KEYS[i], 'XX', now + tonumber(ARGV[1]), ARGV[i + 1]) end
return #KEYS
"""
