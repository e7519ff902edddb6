-- The packet object (API.md section 3) and the batch loop that feeds packets to the script.
--
-- A packet is a small table whose array slots hold its state, so accessors stay cheap:
--   [1] bytes  the string the packet lives in (the whole batch until the first edit), nil once dead
--   [2] base   offset of the packet's byte 0 inside [1]
--   [3] len    bytes held
--   [4] edited true once the bytes were changed (then [1] is the packet alone and [2] is 0)
--   [5] layers decoded protocol objects of this packet (a table), or false
--   [6] hdr    1-based position of the record header in the batch string (false for copies)
--   [7] mark   the mark as set by the script, or false when unchanged
-- Every slot exists from the start (false, not nil), so writing one never reaches __newindex.
-- The record header is read from the batch being run (`batch` below): only a live packet reads
-- it, and a live packet is always of that batch. (One slot less per packet: every slot is 16
-- bytes more for the collector to go through, per packet.)
-- Everything a script can reach through these slots is its own packet data, so a script that
-- rawsets them only confuses itself.
local P, H = ...

local byte, sub, char, rep, format = string.byte, string.sub, string.char, string.rep, string.format
local sunpack, spack, sfind = string.unpack, string.pack, string.find
local mtype = math.type
local error, setmetatable, tostring, type, select, rawget = error, setmetatable, tostring, type, select, rawget

local HDR = 52          -- src/batch-format.ts
local batch             -- the batch string P.run is walking
local NONE = 0xffffffff
local HOOKS = { 'prerouting', 'input', 'forward', 'output', 'postrouting' }

local methods, getters, setters = {}, {}, {}
P.packet_methods, P.packet_getters, P.packet_setters = methods, getters, setters
P.layers = P.layers or {}   -- name -> function(pkt) returning the decoded layer or nil (protocols)
local layers = P.layers

local function dead()
  error('packet used after its call returned (pkt is valid during the call only)', 3)
end

local function bad_offset(name, off, size, len)
  if mtype(off) ~= 'integer' then
    error(format('pkt:%s: offset must be an integer, got %s', name, mtype(off) or type(off)), 3)
  end
  error(format('pkt:%s: offset %d + %d is outside the packet (len %d)', name, off, size, len), 3)
end

local function check_value(name, v, max)
  if mtype(v) ~= 'integer' or v < 0 or v > max then
    error(format('pkt:%s: value must be an integer in 0..%d, got %s', name, max, tostring(v)), 3)
  end
end

local PKT = {}
P.PKT = PKT
PKT.__metatable = false
PKT.__name = 'packet'

function PKT.__index(t, k)
  -- Protocol layers first: they are what scripts read on every packet (layer names never
  -- collide with methods or getters; proto.define refuses such names). The cache is presized
  -- for the usual layers, so filling it does not rehash (proto-ip.lua).
  local f = layers[k]
  if f ~= nil then
    local c = t[5]
    if c then
      local v = c[k]
      if v ~= nil then
        if t[1] == nil then dead() end
        return v or nil
      end
    else
      c = { ip = nil, tcp = nil, udp = nil, payload = nil }
      t[5] = c
    end
    if t[1] == nil then dead() end
    local v = f(t) or false
    c[k] = v
    return v or nil
  end
  local m = methods[k]
  if m ~= nil then return m end
  local g = getters[k]
  if g ~= nil then
    if t[1] == nil then dead() end
    return g(t)
  end
  return nil
end

function PKT.__newindex(t, k, v)
  local s = setters[k]
  if s == nil then error(format("pkt.%s cannot be set", tostring(k)), 2) end
  if t[1] == nil then dead() end
  s(t, v)
end

function PKT.__tostring(t)
  if t[1] == nil then return 'packet (dead)' end
  return format('packet (%d bytes)', t[3])
end

PKT.__len = function(t) return t[3] end

-- raw reads -----------------------------------------------------------------

function methods.u8(t, off)
  local b = t[1]
  if b == nil then dead() end
  if mtype(off) ~= 'integer' or off < 0 or off >= t[3] then bad_offset('u8', off, 1, t[3]) end
  return byte(b, t[2] + off + 1)
end

