-- psd's own Lua layer outside psd: the packet object, the protocol objects, the libraries and
-- the sandbox (wasm/lua/*.lua, loaded unchanged, in the order wasm/vm.ts loads them), with the
-- host functions that wasm/vm.ts implements in JavaScript written here in Lua. A psd script then
-- runs unchanged, over psd's batch records (src/batch-format.ts), in any Lua 5.4: Debian's
-- native lua5.4 (bench/compare/native.lua) or wasmoon's high-level API (engines.ts).
--
-- What differs from psd, and nothing else:
--   * the host functions: a verdict is stored in a Lua table here, in an Int32Array by a
--     JavaScript function in psd; services (defer, timer, net), time, random, log and stats are
--     stubs (the comparison scripts use none of them); H.charge is a no-op;
--   * budgets: no memory accounting; a fuel hook only when asked for (opts.hook), re-armed per
--     packet as psd re-arms it, without psd's clock reads;
--   * a fault (a Lua error in the script) is recorded as -1 and the batch goes on at the next
--     packet, as psd does.
--
--   local setup = dofile('shim.lua')      -- or, with wasmoon, the global psd_setup
--   local run = setup(prelude, script_source, script_name, opts)
--     prelude: list of { name, source } (wasm/lua/*.lua); opts: { hook = instructions or nil }
--   run.batch(batch, n, V, k) runs the n records of a batch string; verdict codes go to
--     V[k+1 ...]; returns the new k
--   run.record(s) runs one record (a one-record batch) and returns its verdict code
local function setup(prelude, script_source, script_name, opts)
  opts = opts or {}
  -- everything the shim needs, taken before the sandbox empties the globals
  local load, pcall, error, setmetatable, type, tostring = load, pcall, error, setmetatable, type, tostring
  local sunpack, floor = string.unpack, math.floor
  local sethook = debug.sethook
  local clock = os and os.clock or function() return 0 end
  local random = math.random

  local V, k = nil, 0           -- verdict sink and the index of the last packet reported
  local period = opts.hook      -- instructions between two hook calls (psd: 10,000)
  local fuel_left, FUEL = 0, opts.fuel or 1000000

  local function hook()
    fuel_left = fuel_left - period
    if fuel_left <= 0 then error('psd: fuel budget exhausted', 0) end
  end
  local function arm()
    fuel_left = FUEL
    sethook(hook, '', period)
  end

  local H = {}
  local P = { lib = {} }
  if period then
    H.accept = function() k = k + 1; V[k] = 1; arm() end
    H.drop = function() k = k + 1; V[k] = 0; arm() end
    H.done = function(code) k = k + 1; V[k] = code; arm() end
  else
    H.accept = function() k = k + 1; V[k] = 1 end
    H.drop = function() k = k + 1; V[k] = 0 end
    H.done = function(code) k = k + 1; V[k] = code end
  end
  H.charge = function() end
  H.log = function() end
  H.stat = function() end
  H.now = function() return 0 end
  H.mono = function() return floor(clock() * 1e9) end
  H.random_u32 = function() return random(0, 0xffffffff) end
  H.random_bytes = function(n) local t = {} for i = 1, n do t[i] = string.char(random(0, 255)) end return table.concat(t) end
  H.ifname = function() return nil end
  H.defer_push = function() return true end
  H.timer_add = function() return true end
  H.timer_del = function() end
  H.timer_max = function() return 256 end
  H.timer_due = function() end
  H.tclock = function() return 0 end
  H.svc_count = function() end
  H.send = function() return false end
  -- anything else the prelude may want: present, and loud if it is ever called
  setmetatable(H, { __index = function(_, name)
    return function() error('bench/compare/shim.lua: host function H.' .. tostring(name) .. ' is not provided', 2) end
  end })

  for _, f in ipairs(prelude) do
    local chunk, err = load(f[2], '=psd/' .. f[1], 't')
    if not chunk then error('prelude ' .. f[1] .. ': ' .. err, 0) end
    chunk(P, H)
  end
  if P.services_init then P.services_init(true, 1000) end

  local chunk, err = load(script_source, '@' .. script_name, 't')
  if not chunk then error(err, 0) end
  chunk()
  P.bind('on_packet', false, script_name)
  P.call_global('on_start')

  local P_run = P.run

  local function record_pos(batch, i)
    local pos = 1
    for _ = 2, i do pos = pos + sunpack('<I4', batch, pos) end
    return pos
  end

  local run = {}
  function run.batch(batch, n, sink, base)
    V, k = sink, base
    local i, pos = 1, 1
    while true do
      if period then arm() end
      local ok = pcall(P_run, batch, n, pos, i)
      if period then sethook() end
      if ok then break end
      -- packet k - base + 1 of the batch faulted: record it, go on from the next one
      k = k + 1
      V[k] = -1
      i = k - base + 1
      if i > n then break end
      pos = record_pos(batch, i)
    end
    return k
  end

  local one = {}
  function run.record(rec)
    run.batch(rec, 1, one, 0)
    return one[1]
  end
  return run
end

psd_setup = setup
return setup
