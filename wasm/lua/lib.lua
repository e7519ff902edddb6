-- The small libraries of API.md section 6 that need no packet: bit, bytes, time, random,
-- log (and print), stats. Host functions (H.*) are JavaScript; they only ever receive and
-- return strings and numbers.
local P, H = ...
local lib = P.lib

local byte, char, format, sub, rep, sfind = string.byte, string.char, string.format, string.sub, string.rep, string.find
local concat, tostring, tonumber, select, type, error, pcall = table.concat, tostring, tonumber, select, type, error, pcall
local mtype, tointeger, ult = math.type, math.tointeger, math.ult
local getinfo = debug.getinfo   -- kept private to the prelude: only for script:line in logs

-- bit: PacketScript-era helpers over 32-bit values (Lua 5.4 operators work too).
local M32 = 0xffffffff
local function int(x, name)
  if mtype(x) ~= 'integer' then
    if mtype(x) == 'float' and x == x // 1 then return tointeger(x) end
    error(format('bit.%s: integer expected, got %s', name, type(x)), 3)
  end
  return x
end
lib.bit = {
  band = function(a, b, ...) local r = int(a, 'band') & int(b, 'band') for i = 1, select('#', ...) do r = r & int((select(i, ...)), 'band') end return r end,
  bor = function(a, b, ...) local r = int(a, 'bor') | int(b, 'bor') for i = 1, select('#', ...) do r = r | int((select(i, ...)), 'bor') end return r end,
  bxor = function(a, b, ...) local r = int(a, 'bxor') ~ int(b, 'bxor') for i = 1, select('#', ...) do r = r ~ int((select(i, ...)), 'bxor') end return r end,
  bnot = function(a) return ~int(a, 'bnot') & M32 end,
  lshift = function(a, n) return (int(a, 'lshift') << int(n, 'lshift')) & M32 end,
  rshift = function(a, n) return (int(a, 'rshift') & M32) >> int(n, 'rshift') end,
  arshift = function(a, n)
    a = int(a, 'arshift') & M32; n = int(n, 'arshift')
    if a & 0x80000000 ~= 0 then a = a - 0x100000000 end
    return (a >> n | (a < 0 and ~(M32 >> n) or 0)) & M32
  end,
}

-- bytes: hex and checksum helpers.
local hexd = {}
for i = 0, 255 do hexd[i] = format('%02x', i) end
local function hex(s)
  if type(s) ~= 'string' then error('bytes.hex: string expected', 2) end
  local out = {}
  for i = 1, #s do out[i] = hexd[byte(s, i)] end
  return concat(out)
end
local function fromhex(h)
  if type(h) ~= 'string' or #h % 2 ~= 0 then error('bytes.fromhex: even-length hex string expected', 2) end
  local out = {}
  for i = 1, #h, 2 do
    local v = tonumber(sub(h, i, i + 1), 16)
    if v == nil then error(format('bytes.fromhex: bad hex digit near position %d', i), 2) end
    out[#out + 1] = char(v)
  end
  return concat(out)
end
local function checksum(s)
  if type(s) ~= 'string' then error('bytes.checksum: string expected', 2) end
  return H.checksum(s)
end
lib.bytes = { hex = hex, fromhex = fromhex, checksum = checksum }

-- time: offline it is the capture's clock (the host knows the packet being run).
lib.time = { now = function() return H.now() end, mono = function() return H.mono() end }

-- random: from the host's cryptographic source.
lib.random = {
  u32 = function() return H.random_u32() end,
  int = function(lo, hi)
    if mtype(lo) ~= 'integer' or mtype(hi) ~= 'integer' or lo > hi then
      error('random.int: integers lo <= hi expected', 2)
    end
    local range = hi - lo   -- read as unsigned: 0 .. 2^64-1 (wraps for very wide ranges)
    local u32 = H.random_u32
    if not ult(0xffffffff, range) then
      -- rejection sampling keeps the draw uniform
      local span = range + 1
      local limit = 0x100000000 - (0x100000000 % span)
      local x = u32()
      while x >= limit do x = u32() end
      return lo + x % span
    end
    -- wider than 32 bits: draw 64-bit values under the smallest all-ones mask >= range
    local mask = range
    mask = mask | mask >> 1; mask = mask | mask >> 2; mask = mask | mask >> 4
    mask = mask | mask >> 8; mask = mask | mask >> 16; mask = mask | mask >> 32
    local x
    repeat x = (u32() << 32 | u32()) & mask until not ult(range, x)
    return lo + x
  end,
  bytes = function(n)
    if mtype(n) ~= 'integer' or n < 0 or n > 65536 then error('random.bytes: n must be an integer in 0..65536', 2) end
    return H.random_bytes(n)
  end,
}

-- log and print: structured lines on the host, tagged with the script's file:line.
local function where()
  for level = 3, 12 do
    local info = getinfo(level, 'Sl')
    if info == nil then break end
    if sub(info.source, 1, 1) == '@' then return info.short_src .. ':' .. info.currentline end
  end
  return ''
end
local LEVELS = { debug = 0, info = 1, warn = 2, error = 3 }
local function logger(level)
  local code = LEVELS[level]
  local name = 'log.' .. level
  return function(fmt, ...)
    local msg
    if select('#', ...) > 0 then
      local ok, m = pcall(format, fmt, ...)
      if not ok then error(name .. ': ' .. tostring(m), 2) end
      msg = m
    else
      msg = tostring(fmt)
    end
    H.log(code, msg, where())
  end
end
lib.log = { debug = logger('debug'), info = logger('info'), warn = logger('warn'), error = logger('error') }
lib.print = function(...)
  local n = select('#', ...)
  local parts = {}
  for i = 1, n do parts[i] = tostring((select(i, ...))) end
  H.log(1, concat(parts, '\t'), where())
end

-- stats: tenant metrics.
local function stat_name(name)
  if type(name) ~= 'string' or #name == 0 or #name > 64 or sfind(name, '[^%w_]') then
    error('stats: name must be 1-64 letters, digits or _', 3)
  end
end
lib.stats = {
  inc = function(name, n)
    stat_name(name)
    if n == nil then n = 1 elseif type(n) ~= 'number' then error('stats.inc: number expected', 2) end
    H.stat(0, name, n)
  end,
  set = function(name, v)
    stat_name(name)
    if type(v) ~= 'number' then error('stats.set: number expected', 2) end
    H.stat(1, name, v)
  end,
}

P.fixup = function(s) return H.fixup(s) end
