"""The one Lua script that judges and spends a request's limits, atomically, in Redis.

State: ONE binary string per *subject* — a key, its owner, its organisation, or a dialect's
user. First a header, read and written with one ``struct`` call: a version byte, the number of
windows, the lifetime count, quota period start and quota count (-1 when not kept), and per
window its length in ms, its newest bucket and that bucket's units, the units in the whole
window, and the first bucket that may hold units. Then each window's ring of older buckets:
``ceil(window_ms / width) + 1`` of ``width = ceil(window_ms / BUCKETS)`` ms, a 32-bit count
each (saturating: a full bucket only counts more, never less). Its size depends on the number
of windows only — under 290 bytes each — whatever the traffic.

Why this layout: Lua in Redis is slow at building strings and tables, and a request usually
lands in the newest bucket of every window. Then only the header changes, and the new state is
the new header followed by the old rings, copied as they are; a ring is patched only when its
window moves on to a new bucket (once per bucket width).

The guarantee (README "How exact the limits are"): a request is admitted only if the units in
every bucket that overlaps ``(now - window, now]`` plus its own fit the limit. Every unit
admitted in any window-long span lies in such a bucket of the span's last admission, so no
span ever holds more than ``limit`` — never over. The buckets reach back at most one bucket
width before the window, so a request is refused only when the units admitted in the last
``window + ceil(window / BUCKETS)`` ms plus its own exceed the limit: at most one bucket (1/60
of the window, rounded up to a millisecond) early, never late.

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

# Windows a subject's limits no longer name are kept while they can still count (another
# worker may still judge with the older limits), but only this many: the state stays bounded
# however often the limits change.
EXTRA_WINDOWS = 10

NEED_SEED = -1  # lifetime or quota count unknown to Redis: run again with seeds
LATE = -2  # the script ran after the request's deadline: it spent nothing

# ARGV: mode, usage_seed, quota_seed ('' when none), then the plan's numbers packed as
# little-endian doubles (one argument, unpacked with one call: a Redis script pays for every
# argument and every tonumber): cost, enforce (1/0), deadline_ms, usage_limit, quota_limit,
# quota_period (its start in s × 4 + its kind: 1 day, 2 week, 3 month), at_ms (refund:
# Redis time of the spend), quota_end_s (a quota refusal's Retry-After), then for each
# KEYS[i] its number of windows and each window's (limit, window_ms). KEYS[1] is the subject
# that holds the lifetime and quota counts (the key's own state). Adjust: ARGV = 'a', op,
# value; forget: ARGV = 'f'.
FIXED_NUMBERS = 8
ENFORCE, DEADLINE, AT = 1, 2, 6  # where enforce, deadline_ms, at_ms go in the numbers (0-based)
PERIOD_KINDS = {"day": 1, "week": 2, "month": 3}

LIMITS = Template("""
local BUCKETS, COUNTS_TTL, VERSION, EXTRA = $buckets, $ttl, 6, $extra
local MAX_SLOT = 4294967295
local floor, ceil, max, min = math.floor, math.ceil, math.max, math.min
local unpack_at, pack, rep, sub = struct.unpack, struct.pack, string.rep, string.sub
local mode = ARGV[1]

-- A window's bucket width and the number of buckets in its ring.
local function geometry(w)
  local g = ceil(w / BUCKETS)
  return g, ceil(w / g) + 1
end

local function header_format(n) return '<BBddd' .. rep('ddddd', n) end