function methods.u16(t, off)
  local b = t[1]
  if b == nil then dead() end
  if mtype(off) ~= 'integer' or off < 0 or off + 2 > t[3] then bad_offset('u16', off, 2, t[3]) end
  local p = t[2] + off + 1
  local x, y = byte(b, p, p + 1)
  return x << 8 | y
end

function methods.u32(t, off)
  local b = t[1]
  if b == nil then dead() end
  if mtype(off) ~= 'integer' or off < 0 or off + 4 > t[3] then bad_offset('u32', off, 4, t[3]) end
  return (sunpack('>I4', b, t[2] + off + 1))
end

function methods.u16le(t, off)
  local b = t[1]
  if b == nil then dead() end
  if mtype(off) ~= 'integer' or off < 0 or off + 2 > t[3] then bad_offset('u16le', off, 2, t[3]) end
  local p = t[2] + off + 1
  local x, y = byte(b, p, p + 1)
  return y << 8 | x
end

function methods.u32le(t, off)
  local b = t[1]
  if b == nil then dead() end
  if mtype(off) ~= 'integer' or off < 0 or off + 4 > t[3] then bad_offset('u32le', off, 4, t[3]) end
  return (sunpack('<I4', b, t[2] + off + 1))
end

function methods.bytes(t, off, n)
  local b = t[1]
  if b == nil then dead() end
  local len = t[3]
  off = off or 0
  if n == nil then
    if mtype(off) ~= 'integer' or off < 0 or off > len then bad_offset('bytes', off, 0, len) end
    n = len - off
  elseif mtype(n) ~= 'integer' or n < 0 then
    error('pkt:bytes: length must be a non-negative integer', 2)
  end
  if mtype(off) ~= 'integer' or off < 0 or off + n > len then bad_offset('bytes', off, n, len) end
  local base = t[2]
  return sub(b, base + off + 1, base + off + n)
end

