-- The native side of the comparison: Debian's lua5.4 running psd's Lua layer (shim.lua) and a
-- psd script, unchanged, over the same batch records psd runs. It times itself with os.clock
-- (this process's CPU time) and answers the driver (engines.ts) one line per command:
--
--   lua5.4 native.lua ROOT SCRIPT PACKETS VARIANT PRELUDE_FILES...
--     ROOT: the repository (wasm/lua/ and bench/compare/shim.lua are read from it)
--     PACKETS: 'PSDB', u32 batches, then per batch u32 count, u32 bytes, the batch (little-endian)
--     VARIANT: plain (no hook) or hook (a count hook every 10,000 instructions, re-armed per
--       packet, as psd meters fuel). One variant per process: the sandbox empties the globals,
--       so a Lua state holds one set-up of the prelude.
--   stdin:  pass | verdicts | quit
--   stdout: ok cpu=SECONDS packets=N accepted=N dropped=N faults=N | ok V1,V2,... | error MESSAGE
local root, script, packets, variant = arg[1], arg[2], arg[3], arg[4]
local clock, read, write, flush = os.clock, io.read, io.write, io.flush
local sunpack, concat = string.unpack, table.concat

local function slurp(path)
  local f = assert(io.open(path, 'rb'))
  local s = f:read('a')
  f:close()
  return s
end

local prelude = {}
for i = 5, #arg do prelude[#prelude + 1] = { arg[i], slurp(root .. '/wasm/lua/' .. arg[i]) } end
local setup = dofile(root .. '/bench/compare/shim.lua')

-- The batches stay in the file (the page cache) and are read one at a time during a pass, so
-- that, as in psd, the Lua heap holds the prelude, the script and the batch being run, and each
-- batch becomes garbage after its run. (Holding the whole capture in the Lua heap instead made
-- every pass after the first 1.5-2.5x slower: the collector's pause is relative to the live
-- heap, so megabytes of resident packets let megabytes of garbage pile up between cycles, and
-- the allocations walk far outside the caches. psd's heap stays small.)
local f = assert(io.open(packets, 'rb'))
assert(f:read(4) == 'PSDB', 'packets file: bad magic')
local nb = sunpack('<I4', f:read(4))
local start = f:seek()
local total = 0
for _ = 1, nb do
  local count, bytes = sunpack('<I4I4', f:read(8))
  total = total + count
  f:seek('cur', bytes)
end

assert(variant == 'plain' or variant == 'hook', 'variant: plain or hook')
local run = setup(prelude, slurp(script), script, { hook = variant == 'hook' and 10000 or nil })
local V = {}
for i = 1, 128 do V[i] = 0 end

-- One pass: every batch read, run, and its verdicts read back (as psd's loop reads them from
-- its BatchOutput). `all`, when given, collects every verdict.
local function pass(all)
  f:seek('set', start)
  local a, d, x, n = 0, 0, 0, 0
  local t0 = clock()
  for _ = 1, nb do
    local count, bytes = sunpack('<I4I4', f:read(8))
    run.batch(f:read(bytes), count, V, 0)
    for i = 1, count do
      local v = V[i]
      if v == 0 then d = d + 1 elseif v < 0 then x = x + 1 else a = a + 1 end
      if all then n = n + 1; all[n] = v end
    end
  end
  return clock() - t0, a, d, x
end

write('ready packets=', total, '\n')
flush()
while true do
  local line = read('l')
  if line == nil or line == 'quit' then break end
  local ok, err = pcall(function()
    if line == 'pass' then
      local t, a, d, f = pass()
      write(('ok cpu=%.9f packets=%d accepted=%d dropped=%d faults=%d\n'):format(t, total, a, d, f))
    elseif line == 'verdicts' then
      local all = {}
      pass(all)
      write('ok ', concat(all, ','), '\n')
    else
      error('unknown command ' .. line)
    end
  end)
  if not ok then write('error ', tostring(err):gsub('\n', ' '), '\n') end
  flush()
end
