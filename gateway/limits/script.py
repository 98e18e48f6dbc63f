"""The one Lua script that judges and spends a request's limits, atomically, in Redis.

State: ONE string per *subject* — a key, its owner, its organisation, or a dialect's user —
packed with MessagePack: ``[lifetime, quota_start, quota_used, window, window, ...]``, each
window ``[window_ms, newest_bucket, count_newest, count_newest-1, ...]``. A window is counted
in fixed buckets of ``ceil(window_ms / BUCKETS)`` ms, and only the buckets that can still
matter are kept (trailing empty ones are dropped), so a subject's state is bounded by its
number of windows, whatever the traffic: at most ``BUCKETS + 1`` counts per window.

The guarantee (README "How exact the limits are"): a request is admitted only if the units in
every bucket that overlaps ``(now - window, now]`` plus its own fit the limit. Every unit
admitted in any window-long span lies in such a bucket of the span's last admission, so no
span ever holds more than ``limit`` — never over. The buckets reach back at most one bucket
width before the window, so a request is refused only when the units admitted in the last
``window + window / BUCKETS`` plus its own exceed the limit: at most one bucket (1/60 of the
window) early, never late.

A subject's keys share its organisation's hash tag, so one request touches one cluster slot:
TIME, then a GET and at most a SET (``PX``: the state goes once no bucket can count) per
subject. A refused request writes nothing, except lifetime or quota counts just re-seeded
from PostgreSQL (so a spent key does not ask PostgreSQL again on every refusal).

Modes (``ARGV[1]``): ``s`` spend, ``p`` peek (spends and seeds nothing), ``r`` refund (gives
back a spend, into the buckets it went to), ``a`` adjust the lifetime count (an operator's
change), ``f`` forget the lifetime and quota counts (re-seeded from PostgreSQL next time)."""

from __future__ import annotations

BUCKETS = 60  # per window: the early-refusal bound is one bucket, 1/BUCKETS of the window
# Lifetime and quota counts outlive their last use by a day, then are re-seeded from
# PostgreSQL (the source of truth) by the next request that needs them.
COUNTS_TTL_MS = 86_400_000

NEED_SEED = -1  # lifetime or quota count unknown to Redis: run again with seeds
LATE = -2  # the script ran after the request's deadline: it spent nothing

# ARGV: mode, cost, enforce, deadline_ms, usage_limit, quota_limit, quota_start_s,
# usage_seed, quota_seed, at_ms (refund: Redis time of the spend), quota_end_s (when the
# period ends: a quota refusal's Retry-After), then for each KEYS[i]:
# its number of windows and each window's (limit, window_ms). KEYS[1] is the subject that
# holds the lifetime and quota counts (the key's own state).
FIXED_ARGS = 11
SEED_ARGS = (7, 8)  # where the seeds go (0-based indices into ARGV)

