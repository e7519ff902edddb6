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

-- The string metatable's __index becomes the sandbox's string table.
getmetatable('').__index = env.string

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