-- A subject's state: h, the header's values (window k's start at h[1 + 5k]); raw, the stored
-- string; d, per window k its ring's offset in raw (d[3k - 2], false once all zeros), bucket
-- width (d[3k - 1]) and ring size (d[3k]); and the ring buckets written in this call (patch:
-- k * 64 + bucket -> units).
local function state_of(h, raw)
  return {h = h, n = h[2], stored = h[2], raw = raw, d = {}, patch = nil, ring0 = #raw + 1}
end

-- The window of length w, if the state has one.
local function find(st, w)
  local h = st.h
  for k = 1, st.n do
    if h[1 + 5 * k] == w then return k end
  end
  return nil
end

local function parse(raw)
  if not raw or #raw < 26 or string.byte(raw, 1) ~= VERSION then return nil end
  local n = string.byte(raw, 2)
  local h = {unpack_at(header_format(n), raw)}
  local pos = h[#h]
  h[#h] = nil
  local state = state_of(h, raw)
  state.ring0 = pos
  local d = state.d
  for k = 1, n do
    local g, m = geometry(h[1 + 5 * k])
    d[3 * k - 2], d[3 * k - 1], d[3 * k] = pos, g, m
    pos = pos + 4 * m
  end
  if pos ~= #raw + 1 then return nil end
  return state
end

local function load(key)
  local ok, state = pcall(parse, redis.call('GET', key))
  if ok then return state end
  return nil
end

local function new_state() return state_of({VERSION, 0, -1, -1, -1}, '') end

-- Window k's ring as bytes, with the buckets written in this call.
local function ring_bytes(st, k)
  local m, at, p = st.d[3 * k], st.d[3 * k - 2], st.patch
  local base = nil
  if at then base = sub(st.raw, at, at + 4 * m - 1) end
  local slots = {}
  if p then
    for key in pairs(p) do
      if floor(key / 64) == k then slots[#slots + 1] = key % 64 end
    end
  end
  if #slots == 0 then return base or rep('\\0', 4 * m) end
  table.sort(slots)
  local parts, from = {}, 0
  for _, s in ipairs(slots) do
    if s > from then
      parts[#parts + 1] = base and sub(base, 4 * from + 1, 4 * s) or rep('\\0', 4 * (s - from))
    end
    parts[#parts + 1] = pack('<I4', p[k * 64 + s])
    from = s + 1
  end
  if from < m then
    parts[#parts + 1] = base and sub(base, 4 * from + 1, 4 * m) or rep('\\0', 4 * (m - from))
  end
  return table.concat(parts)
end

-- The state with windows `keep` (in this order) as a string. Usually only the header
-- changed: then the stored rings follow it as they are.
local function encode(st, keep)
  local h = st.h
  local same = #keep == st.stored
  for i, k in ipairs(keep) do
    if not same then break end
    same = k == i
  end
  if same then
    local header = pack(header_format(#keep), unpack(h, 1, 5 + 5 * #keep))
    if not st.patch and not st.anycleared then return header .. sub(st.raw, st.ring0) end
    local parts = {header}
    for k = 1, #keep do parts[#parts + 1] = ring_bytes(st, k) end
    return table.concat(parts)
  end
  local fresh, rings = {VERSION, #keep, h[3], h[4], h[5]}, {}
  for i, k in ipairs(keep) do
    local b = 1 + 5 * k
    for j = 0, 4 do fresh[#fresh + 1] = h[b + j] end
    rings[i] = ring_bytes(st, k)
  end
  return pack(header_format(#keep), unpack(fresh)) .. table.concat(rings)
end

local function all_windows(st)
  local keep = {}
  for k = 1, st.stored do keep[k] = k end
  return keep
end

if mode == 'a' or mode == 'f' then  -- an operator's change to the lifetime/quota counts
  local state = load(KEYS[1])
  if not state then return 0 end
  local h = state.h
  if mode == 'f' then
    h[3], h[4], h[5] = -1, -1, -1
  elseif h[3] >= 0 then
    local value = tonumber(ARGV[3])
    if ARGV[2] == 'set' then h[3] = value
    elseif ARGV[2] == 'increment' then h[3] = h[3] + value
    else h[3] = max(h[3] - value, 0) end
  else
    return 0
  end
  redis.call('SET', KEYS[1], encode(state, all_windows(state)), 'KEEPTTL')
  return 1
end

local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + floor(tonumber(t[2]) / 1000)
local V = {unpack_at('<' .. rep('d', #ARGV[4] / 8), ARGV[4])}
local cost, enforce, deadline = V[1], V[2] == 1, V[3]
if mode ~= 'r' and deadline > 0 and now > deadline then return {-2, now} end
local need = max(cost, 1)  -- a cost-0 request is still refused by an exhausted limit
local usage_limit, quota_limit, quota_period = V[4], V[5], V[6]
local usage_seed, quota_seed = ARGV[2], ARGV[3]

-- The units of bucket idx of window k's ring (a bucket older than the newest).
local function bucket(st, k, idx)
  local s = idx % st.d[3 * k]
  local p = st.patch
  if p and p[k * 64 + s] then return p[k * 64 + s] end
  local at = st.d[3 * k - 2]
  if not at then return 0 end
  return (unpack_at('<I4', st.raw, at + 4 * s))
end

local function set_bucket(st, k, idx, units)
  if not st.patch then st.patch = {} end
  st.patch[k * 64 + idx % st.d[3 * k]] = units
end

-- Units in the buckets that overlap (now - w, now]: the window's, less its older buckets.
local function counted(st, k)
  local h, b = st.h, 1 + 5 * k
  local head, lo = h[b + 1], floor((now - h[b]) / st.d[3 * k - 1])
  if head < lo then return 0, lo end
  local sum = h[b + 3]
  for idx = head - st.d[3 * k] + 1, lo - 1 do sum = sum - bucket(st, k, idx) end
  return max(sum, 0), lo
end

-- In ms from now: when the oldest counted buckets holding `units` stop overlapping the
-- window (units 1: the oldest non-empty one). Every bucket older than the window's first
-- that may hold units is empty, and the walk moves that mark up: short, whatever the
-- traffic.
local function frees(st, k, lo, units)
  local h, b = st.h, 1 + 5 * k
  local w, g, head = h[b], st.d[3 * k - 1], h[b + 1]
  local freed = 0
  for idx = max(lo, h[b + 4], head - st.d[3 * k] + 1), head do
    local here
    if idx == head then here = h[b + 2] else here = bucket(st, k, idx) end
    if freed == 0 then h[b + 4] = here == 0 and idx + 1 or idx end
    freed = freed + here
    if freed >= units then return (idx + 1) * g + w - now end
  end
  return w
end

-- Adds units to the current bucket (or to the newest if the clock went back, e.g. after a
-- failover). Moving on to a new bucket puts the newest one into the ring and drops from the
-- window the buckets that left it.
local function add(st, k, units)
  local h, b, m = st.h, 1 + 5 * k, st.d[3 * k]
  local cur, head = floor(now / st.d[3 * k - 1]), h[b + 1]
  if h[b + 3] <= 0 then h[b + 4] = max(head, cur) end
  if cur > head then
    if cur - head >= m then
      st.d[3 * k - 2], st.anycleared = false, true
      if st.patch then
        for s = 0, m - 1 do st.patch[k * 64 + s] = nil end
      end
      h[b + 3] = 0
    else
      local sum = h[b + 3]
      for idx = head - m + 1, cur - m do sum = sum - bucket(st, k, idx) end
      set_bucket(st, k, head, h[b + 2])
      for idx = head + 1, cur - 1 do set_bucket(st, k, idx, 0) end
      h[b + 3] = sum
    end
    h[b + 1], h[b + 2] = cur, 0
  end
  h[b + 2] = min(h[b + 2] + units, MAX_SLOT)
  h[b + 3] = h[b + 3] + units
end

local function add_window(st, w)
  local k = st.n + 1
  local g, m = geometry(w)
  local head, h, b = floor(now / g), st.h, 1 + 5 * k
  h[b], h[b + 1], h[b + 2], h[b + 3], h[b + 4] = w, head, 0, 0, head
  st.n, st.d[3 * k - 2], st.d[3 * k - 1], st.d[3 * k] = k, false, g, m
  return k
end

-- Read every subject and what the plan asks of it.
local subjects, arg = {}, $fixed + 1
for i = 1, #KEYS do
  local n = V[arg]
  local counts = i == 1 and (usage_limit >= 0 or quota_limit >= 0 or mode == 'r')
  local state = nil
  if n > 0 or counts then state = load(KEYS[i]) end
  subjects[i] = {key = KEYS[i], first = arg + 1, n = n, state = state}
  arg = arg + 1 + 2 * n
end

if mode == 'r' then  -- give back a spend: out of the buckets it went to
  local at = V[7]
  for i, s in ipairs(subjects) do
    local st = s.state
    if st then
      local h, done = st.h, {}
      for j = 0, s.n - 1 do
        local w = V[s.first + 2 * j + 1]
        local k = not done[w] and find(st, w)
        done[w] = true
        if k then
          local b = 1 + 5 * k
          local idx, head = floor(at / st.d[3 * k - 1]), h[b + 1]
          local taken = 0
          if idx >= head then
            taken = min(h[b + 2], cost)
            h[b + 2] = h[b + 2] - taken
          elseif idx > head - st.d[3 * k] then
            taken = min(bucket(st, k, idx), cost)
            set_bucket(st, k, idx, bucket(st, k, idx) - taken)
          end
          h[b + 3] = max(h[b + 3] - taken, 0)
        end
      end
      if i == 1 then
        if usage_limit >= 0 and h[3] >= 0 then h[3] = max(h[3] - cost, 0) end
        if quota_limit >= 0 and h[4] == quota_period then h[5] = max(h[5] - cost, 0) end
      end
      redis.call('SET', s.key, encode(st, all_windows(st)), 'KEEPTTL')
    end
  end
  return 0
end

-- Lifetime and quota counts, from the key's state or (lost, new period) from the seeds.
local key = subjects[1]
local seeded = false
local used, qused = 0, 0
local state = key.state or new_state()
local kh = state.h
if usage_limit >= 0 then
  if kh[3] < 0 then
    if mode == 'p' then used = ''
    elseif usage_seed == '' then return {-1}
    else kh[3], seeded = tonumber(usage_seed), true end
  end
  if used ~= '' then used = kh[3] end
end
if quota_limit >= 0 then
  -- The count is of this period (its start and kind), or of one that starts after this one
  -- ends: a request whose host's clock lags counts toward the newer period (stricter).
  -- Any other (an older period, or one of another kind: the quota was changed) is re-seeded.
  local stored = kh[4]
  if stored ~= quota_period and not (stored >= 0 and floor(stored / 4) >= V[8]) then
    if mode == 'p' then qused = ''
    elseif quota_seed == '' then return {-1}
    else kh[4], kh[5], seeded = quota_period, tonumber(quota_seed), true end
  end
  if qused ~= '' then qused = kh[5] end
end
key.state = state

local verdict, retry, blocking = 0, 0, 0
local out = {0, 0, used, qused, 0, 0}
local index = 0
for _, s in ipairs(subjects) do
  local st = s.state
  for j = 0, s.n - 1 do
    index = index + 1
    local limit, w = V[s.first + 2 * j], V[s.first + 2 * j + 1]
    local k = st and find(st, w)
    local inside, lo, reset = 0, 0, w
    if k then
      inside, lo = counted(st, k)
      if inside > 0 then reset = frees(st, k, lo, 1) end
    end
    if mode == 's' and inside + need > limit then
      if verdict == 0 then verdict = 1 end
      local wait = w
      if need <= limit then wait = frees(st, k, lo, inside + need - limit) end
      if wait > retry then retry, blocking = wait, index end
    end
    out[5 + 2 * index] = limit - inside
    out[6 + 2 * index] = inside == 0 and -w or reset  -- negative: the window is empty
  end
end
out[7 + 2 * index] = now

if mode == 'p' then
  for j = 1, index do out[6 + 2 * j] = math.abs(out[6 + 2 * j]) end
  return out
end

if verdict == 0 and quota_limit >= 0 and qused + need > quota_limit then
  verdict = 2
  retry = V[8] * 1000 - now  -- the period's end
end
if verdict == 0 and usage_limit >= 0 and used + need > usage_limit then verdict = 3 end
local spend = (verdict == 0 or not enforce) and cost > 0
if spend then
  if usage_limit >= 0 then used = used + cost; kh[3] = used end
  if quota_limit >= 0 then qused = qused + cost; kh[5] = qused end
end
if usage_limit < 0 then kh[3] = -1 end
if quota_limit < 0 then kh[4], kh[5] = -1, -1 end

for i, s in ipairs(subjects) do
  if spend and not s.state then s.state = new_state() end
  local st = s.state
  if (spend or (i == 1 and seeded)) and st then
    local planned, ttl = {}, 0
    for j = 0, s.n - 1 do
      local w = V[s.first + 2 * j + 1]
      if not planned[w] then
        planned[w] = true
        if spend then add(st, find(st, w) or add_window(st, w), cost) end
      end
    end
    -- Stored windows stay while planned, or while they can still count (an older view of
    -- the limits: the newest EXTRA of those); new ones follow.
    local h, keep, older = st.h, {}, 0
    for k = 1, st.stored do
      local b = 1 + 5 * k
      if not planned[h[b]] and h[b + 1] >= floor((now - h[b]) / st.d[3 * k - 1]) then
        older = older + 1
      end
    end
    for k = 1, st.n do
      local b = 1 + 5 * k
      local g = st.d[3 * k - 1]
      local kept = k > st.stored or planned[h[b]]
      if not kept and h[b + 1] >= floor((now - h[b]) / g) then
        kept, older = older <= EXTRA, older - 1
      end
      if kept then
        keep[#keep + 1] = k
        ttl = max(ttl, h[b] + g)
      end
    end
    if h[3] >= 0 or h[4] >= 0 then ttl = max(ttl, COUNTS_TTL) end
    if ttl > 0 then redis.call('SET', s.key, encode(st, keep), 'PX', ttl) end
  end
end

out[1], out[2], out[3], out[4], out[6] = verdict, retry, used, qused, blocking
out[5] = spend and 1 or 0
for j = 1, index do
  local r = out[6 + 2 * j]
  if spend then
    out[5 + 2 * j] = out[5 + 2 * j] - cost
    if r < 0 then  -- the window was empty: it frees room when this spend leaves it
      local g = geometry(-r)
      r = (floor(now / g) + 1) * g - r - now
    end
  end
  out[6 + 2 * j] = math.abs(r)
end
return out
""").substitute(buckets=BUCKETS, ttl=COUNTS_TTL_MS, fixed=FIXED_NUMBERS, extra=EXTRA_WINDOWS)