LIMITS = f"""
local BUCKETS, COUNTS_TTL = {BUCKETS}, {COUNTS_TTL_MS}
local floor = math.floor
local mode = ARGV[1]

local function load(key)
  local raw = redis.call('GET', key)
  if raw then
    local ok, state = pcall(cmsgpack.unpack, raw)
    if ok and type(state) == 'table' and #state >= 3 then return state end
  end
  return nil
end

local function new_state() return {{false, false, false}} end

if mode == 'a' or mode == 'f' then  -- an operator's change to the lifetime/quota counts
  local state = load(KEYS[1])
  if not state then return 0 end
  if mode == 'f' then
    state[1], state[2], state[3] = false, false, false
  elseif type(state[1]) == 'number' then
    local value = tonumber(ARGV[3])
    if ARGV[2] == 'set' then state[1] = value
    elseif ARGV[2] == 'increment' then state[1] = state[1] + value
    else state[1] = math.max(state[1] - value, 0) end
  else
    return 0
  end
  redis.call('SET', KEYS[1], cmsgpack.pack(state), 'KEEPTTL')
  return 1
end

local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + floor(tonumber(t[2]) / 1000)
local deadline = tonumber(ARGV[4])
if deadline > 0 and now > deadline then return {{-2, now}} end
local cost, enforce = tonumber(ARGV[2]), ARGV[3] == '1'
local need = math.max(cost, 1)  -- a cost-0 request is still refused by an exhausted limit
local usage_limit, quota_limit = tonumber(ARGV[5]), tonumber(ARGV[6])
local quota_start = tonumber(ARGV[7])
local usage_seed, quota_seed = ARGV[8], ARGV[9]

local function width(w) return math.ceil(w / BUCKETS) end

local function find(state, w)
  for i = 4, #state do
    if state[i][1] == w then return state[i] end
  end
  return nil
end

-- The count of the bucket holding time ms, or 0.
local function count_at(win, g, ms)
  if not win then return 0 end
  local j = win[2] - floor(ms / g) + 3
  if j >= 3 and j <= #win then return win[j] end
  return 0
end

-- Units in the buckets overlapping (now - w, now], and when the oldest of them stops
-- overlapping (ms from now); then, if excess > 0, when that many units will have left.
local function measure(win, w, excess)
  local g = width(w)
  local lo = floor((now - w) / g)
  local sum, reset, wait = 0, w, w
  if not win then return sum, reset, wait end
  local head, last = win[2], 2
  for j = 3, #win do
    if head - (j - 3) < lo then break end
    sum = sum + win[j]
    if win[j] > 0 then last = j end
  end
  if last > 2 then reset = (head - (last - 3) + 1) * g + w - now end
  if excess > 0 then
    local freed = 0
    for j = last, 3, -1 do
      freed = freed + win[j]
      if freed >= excess then
        wait = (head - (j - 3) + 1) * g + w - now
        break
      end
    end
  end
  return sum, reset, wait
end

-- The window with units added to its newest bucket (the current one, or a newer one if the
-- clock went back, e.g. after a failover), trimmed to the buckets that can still count.
local function add(win, w, units)
  local g = width(w)
  local cur, lo = floor(now / g), floor((now - w) / g)
  local head = win and win[2] or cur
  local top = math.max(head, cur)
  local out, last = {{w, top}}, 2
  for idx = top, lo, -1 do
    local c = 0
    if win then
      local j = head - idx + 3
      if j >= 3 and j <= #win then c = win[j] end
    end
    if idx == top then c = c + units end
    out[#out + 1] = c
    if c ~= 0 then last = #out end
  end
  for k = #out, last + 1, -1 do out[k] = nil end
  return out
end

local function alive(win)
  local g = width(win[1])
  return win[2] >= floor((now - win[1]) / g)
end

-- Read every subject and what the plan asks of it.
local subjects, arg = {{}}, {FIXED_ARGS} + 1
for i = 1, #KEYS do
  local n = tonumber(ARGV[arg])
  local windows = {{}}
  for k = 1, n do
    windows[k] = {{tonumber(ARGV[arg + 2 * k - 1]), tonumber(ARGV[arg + 2 * k])}}
  end
  arg = arg + 1 + 2 * n
  local counts = i == 1 and (usage_limit >= 0 or quota_limit >= 0 or mode == 'r')
  local state = nil
  if n > 0 or counts then state = load(KEYS[i]) end
  subjects[i] = {{key = KEYS[i], windows = windows, state = state, counts = counts}}
end

if mode == 'r' then  -- give back a spend: into the buckets it went to
  local at = tonumber(ARGV[10])
  for _, s in ipairs(subjects) do
    local state = s.state
    if state then
      for _, lw in ipairs(s.windows) do
        local win = find(state, lw[2])
        if win then
          local g = width(lw[2])
          local j = win[2] - floor(at / g) + 3
          if j >= 3 and j <= #win then win[j] = math.max(win[j] - cost, 0) end
        end
      end
      if s.counts then
        if usage_limit >= 0 and type(state[1]) == 'number' then
          state[1] = math.max(state[1] - cost, 0)
        end
        if quota_limit >= 0 and state[2] == quota_start then
          state[3] = math.max(state[3] - cost, 0)
        end
      end
      redis.call('SET', s.key, cmsgpack.pack(state), 'KEEPTTL')
    end
  end
  return 0
end

-- Lifetime and quota counts, from the key's state or (lost, new period) from the seeds.
local key = subjects[1]
local seeded = false
local used, qused = 0, 0
if mode == 's' or mode == 'p' then
  local state = key.state or new_state()
  if usage_limit >= 0 then
    if type(state[1]) ~= 'number' then
      if mode == 'p' then used = ''
      elseif usage_seed == '' then return {{-1}}
      else state[1], seeded = tonumber(usage_seed), true end
    end
    if used ~= '' then used = state[1] end
  end
  if quota_limit >= 0 then
    -- A request of a period that has just ended counts toward the newer one (stricter).
    if type(state[2]) ~= 'number' or state[2] < quota_start then
      if mode == 'p' then qused = ''
      elseif quota_seed == '' then return {{-1}}
      else state[2], state[3], seeded = quota_start, tonumber(quota_seed), true end
    end
    if qused ~= '' then qused = state[3] end
  end
  key.state = state
end

local verdict, retry, blocking = 0, 0, 0
local out_windows, index = {{}}, 0
for _, s in ipairs(subjects) do
  for _, lw in ipairs(s.windows) do
    index = index + 1
    local limit, w = lw[1], lw[2]
    local win = s.state and find(s.state, w)
    local inside, reset, wait = measure(win, w, 0)
    if mode == 's' and inside + need > limit then
      if verdict == 0 then verdict = 1 end
      if need <= limit then
        inside, reset, wait = measure(win, w, inside + need - limit)
      else
        wait = w
      end
      if wait > retry then retry, blocking = wait, index end
    end
    out_windows[#out_windows + 1] = {{limit - inside, reset, w}}
  end
end

if mode == 'p' then
  local out = {{0, 0, used, qused, 0, 0}}
  for _, ow in ipairs(out_windows) do
    out[#out + 1] = ow[1]
    out[#out + 1] = ow[2]
  end
  out[#out + 1] = now
  return out
end

if verdict == 0 and quota_limit >= 0 and qused + need > quota_limit then
  verdict = 2
  retry = tonumber(ARGV[11]) * 1000 - now  -- the period's end
end
if verdict == 0 and usage_limit >= 0 and used + need > usage_limit then verdict = 3 end
local spend = (verdict == 0 or not enforce) and cost > 0
if spend then
  if usage_limit >= 0 then used = used + cost; key.state[1] = used end
  if quota_limit >= 0 then qused = qused + cost; key.state[3] = qused end
end

for i, s in ipairs(subjects) do
  if spend and not s.state then s.state = new_state() end
  if (spend or (i == 1 and seeded)) and s.state then
    local state, ttl = s.state, 0
    local fresh = {{state[1], state[2], state[3]}}
    if i == 1 then
      if usage_limit < 0 then fresh[1] = false end
      if quota_limit < 0 then fresh[2], fresh[3] = false, false end
    end
    local planned = {{}}
    for _, lw in ipairs(s.windows) do
      local w = lw[2]
      if not planned[w] then
        planned[w] = true
        local win = find(state, w)
        if spend then win = add(win, w, cost) end
        if win and #win > 2 then
          fresh[#fresh + 1] = win
          ttl = math.max(ttl, w + width(w))
        end
      end
    end
    -- Windows of an older view of the limits stay while they can still count.
    for k = 4, #state do
      local win = state[k]
      if not planned[win[1]] and alive(win) then
        fresh[#fresh + 1] = win
        ttl = math.max(ttl, win[1] + width(win[1]))
      end
    end
    if fresh[1] or fresh[2] then ttl = math.max(ttl, COUNTS_TTL) end
    if ttl > 0 then
      redis.call('SET', s.key, cmsgpack.pack(fresh), 'PX', ttl)
    end
  end
end

local out = {{verdict, retry, used, qused, spend and 1 or 0, blocking}}
for _, ow in ipairs(out_windows) do
  local remaining, reset, w = ow[1], ow[2], ow[3]
  if spend then
    remaining = remaining - cost
    if reset == w then  -- the window was empty: it frees room when this spend leaves it
      local g = width(w)
      reset = (floor(now / g) + 1) * g + w - now
    end
  end
  out[#out + 1] = remaining
  out[#out + 1] = reset
end
out[#out + 1] = now
return out
"""
