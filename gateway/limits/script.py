"""The one Lua script that judges and spends a request's limits, atomically, in Redis.

State: ONE binary string per *subject* — a key, its owner, its organisation, or a dialect's
user: a version byte, the lifetime count, quota period start and quota count (-1 when not
kept); then per window its length in ms, its newest bucket, the units in its ring, the
bucket before which all are empty, and the ring: ``ceil(window_ms / width) + 1`` buckets of
``width = ceil(window_ms / BUCKETS)`` ms, a 32-bit count each (saturating: a full bucket only
counts more, never less). Its size depends on the number of windows only — under 290 bytes
each — whatever the traffic. A request decodes only the headers and the buckets it needs,
and the new state is the old one with those few bytes replaced: decoding or re-encoding
every bucket would cost Redis several times more CPU.

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

from string import Template

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

LIMITS = Template("""
local BUCKETS, COUNTS_TTL, VERSION = $buckets, $ttl, 3
local MAX_SLOT = 4294967295
local floor, ceil, max, min = math.floor, math.ceil, math.max, math.min
local unpack_at, pack = struct.unpack, struct.pack
local mode = ARGV[1]

-- A window's bucket width and the size of its ring.
local function geometry(w)
  local g = ceil(w / BUCKETS)
  return g, ceil(w / g) + 1
end

