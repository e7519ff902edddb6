-- Builds the script's global environment from nothing (API.md section 6) and makes it the
-- only globals table. Runs last in the prelude: everything the other prelude files need is
-- already captured in their locals. After this file, nothing dangerous is reachable: io, os,
-- debug, package, load*, require, coroutine, collectgarbage and string.dump are gone, and
-- no JavaScript object exists in the VM at all.
local P, H = ...
local lib = P.lib
local G = _G
local pairs, next, type, error, rawget, rawset, pcall, select, setmetatable =
      pairs, next, type, error, rawget, rawset, pcall, select, setmetatable
local tpack, tunpack = table.pack, table.unpack
local full_gc = collectgarbage

-- For the host, after a memory fault: garbage the failed call left must not fail the next one
-- (Lua runs no emergency collection while it grows a stack).
function P.collect() full_gc('collect') end

local function copy(t, except)
  local c = {}
  for k, v in pairs(t) do if not (except and except[k]) then c[k] = v end end
  return c
end

local env = {}
for _, name in ipairs { 'assert', 'error', 'ipairs', 'next', 'pairs', 'pcall', 'select', 'tonumber',
  'tostring', 'type', 'rawequal', 'rawget', 'rawlen', 'rawset', 'getmetatable' } do
  env[name] = G[name]
end

-- Lua 5.4 runs __gc finalizers with hooks off, so a looping finalizer could never be stopped:
-- metatables with __gc are refused.
env.setmetatable = function(t, mt)
  if type(mt) == 'table' and rawget(mt, '__gc') ~= nil then
    error('setmetatable: __gc is not allowed in psd scripts', 2)
  end
  return setmetatable(t, mt)
end

-- Lua runs an xpcall message handler for an error raised by a hook with hooks off; here the
-- handler runs after the unwind, as ordinary code under the budget.
env.xpcall = function(f, handler, ...)
  local r = tpack(pcall(f, ...))
  if r[1] then return tunpack(r, 1, r.n) end
  return false, handler(r[2])
end

env.string = copy(string, { dump = true })
env.table = copy(table)
env.math = copy(math)
env.utf8 = copy(utf8)
env.unpack = tunpack

-- Work a library function does in C is invisible to the instruction count. Most of it is
-- bounded by the memory budget (a copy or a concatenation cannot outgrow it) and followed by a
-- look at the clock (ALLOC_CHECK_BYTES in wasm/vm.ts); these three are not:
--   string.rep('', 2^62) loops in C doing nothing, 2^62 times: answered here ('');
--   table.move(t, 1, 2^50, 2) moves nils without allocating: pays fuel per element first;
--   table.sort over a big table compares n log n times: pays fuel for that first.
-- (About one unit of fuel for what a VM instruction costs.) What still runs away inside C,
-- a pattern that backtracks without end, is stopped by the time budget's watchdog.
-- The wrappers are compiled without line information, so an error the library function raises
-- ("bad argument #2 to 'rep'") points at no line inside psd (the fault log adds the script's).
local WRAPPERS = [==[
local H, S, T = ...
local charge, tointeger, tonumber, mtype, type = H.charge, math.tointeger, tonumber, math.type, type
-- library functions are called as fields of upvalue tables: Lua then names them in its messages
-- ("bad argument #1 to 'sort'") although this chunk has no debug information
local str, tab = string, table
local function int(x) local n = x ~= nil and tonumber(x); return n and tointeger(n) end

S.rep = function(s, n, sep)
  if s == '' and (sep == nil or sep == '') then
    local k = n ~= nil and tonumber(n)
    if k and k > 1 and k < 2^63 then n = 1 end -- the same '' for any count, without the loop
  end
  return str.rep(s, n, sep)
end
T.sort = function(t, comp)
  if type(t) == 'table' then
    local n = #t
    if mtype(n) == 'integer' and n > 256 then
      local lg, m = 0, n
      while m > 1 do m = m >> 1; lg = lg + 1 end
      charge(n * lg)
    end
  end
  return tab.sort(t, comp)
end
T.move = function(a1, f, e, t, a2)
  local fi, ei = int(f), int(e)
  if fi ~= nil and ei ~= nil and ei - fi >= 1024 then charge((ei - fi) * 2) end
  return tab.move(a1, f, e, t, a2)
end
]==]
do
  local chunk = assert(load(WRAPPERS, '=psd/wrappers'))
  assert(load(string.dump(chunk, true), '=?', 'b'))(H, env.string, env.table)
end
env.print = lib.print
for name, v in pairs(lib) do if name ~= 'print' then env[name] = v end end

env.ACCEPT, env.DROP, env.REPEAT = 1, 0, 4
env.NF_ACCEPT, env.NF_DROP, env.NF_REPEAT = 1, 0, 4
env.queue = function(n)
  if math.type(n) ~= 'integer' or n < 0 or n > 65535 then
    error('queue(n): n must be an integer queue number in 0..65535', 2)
  end
  return 3 | n << 16
end

env._VERSION = _VERSION
env._G = env

-- The string metatable's __index becomes the sandbox's string table. The metatable itself is
-- shared by every string, the prelude's too, so scripts get a read-only stand-in for it from
-- getmetatable(''): it shows the same __index, and writing to it is an error.
do
  local smt = getmetatable('')
  smt.__index = env.string
  smt.__metatable = setmetatable({}, {
    __index = { __index = env.string },
    __newindex = function() error('the string metatable is read-only', 2) end,
    __metatable = false,
  })
end

-- Replace the globals table's contents with the sandbox (the registry keeps the same table,
-- so chunks loaded later by the host see exactly this environment).
local old = {}
for k in pairs(G) do old[#old + 1] = k end
for _, k in ipairs(old) do G[k] = nil end
for k, v in pairs(env) do G[k] = v end
G._G = G

-- Called by the host after the script's top level ran: pins the entry function.
local raw_type = type
function P.bind(name, explicit, path)
  local f = rawget(G, name)
  if f == nil and not explicit then
    f = rawget(G, 'process_packet')
  end
  if raw_type(f) ~= 'function' then
    if explicit then error(path .. ': no global function ' .. name .. ' (given by --function)', 0) end
    error(path .. ': no global function on_packet (or process_packet) defined', 0)
  end
  P.set_entry(f)
end

-- Calls a lifecycle global (on_start, on_stop, on_reload) if the script defines one.
function P.call_global(name, ...)
  local f = rawget(G, name)
  if raw_type(f) == 'function' then return f(...) end
end