function methods.find(t, s, off)
  local b = t[1]
  if b == nil then dead() end
  if type(s) ~= 'string' then error('pkt:find: pattern must be a string', 2) end
  local len = t[3]
  off = off or 0
  if mtype(off) ~= 'integer' or off < 0 or off > len then bad_offset('find', off, 0, len) end
  local base = t[2]
  -- Plain search bounded to this packet: search the slice, never the rest of the batch.
  local slice = (base == 0 and #b == len) and b or sub(b, base + 1, base + len)
  local i = sfind(slice, s, off + 1, true)
  if i == nil then return nil end
  return i - 1
end

-- edits ---------------------------------------------------------------------

-- Replaces n bytes at off with s. Layers decoded before the edit are dropped so the next
-- access decodes the new bytes.
local function splice(t, off, n, s)
  local b, base, len = t[1], t[2], t[3]
  if not t[4] then
    b = sub(b, base + 1, base + len)
    t[2] = 0
    t[4] = true
  end
  b = sub(b, 1, off) .. s .. sub(b, off + n + 1)
  t[1] = b
  t[3] = #b
  t[5] = false
end
P.splice = splice

function methods.set_u8(t, off, v)
  if t[1] == nil then dead() end
  if mtype(off) ~= 'integer' or off < 0 or off >= t[3] then bad_offset('set_u8', off, 1, t[3]) end
  check_value('set_u8', v, 0xff)
  splice(t, off, 1, char(v))
end

function methods.set_u16(t, off, v)
  if t[1] == nil then dead() end
  if mtype(off) ~= 'integer' or off < 0 or off + 2 > t[3] then bad_offset('set_u16', off, 2, t[3]) end
  check_value('set_u16', v, 0xffff)
  splice(t, off, 2, char(v >> 8, v & 0xff))
end

function methods.set_u32(t, off, v)
  if t[1] == nil then dead() end
  if mtype(off) ~= 'integer' or off < 0 or off + 4 > t[3] then bad_offset('set_u32', off, 4, t[3]) end
  check_value('set_u32', v, 0xffffffff)
  splice(t, off, 4, spack('>I4', v))
end

function methods.write(t, off, s)
  if t[1] == nil then dead() end
  if type(s) ~= 'string' then error('pkt:write: data must be a string', 2) end
  if mtype(off) ~= 'integer' or off < 0 or off + #s > t[3] then bad_offset('write', off, #s, t[3]) end
  if #s > 0 then splice(t, off, #s, s) end
end

local MAX_PACKET = 65535
function methods.insert(t, off, s)
  if t[1] == nil then dead() end
  if type(s) ~= 'string' then error('pkt:insert: data must be a string', 2) end
  if mtype(off) ~= 'integer' or off < 0 or off > t[3] then bad_offset('insert', off, 0, t[3]) end
  if t[3] + #s > MAX_PACKET then error('pkt:insert: packet would exceed 65535 bytes', 2) end
  if #s > 0 then splice(t, off, 0, s) end
end

function methods.remove(t, off, n)
  if t[1] == nil then dead() end
  if mtype(n) ~= 'integer' or n < 0 then error('pkt:remove: length must be a non-negative integer', 2) end
  if mtype(off) ~= 'integer' or off < 0 or off + n > t[3] then bad_offset('remove', off, n, t[3]) end
  if n > 0 then splice(t, off, n, '') end
end

function methods.copy(t)
  local b = t[1]
  if b == nil then dead() end
  local base, len = t[2], t[3]
  return setmetatable({ sub(b, base + 1, base + len), 0, len, true, false, false, false }, PKT)
end

-- Makes lengths and checksums right now, the way psd does on accept (P.fixup is set by the
-- checksum module).
function methods.checksum(t)
  local b = t[1]
  if b == nil then dead() end
  local base, len = t[2], t[3]
  local cur = sub(b, base + 1, base + len)
  local fixed = P.fixup(cur)
  if fixed ~= cur then
    t[1], t[2], t[3], t[4], t[5] = fixed, 0, #fixed, true, false
  end
end

-- metadata ------------------------------------------------------------------

local function hdr_u32(t, off)
  local h = t[6]
  if not h then return nil end
  return (sunpack('<I4', batch, h + off))
end

getters.len = function(t) return t[3] end
getters.origlen = function(t) return hdr_u32(t, 8) or t[3] end
getters.id = function(t) return hdr_u32(t, 12) end
getters.mark = function(t)
  local m = t[7]
  if m then return m end
  return hdr_u32(t, 16) or 0
end
getters.time = function(t)
  local h = t[6]
  if not h then return nil end
  local sec, nsec = sunpack('<I4I4', batch, h + 20)
  return sec * 1000000000 + nsec
end
getters.family = function(t)
  local h = t[6]
  if h then return byte(batch, h + 28) end
  local v = byte(t[1], t[2] + 1)
  return v and (v >> 4)
end
getters.hook = function(t)
  local h = t[6]
  return h and HOOKS[byte(batch, h + 29)]
end
local function hdr_opt(off)
  return function(t)
    local v = hdr_u32(t, off)
    if v == nil or v == NONE then return nil end
    return v
  end
end
getters.queue = hdr_opt(32)
getters.uid = hdr_opt(36)
getters.gid = hdr_opt(40)
local function dev(off)
  return function(t)
    local v = hdr_u32(t, off)
    if v == nil or v == 0 then return nil end
    return P.ifname(v)
  end
end
getters.indev = dev(44)
getters.outdev = dev(48)
P.ifname = function(i) return H.ifname(i) end

setters.mark = function(t, v)
  if mtype(v) ~= 'integer' or v < 0 or v > 0xffffffff then
    error(format('pkt.mark must be an integer in 0..4294967295, got %s', tostring(v)), 3)
  end
  t[7] = v
end

-- the batch loop --------------------------------------------------------------

-- Verdict codes sent to the host: the kernel's NF_* values (queue(n) is NF_QUEUE | n << 16),
-- or -1 for a return value that is no verdict.
local ACCEPT, DROP, REPEAT = 1, 0, 4
local by_value = { [true] = ACCEPT, [false] = DROP, accept = ACCEPT, drop = DROP, ['repeat'] = REPEAT,
                   [1] = ACCEPT, [0] = DROP, [4] = REPEAT }

local function verdict_code(v)
  if v == nil then return ACCEPT end
  local c = by_value[v]
  if c ~= nil then return c end
  -- (a float key with an integer value finds the integer entry above: 1.0 is ACCEPT)
  if mtype(v) == 'integer' and v & 0xffff == 3 and v >= 0 and v <= 0xffffffff then return v end
  return -1
end
P.verdict_code = verdict_code

local entry                 -- the script's entry function
local live                  -- the packet of the call in progress, killed if the call faulted
local done, accept, drop = H.done, H.accept, H.drop

function P.set_entry(fn) entry = fn end

-- Offline only (services.lua sets it): the earliest timer due time, in capture ns. The loop
-- stops before the first packet at or after it, so the host can fire the timer between the
-- right two packets and call P.run again from that packet.
local due = nil
function P.set_due(ns) due = ns end

-- The general case: any verdict value, a mark, edits.
local function finish(pkt, v, m)
  local code = verdict_code(v)
  local mark = pkt[7] or nil
  local why
  if code < 0 then
    why = format('bad verdict %s (%s)', tostring(v), type(v))
  elseif m ~= nil then
    if mtype(m) == 'integer' and m >= 0 and m <= 0xffffffff then mark = m
    else code = -1; why = format('bad mark %s returned with the verdict', tostring(m)) end
  end
  local out = pkt[4] and pkt[1] or nil
  pkt[1] = nil
  live = nil
  return done(code, mark, out, why)
end

-- Runs packets i..n of a batch string whose record i starts at pos and holds len bytes. The
-- host calls it again from the packet after a fault (a fault unwinds this loop; the host knows
-- where it stopped because every finished packet reported through accept/drop/done, which also
-- re-arm the fuel for the next packet). Each report returns the next packet, made by the host
-- the way the constructor below makes it (wasm/vm.ts makePacket: a table, its metatable set
-- with the C API, which spares a call of setmetatable per packet here), or nothing after the
-- last one. A host that cannot make packets returns where the next record starts and its
-- length instead (nil, pos, len), and the packet is made here. A host that gives no len and
-- returns nothing from its reports (bench/compare/shim.lua) has the records read here. Offline
-- it also returns early, before a packet that a timer is due ahead of (P.set_due); the host
-- fires the timer and calls it again from that packet.
function P.run(b, n, pos, i, len)
  if live ~= nil then live[1] = nil; live = nil end
  batch = b
  local pkt, reclen, v, m, nxt
  while i <= n do
    if pkt == nil then -- the first packet of a run, or from a host that makes none
      if len == nil then reclen, len = sunpack('<I4I4', b, pos) end
      pos = pos | 0 -- (the host gives floats; slots 2, 3 and 6 are integers, as makePacket writes them)
      pkt = setmetatable({ b, pos + HDR - 1, len | 0, false, false, pos, false }, PKT)
    end
    if live == nil then -- (not when the fast loop below stopped after the call)
      if due ~= nil then
        local sec, nsec = sunpack('<I4I4', b, pkt[6] + 20)
        if sec * 1000000000 + nsec >= due then return end
      end
      live = pkt
      v, m = entry(pkt)
    end
    if m == nil and not pkt[4] and not pkt[7] and (v == nil or v == 1 or v == 0) then
      pkt[1] = nil
      live = nil
      if v == 0 then pkt, nxt, len = drop() else pkt, nxt, len = accept() end
      i = i + 1
      -- The fast loop: the packets that follow with the same plain verdict (ACCEPT, DROP or
      -- none; no mark, no edit) run straight through it with no jump taken but the one back to
      -- its start, as the fuel count's hook looks in at every jump taken (count-hook-patch.ts).
      -- Anything else leaves it for the loop above: before the call when a timer may be due
      -- (live is nil then), after it otherwise. (v ~= want compares a verdict with a number
      -- or nil: never a metamethod.)
      local want, report = v, v == 0 and drop or accept
      while pkt ~= nil and i <= n do
        if due ~= nil then break end
        live = pkt
        v, m = entry(pkt)
        if v ~= want then break end
        if m ~= nil then break end
        if pkt[4] then break end
        if pkt[7] then break end
        pkt[1] = nil
        live = nil
        pkt, nxt, len = report()
        i = i + 1
      end
    else
      pkt, nxt, len = finish(pkt, v, m)
      i = i + 1
    end
    if pkt == nil then pos = nxt or reclen and pos + reclen end
  end
end