-- A state: its raw string, counts, and windows {w, g, m, head, sum, tail, ring (where its
-- buckets start in raw, nil for a new window), cleared (every stored bucket is 0), slots
-- (buckets read or written: ring index -> units), touched (ring indexes written)}.
local function parse(raw)
  if not raw or #raw < 25 or string.byte(raw, 1) ~= VERSION then return nil end
  local _, life, qstart, qused, pos = unpack_at('<Bddd', raw)
  local state = {raw = raw, life = life, qstart = qstart, qused = qused, wins = {}, order = {}}
  while pos <= #raw do
    local w, head, sum, tail, ring = unpack_at('<dddd', raw, pos)
    local g, m = geometry(w)
    pos = ring + 4 * m
    if w < 1 or pos > #raw + 1 then return nil end
    state.wins[w] = {w = w, g = g, m = m, head = head, sum = sum, tail = tail, ring = ring,
                     slots = {}}
    state.order[#state.order + 1] = w
  end
  return state
end

local function load(key)
  local ok, state = pcall(parse, redis.call('GET', key))
  if ok then return state end
  return nil
end

local function new_state()
  return {raw = '', life = -1, qstart = -1, qused = -1, wins = {}, order = {}}
end

-- The state with these windows, in this order: the stored bytes, with the buckets that were
-- written replaced.
local function encode(state, kept)
  local raw = state.raw
  local parts = {pack('<Bddd', VERSION, state.life, state.qstart, state.qused)}
  for _, win in ipairs(kept) do
    parts[#parts + 1] = pack('<dddd', win.w, win.head, win.sum, win.tail)
    local stored = win.ring and not win.cleared
    local at = 0
    local touched = win.touched or {}
    table.sort(touched)
    for _, k in ipairs(touched) do
      if k > at then
        parts[#parts + 1] = stored and string.sub(raw, win.ring + 4 * at, win.ring + 4 * k - 1)
                            or string.rep('\\0', 4 * (k - at))
      end
      parts[#parts + 1] = pack('<I4', win.slots[k])
      at = k + 1
    end
    if at < win.m then
      parts[#parts + 1] = stored and string.sub(raw, win.ring + 4 * at, win.ring + 4 * win.m - 1)
                          or string.rep('\\0', 4 * (win.m - at))
    end
  end
  return table.concat(parts)
end

local function stored_windows(state)
  local kept = {}
  for _, w in ipairs(state.order) do kept[#kept + 1] = state.wins[w] end
  return kept
end

if mode == 'a' or mode == 'f' then  -- an operator's change to the lifetime/quota counts
  local state = load(KEYS[1])
  if not state then return 0 end
  if mode == 'f' then
    state.life, state.qstart, state.qused = -1, -1, -1
  elseif state.life >= 0 then
    local value = tonumber(ARGV[3])
    if ARGV[2] == 'set' then state.life = value
    elseif ARGV[2] == 'increment' then state.life = state.life + value
    else state.life = max(state.life - value, 0) end
  else
    return 0
  end
  redis.call('SET', KEYS[1], encode(state, stored_windows(state)), 'KEEPTTL')
  return 1
end

local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + floor(tonumber(t[2]) / 1000)
local deadline = tonumber(ARGV[4])
if deadline > 0 and now > deadline then return {-2, now} end
local cost, enforce = tonumber(ARGV[2]), ARGV[3] == '1'
local need = max(cost, 1)  -- a cost-0 request is still refused by an exhausted limit
local usage_limit, quota_limit = tonumber(ARGV[5]), tonumber(ARGV[6])
local quota_start = tonumber(ARGV[7])
local usage_seed, quota_seed = ARGV[8], ARGV[9]

local function slot(win, idx, raw)
  local k = idx % win.m
  local v = win.slots[k]
  if v == nil then
    v = 0
    if win.ring and not win.cleared then v = unpack_at('<I4', raw, win.ring + 4 * k) end
    win.slots[k] = v
  end
  return v
end

local function set_slot(win, idx, v)
  local k = idx % win.m
  if win.touched == nil then win.touched = {} end
  if win.slots[k] == nil or not win.written or not win.written[k] then
    win.written = win.written or {}
    if not win.written[k] then
      win.written[k] = true
      win.touched[#win.touched + 1] = k
    end
  end
  win.slots[k] = v
end

local function new_window(w)
  local g, m = geometry(w)
  local head = floor(now / g)
  return {w = w, g = g, m = m, head = head, sum = 0, tail = head, slots = {}}
end

-- Units in the buckets that overlap (now - w, now]: the ring, less its older buckets.
local function counted(win, raw)
  local lo = floor((now - win.w) / win.g)
  if win.head < lo then return 0, lo end
  local sum = win.sum
  for idx = win.head - win.m + 1, lo - 1 do sum = sum - slot(win, idx, raw) end
  return max(sum, 0), lo
end

-- In ms from now: when the oldest counted buckets holding `units` stop overlapping the
-- window (units 1: the oldest non-empty one). Every bucket older than the window's `tail`
-- is known empty, and the walk moves it up: short, whatever the traffic.
local function frees(win, lo, units, raw)
  local freed = 0
  for idx = max(lo, win.tail, win.head - win.m + 1), win.head do
    local here = slot(win, idx, raw)
    if freed == 0 then win.tail = here == 0 and idx + 1 or idx end
    freed = freed + here
    if freed >= units then return (idx + 1) * win.g + win.w - now end
  end
  return win.w
end

-- Adds units to the current bucket (or to a newer one if the clock went back, e.g. after a
-- failover), first emptying the buckets the ring reuses.
local function add(win, units, raw)
  local cur = floor(now / win.g)
  if win.sum <= 0 then win.tail = max(win.head, cur) end
  if cur - win.head >= win.m then
    win.cleared, win.slots, win.touched, win.written, win.sum = true, {}, nil, nil, 0
  else
    for idx = win.head + 1, cur do
      local old = slot(win, idx, raw)
      if old ~= 0 then
        win.sum = win.sum - old
        set_slot(win, idx, 0)
      end
    end
  end
  win.head = max(win.head, cur)
  set_slot(win, win.head, min(slot(win, win.head, raw) + units, MAX_SLOT))
  win.sum = win.sum + units
end

-- Read every subject and what the plan asks of it.
local subjects, arg = {}, $fixed + 1
for i = 1, #KEYS do
  local n = tonumber(ARGV[arg])
  local counts = i == 1 and (usage_limit >= 0 or quota_limit >= 0 or mode == 'r')
  local state = nil
  if n > 0 or counts then state = load(KEYS[i]) end
  subjects[i] = {key = KEYS[i], first = arg + 1, n = n, state = state}
  arg = arg + 1 + 2 * n
end

if mode == 'r' then  -- give back a spend: out of the buckets it went to
  local at = tonumber(ARGV[10])
  for i, s in ipairs(subjects) do
    local state = s.state
    if state then
      for k = 0, s.n - 1 do
        local win = state.wins[tonumber(ARGV[s.first + 2 * k + 1])]
        if win then
          local idx = min(floor(at / win.g), win.head)
          if idx > win.head - win.m then
            local taken = min(slot(win, idx, state.raw), cost)
            set_slot(win, idx, slot(win, idx, state.raw) - taken)
            win.sum = max(win.sum - taken, 0)
          end
        end
      end
      if i == 1 then
        if usage_limit >= 0 and state.life >= 0 then state.life = max(state.life - cost, 0) end
        if quota_limit >= 0 and state.qstart == quota_start then
          state.qused = max(state.qused - cost, 0)
        end
      end
      redis.call('SET', s.key, encode(state, stored_windows(state)), 'KEEPTTL')
    end
  end
  return 0
end

-- Lifetime and quota counts, from the key's state or (lost, new period) from the seeds.
local key = subjects[1]
local seeded = false
local used, qused = 0, 0
local state = key.state or new_state()
if usage_limit >= 0 then
  if state.life < 0 then
    if mode == 'p' then used = ''
    elseif usage_seed == '' then return {-1}
    else state.life, seeded = tonumber(usage_seed), true end
  end
  if used ~= '' then used = state.life end
end
if quota_limit >= 0 then
  -- A request of a period that has just ended counts toward the newer one (stricter).
  if state.qstart < quota_start then
    if mode == 'p' then qused = ''
    elseif quota_seed == '' then return {-1}
    else state.qstart, state.qused, seeded = quota_start, tonumber(quota_seed), true end
  end
  if qused ~= '' then qused = state.qused end
end
key.state = state

local verdict, retry, blocking = 0, 0, 0
local out = {0, 0, used, qused, 0, 0}
local index = 0
for _, s in ipairs(subjects) do
  local raw = s.state and s.state.raw
  for k = 0, s.n - 1 do
    index = index + 1
    local limit, w = tonumber(ARGV[s.first + 2 * k]), tonumber(ARGV[s.first + 2 * k + 1])
    local win = s.state and s.state.wins[w]
    local inside, lo, reset = 0, 0, w
    if win then
      inside, lo = counted(win, raw)
      if inside > 0 then reset = frees(win, lo, 1, raw) end
    end
    if mode == 's' and inside + need > limit then
      if verdict == 0 then verdict = 1 end
      local wait = w
      if need <= limit then wait = frees(win, lo, inside + need - limit, raw) end
      if wait > retry then retry, blocking = wait, index end
    end
    out[5 + 2 * index] = limit - inside
    out[6 + 2 * index] = inside == 0 and -w or reset  -- negative: the window is empty
  end
end
out[7 + 2 * index] = now

if mode == 'p' then
  for k = 1, index do out[6 + 2 * k] = math.abs(out[6 + 2 * k]) end
  return out
end

if verdict == 0 and quota_limit >= 0 and qused + need > quota_limit then
  verdict = 2
  retry = tonumber(ARGV[11]) * 1000 - now  -- the period's end
end
if verdict == 0 and usage_limit >= 0 and used + need > usage_limit then verdict = 3 end
local spend = (verdict == 0 or not enforce) and cost > 0
if spend then
  if usage_limit >= 0 then used = used + cost; state.life = used end
  if quota_limit >= 0 then qused = qused + cost; state.qused = qused end
end
if usage_limit < 0 then state.life = -1 end
if quota_limit < 0 then state.qstart, state.qused = -1, -1 end

for i, s in ipairs(subjects) do
  if spend and not s.state then s.state = new_state() end
  if (spend or (i == 1 and seeded)) and s.state then
    local st = s.state
    local planned, fresh, ttl = {}, {}, 0
    for k = 0, s.n - 1 do
      local w = tonumber(ARGV[s.first + 2 * k + 1])
      if not planned[w] then
        planned[w] = true
        local win = st.wins[w]
        if spend then
          if not win then
            win = new_window(w)
            fresh[#fresh + 1] = win
          end
          add(win, cost, st.raw)
        end
      end
    end
    -- Stored windows stay while planned, or while they can still count (an older view of
    -- the limits); new ones follow.
    local kept = {}
    for _, w in ipairs(st.order) do
      local win = st.wins[w]
      if planned[w] or win.head >= floor((now - w) / win.g) then kept[#kept + 1] = win end
    end
    for _, win in ipairs(fresh) do kept[#kept + 1] = win end
    for _, win in ipairs(kept) do ttl = max(ttl, win.w + win.g) end
    if st.life >= 0 or st.qstart >= 0 then ttl = max(ttl, COUNTS_TTL) end
    if ttl > 0 then redis.call('SET', s.key, encode(st, kept), 'PX', ttl) end
  end
end

out[1], out[2], out[3], out[4], out[6] = verdict, retry, used, qused, blocking
out[5] = spend and 1 or 0
for k = 1, index do
  local r = out[6 + 2 * k]
  if spend then
    out[5 + 2 * k] = out[5 + 2 * k] - cost
    if r < 0 then  -- the window was empty: it frees room when this spend leaves it
      local g = geometry(-r)
      r = (floor(now / g) + 1) * g - r - now
    end
  end
  out[6 + 2 * k] = math.abs(r)
end
return out
""").substitute(buckets=BUCKETS, ttl=COUNTS_TTL_MS, fixed=FIXED_ARGS)
