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

-- the batches
local data = slurp(packets)
assert(data:sub(1, 4) == 'PSDB', 'packets file: bad magic')
local nb, pos = sunpack('<I4', data, 5)
local B, C, total = {}, {}, 0
for b = 1, nb do
  local count, bytes
  count, bytes, pos = sunpack('<I4I4', data, pos)
  B[b], C[b] = data:sub(pos, pos + bytes - 1), count
  pos = pos + bytes
  total = total + count
end
data = nil

assert(variant == 'plain' or variant == 'hook', 'variant: plain or hook')
local run = setup(prelude, slurp(script), script, { hook = variant == 'hook' and 10000 or nil })
local V = {}
for i = 1, total do V[i] = 0 end

local function pass(run)
  local k = 0
  local t0 = clock()
  for b = 1, nb do k = run.batch(B[b], C[b], V, k) end
  local t = clock() - t0
  local a, d, f = 0, 0, 0
  for i = 1, total do
    local v = V[i]
    if v == 1 then a = a + 1 elseif v == 0 then d = d + 1 elseif v < 0 then f = f + 1 else a = a + 1 end
  end
  return t, a, d, f
end

write('ready packets=', total, '\n')
flush()
while true do
  local line = read('l')
  if line == nil or line == 'quit' then break end
  local ok, err = pcall(function()
    if line == 'pass' then
      local t, a, d, f = pass(run)
      write(('ok cpu=%.9f packets=%d accepted=%d dropped=%d faults=%d\n'):format(t, total, a, d, f))
    elseif line == 'verdicts' then
      pass(run)
      write('ok ', concat(V, ',', 1, total), '\n')
    else
      error('unknown command ' .. line)
    end
  end)
  if not ok then write('error ', tostring(err):gsub('\n', ' '), '\n') end
  flush()
end
