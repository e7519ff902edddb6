-- Script services (API.md section 6): defer, timer, net.
--
-- The callbacks live here, in the VM; the host only counts and bounds them and decides when
-- they run. Each deferred call and each timer firing is started by the host as a call of its
-- own (P.defer_run, P.timer_fire) under a fresh budget, so a fault in one is that call's fault
-- and never a packet's. Nothing here touches a verdict.
--
--   defer(fn, ...)        queue fn(...) to run after the current batch; false when the queue
--                         is full (the new call is dropped and counted, the queued ones stay)
--   timer.after(ms, fn)   run fn(handle) once, ms from now; a handle with :cancel()
--   timer.every(ms, fn)   run fn(handle) every ms (at least 1 ms) until cancelled
--   net.send(bytes|pkt)   hand a raw IPv4/IPv6 packet to the host; true sent, false rate-limited
--
-- Time for timers is the host's timer clock: offline the capture clock (so runs are
-- deterministic), live a monotonic clock. Offline, P.set_due (packet.lua) makes the batch loop
-- stop before the first packet at or after the earliest due time, so timers fire between the
-- right two packets.
local P, H = ...
local lib = P.lib

local type, error, format, sub, tostring = type, error, string.format, string.sub, tostring
local setmetatable = setmetatable
local mtype, floor, tointeger = math.type, math.floor, math.tointeger
local pack, unpack = table.pack, table.unpack
local rawgetmt = debug.getmetatable   -- private to the prelude: spots packet objects
local PKT = P.PKT

local capture = false   -- offline: tell the batch loop where to stop (P.set_due)
local catchup = 1       -- firings in a row a late periodic timer may make before skipping ahead

-- The host calls this once, after the prelude and before the script.
function P.services_init(is_capture, max_catchup)
  capture = is_capture
  catchup = max_catchup
end

-- defer ----------------------------------------------------------------------

local dq, dhead, dtail = {}, 1, 0   -- queue of packed calls, dq[dhead..dtail]
local defer_push = H.defer_push     -- counts against the tenant's bound; false when full

function lib.defer(fn, ...)
  if type(fn) ~= 'function' then error(format('defer: function expected, got %s', type(fn)), 2) end
  if not defer_push() then return false end
  dtail = dtail + 1
  dq[dtail] = pack(fn, ...)
  return true
end

-- Runs the oldest queued call (the host calls this once per queued call, each under its own
-- budget). The entry leaves the queue before it runs: a call that faults is not retried.
function P.defer_run()
  if dhead > dtail then return end
  local e = dq[dhead]
  dq[dhead] = nil
  if dhead == dtail then dhead, dtail = 1, 0 else dhead = dhead + 1 end
  e[1](unpack(e, 2, e.n))
end

-- timer ----------------------------------------------------------------------

-- Timers are records { due, id, period (ns, or false), fn, lag, handle, pos } in a binary heap
-- ordered by (due, id), so the earliest is heap[1] and ties fire in the order they were made.
-- The script holds only the handle, an empty table; recs maps it to its record.
local heap, n = {}, 0
local recs = {}
local nextid = 0
local tclock = H.tclock  -- the timer clock, integer ns
local set_due = P.set_due
local timer_due, timer_add, timer_del, svc_count = H.timer_due, H.timer_add, H.timer_del, H.svc_count
local MAX_MS = 30 * 86400 * 1000
local shown = false      -- the due time the host was last told (false: none yet)

local function before(a, b) return a.due < b.due or (a.due == b.due and a.id < b.id) end

local function up(i)
  local r = heap[i]
  while i > 1 do
    local p = i // 2
    local q = heap[p]
    if not before(r, q) then break end
    heap[i] = q; q.pos = i
    i = p
  end
  heap[i] = r; r.pos = i
end

local function down(i)
  local r = heap[i]
  while true do
    local c = 2 * i
    if c > n then break end
    if c < n and before(heap[c + 1], heap[c]) then c = c + 1 end
    local q = heap[c]
    if not before(q, r) then break end
    heap[i] = q; q.pos = i
    i = c
  end
  heap[i] = r; r.pos = i
