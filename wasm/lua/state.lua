-- The state handoff of a reload (API.md section 8): what the old script's on_stop() returns is
-- written out here, inside the old VM and under its budgets, as a byte string; the host carries
-- the string to the new VM, where it is read back, again under the budgets, and given to
-- on_reload(old_state). No Lua value ever crosses from one VM to the other.
--
-- Only plain data is handed over: nil, booleans, numbers (integers stay integers, floats keep
-- every bit), strings (any bytes) and tables of these, with string, number or boolean keys.
-- Functions, coroutines and userdata are refused, as are cycles, more than MAX_DEPTH nested
-- tables and more than MAX_BYTES of output, each with an error that says where in the value.
-- Metatables are not looked at and not kept (next/rawget only: no script code runs here). A
-- table reached twice is written twice (the byte bound keeps that finite).
--
-- Format: n | t | f | i<integer>; | d<%a float>; | I | J | N (inf, -inf, nan)
--         | s<length>:<bytes> | { key value ... }
local P, H = ...

local MAX_DEPTH = 32
local MAX_BYTES = 1 << 20

local type, next, error, tostring, tonumber = type, next, error, tostring, tonumber
local format, byte, sub, find = string.format, string.byte, string.sub, string.find
local concat = table.concat
local mtype, tointeger, huge = math.type, math.tointeger, math.huge
local charge = H.charge or function() end  -- fuel for work done in C (where the host has it)

local function where(path, n)
  local parts = { 'state' }
  for i = 1, n do
    local k = path[i]
    if type(k) == 'string' and find(k, '^[%a_][%w_]*$') then parts[#parts + 1] = '.' .. k
    elseif type(k) == 'string' then parts[#parts + 1] = format('[%q]', k)
    else parts[#parts + 1] = '[' .. tostring(k) .. ']' end
  end
  return concat(parts)
end

-- Returns the bytes of v, or raises an error (level 0: the host names the script).
local function dump(v)
  local out, n, size = {}, 0, 0
  local onpath, path = {}, {}

  local function put(s)
    n = n + 1
    out[n] = s
    size = size + #s
    if size > MAX_BYTES then
      error(format('the state returned by on_stop is larger than %d bytes', MAX_BYTES), 0)
    end
  end

  local function value(x, depth, iskey)
    local t = type(x)
    if t == 'string' then
      put('s' .. #x .. ':')
      put(x)
    elseif t == 'number' then
      if mtype(x) == 'integer' then put('i' .. format('%d', x) .. ';')
      elseif x ~= x then put('N')
      elseif x == huge then put('I')
      elseif x == -huge then put('J')
      else put('d' .. format('%a', x) .. ';') end
    elseif t == 'boolean' then
      put(x and 't' or 'f')
    elseif t == 'table' and not iskey then
      if onpath[x] then error(format('on_stop returned a table that contains itself (at %s)', where(path, depth)), 0) end
      if depth >= MAX_DEPTH then error(format('on_stop returned tables nested deeper than %d (at %s)', MAX_DEPTH, where(path, depth)), 0) end
      onpath[x] = true
      put('{')
      local k, val = next(x)
      while k ~= nil do
        path[depth + 1] = k
        value(k, depth + 1, true)
        value(val, depth + 1, false)
        k, val = next(x, k)
      end
      path[depth + 1] = nil
      put('}')
      onpath[x] = nil
    elseif iskey then
      error(format('on_stop returned a table with a %s as a key (in %s); keys must be strings, numbers or booleans', t, where(path, depth - 1)), 0)
    else
      error(format('on_stop returned a %s (at %s); only nil, booleans, numbers, strings and tables can be handed to on_reload', t, where(path, depth)), 0)
    end
  end

  if v == nil then return nil end
  value(v, 0, false)
  charge(size // 16)   -- the concatenation below copies every byte once
  return concat(out, '', 1, n)
end

-- Reads the bytes written by dump back into a value.
local function load_state(s)
  local pos, len = 1, #s
  local function bad(what) error(format('state handoff: damaged state near byte %d (%s)', pos, what), 0) end

  local function value(depth)
    local c = byte(s, pos)
    if c == nil then bad('unexpected end') end
    pos = pos + 1
    if c == 0x73 then -- s<len>:<bytes>
      local colon = find(s, ':', pos, true)
      if not colon then bad('string length') end
      local n = tointeger(tonumber(sub(s, pos, colon - 1)))
      if not n or n < 0 or colon + n > len then bad('string length') end
      local str = sub(s, colon + 1, colon + n)
      pos = colon + n + 1
      return str
    elseif c == 0x69 or c == 0x64 then -- i<int>; d<float>;
      local semi = find(s, ';', pos, true)
      if not semi then bad('number') end
      local text = sub(s, pos, semi - 1)
      pos = semi + 1
      local x = tonumber(text)
      if x == nil then bad('number') end
      if c == 0x69 then
        x = tointeger(x)
        if x == nil then bad('integer') end
      elseif mtype(x) ~= 'float' then
        bad('float')
      end
      return x
    elseif c == 0x74 then return true
    elseif c == 0x66 then return false
    elseif c == 0x49 then return huge
    elseif c == 0x4a then return -huge
    elseif c == 0x4e then return 0.0 / 0.0
    elseif c == 0x7b then -- {
      if depth >= MAX_DEPTH then bad('too deep') end
      local t = {}
      while true do
        if byte(s, pos) == 0x7d then pos = pos + 1; return t end
        local k = value(depth + 1)
        if k == nil or k ~= k then bad('key') end
        t[k] = value(depth + 1)
      end
    elseif c == 0x6e then return nil
    end
    bad('unknown tag')
  end

  local v = value(0)
  if pos ~= len + 1 then bad('trailing bytes') end
  return v
end

-- The old VM: on_stop(), its result written out. Returns the bytes, or nil when on_stop is
-- absent or returned nothing.
function P.state_stop()
  local v = P.call_global('on_stop')
  return dump(v)
end

-- The new VM: the old state read back (H.state_in gives the bytes, or nil), then on_reload.
function P.state_reload()
  local s = H.state_in()
  local v = nil
  if s ~= nil then v = load_state(s) end
  P.call_global('on_reload', v)
end

-- For tests of the format alone (the host never calls these with script data other than above).
P.state_dump, P.state_load = dump, load_state
P.STATE_MAX_BYTES, P.STATE_MAX_DEPTH = MAX_BYTES, MAX_DEPTH