end

local function remove(r)
  local i, last = r.pos, heap[n]
  heap[n] = nil
  n = n - 1
  r.pos = false
  if i <= n then
    heap[i] = last; last.pos = i
    down(i); up(last.pos)
  end
end

-- Tells the host (and, offline, the batch loop) the earliest due time when it changed.
local function update()
  local due = n > 0 and heap[1].due or nil
  if due == shown then return end
  shown = due
  if capture then set_due(due) end
  timer_due(due)
end

local function cancel(h)
  local r = recs[h]
  if r == nil then return false end
  recs[h] = nil
  remove(r)
  timer_del()
  update()
  return true
end

local HANDLE = {
  __metatable = false,
  __name = 'timer',
  __index = { cancel = cancel },
  __tostring = function(h) return recs[h] and 'timer (active)' or 'timer (done)' end,
}

local function add(name, ms, fn, every)
  if type(ms) ~= 'number' or ms ~= ms or ms < 0 or ms > MAX_MS then
    error(format('timer.%s: ms must be a number in 0..%d, got %s', name, MAX_MS, tostring(ms)), 3)
  end
  if every and ms < 1 then error('timer.every: the period must be at least 1 ms', 3) end
  if type(fn) ~= 'function' then error(format('timer.%s: function expected, got %s', name, type(fn)), 3) end
  local ns = tointeger(floor(ms * 1000000))
  local h = setmetatable({}, HANDLE)
  local r = { due = tclock() + ns, id = nextid, period = every and ns or false, fn = fn, lag = 0, handle = h, pos = false }
  -- every allocation before the host counts the timer, so a memory fault cannot leak a count
  recs[h] = r
  heap[n + 1] = r
  if not timer_add() then
    recs[h] = nil
    heap[n + 1] = nil
    error(format('timer.%s: too many timers (the tenant may have %d at once)', name, H.timer_max()), 3)
  end
  nextid = nextid + 1
  n = n + 1
  up(n)
  update()
  return h
end

-- (not tail calls: the error levels above count these frames)
lib.timer = {
  after = function(ms, fn) local h = add('after', ms, fn, false) return h end,
  every = function(ms, fn) local h = add('every', ms, fn, true) return h end,
}

-- Fires the earliest timer if it is due at `now` (the host sets the clock to its due time
-- first, offline). It is rescheduled (periodic) or removed (one-shot) before fn runs, so a
-- callback that faults does not fire again at once. A periodic timer `catchup` periods behind
-- skips ahead to its first due time after now; the skipped firings are counted.
function P.timer_fire(now)
  local r = heap[1]
  if r == nil or r.due > now then return end
  local h = r.handle
  if r.period then
    local nd = r.due + r.period
    if nd <= now then
      r.lag = r.lag + 1
      if r.lag >= catchup then
        local k = (now - r.due) // r.period + 1
        if k > 1 then svc_count('timers_skipped', k - 1) end
        nd = r.due + k * r.period
        r.lag = 0
      end
    else
      r.lag = 0
    end
    r.due = nd
    down(1)
  else
    recs[h] = nil
    remove(r)
    timer_del()
  end
  update()
  r.fn(h)
end

-- The host's round of firings hit its bound: whatever is still due waits until just after now
-- (offline: until the capture's clock moves past now), so every round ends.
function P.timer_postpone(now)
  for i = 1, n do
    local r = heap[i]
    if r.due <= now then r.due = now + 1 end
  end
  for i = n // 2, 1, -1 do down(i) end
  update()
end

-- net ------------------------------------------------------------------------

local send = H.send

lib.net = {
  send = function(b)
    if type(b) == 'table' and rawgetmt(b) == PKT then
      local bytes = b[1]
      if bytes == nil then error('net.send: packet used after its call returned (send a pkt:copy())', 2) end
      b = sub(bytes, b[2] + 1, b[2] + b[3])
    elseif type(b) ~= 'string' then
      error(format('net.send: packet bytes (a string) or a packet object expected, got %s', type(b)), 2)
    end
    local r = send(b)
    if r == true or r == false then return r end
    error(r, 2)
  end,
}
