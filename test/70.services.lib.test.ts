// The small libraries of API.md section 6, offline: time (the capture's clock), random (ranges,
// errors), log and print (JSON lines with tenant, script and file:line), stats (the tenant's
// metrics, logged at the end), bit and bytes.
import { test } from 'uvu'
import * as assert from 'uvu/assert'
import { join } from 'node:path'
import { tempDir } from './lib/psd.js'
import { timedCapture, scriptMsgs, ns, runSvc } from './lib/services.js'

const dir = tempDir('psd-lib-')
// the capture goes back in time at packet 3
const pcap = timedCapture(dir, 'four.pcap', [0, 1500.25, 1000, 2000].map((ms) => ({ ms })))

function run(body: string, args: string[] = []) {
  const r = runSvc({ script: body, pcap, dir, args: ['--timeout-ms', '5000', ...args] })
  assert.is(r.status, 0, r.stderr)
  return r
}

test('time.now() is the packet\'s capture time (integer ns); time.mono() is that clock, never going back', () => {
  const r = run(`function on_packet(pkt)
  local now, mono = time.now(), time.mono()
  print(math.type(now), math.type(mono), now == pkt.time, now, mono)
end`)
  assert.equal(scriptMsgs(r), [
    `integer\tinteger\ttrue\t${ns(0)}\t${ns(0)}`,
    `integer\tinteger\ttrue\t${ns(1500.25)}\t${ns(1500.25)}`,
    `integer\tinteger\ttrue\t${ns(1000)}\t${ns(1500.25)}`,
    `integer\tinteger\ttrue\t${ns(2000)}\t${ns(2000)}`,
  ])
})

test('random.u32/int/bytes: integers in range, uniform enough, from any range; bad arguments are errors', () => {
  const r = run(`function on_start()
  local lo, hi, seen = math.huge, -math.huge, {}
  for i = 1, 2000 do
    local x = random.u32()
    assert(math.type(x) == 'integer' and x >= 0 and x <= 0xffffffff)
    local d = random.int(-3, 3)
    assert(math.type(d) == 'integer' and d >= -3 and d <= 3)
    seen[d] = (seen[d] or 0) + 1
  end
  local faces = 0
  for k = -3, 3 do if (seen[k] or 0) > 150 then faces = faces + 1 end end
  print("faces", faces)
  print("one", random.int(7, 7))
  local big = random.int(math.mininteger, math.maxinteger)
  print("full range", math.type(big))
  local w = random.int(0, 1 << 40)
  print("wide", w >= 0 and w <= 1 << 40)
  local n = random.int(-(1 << 62), 1 << 62)
  print("wrapping span", n >= -(1 << 62) and n <= 1 << 62)
  local b = random.bytes(16)
  print("bytes", #b, #random.bytes(0), b ~= random.bytes(16))
  for _, bad in ipairs { function() random.int(2, 1) end, function() random.int(1.5, 2) end,
      function() random.bytes(-1) end, function() random.bytes(65537) end } do
    local ok, err = pcall(bad)
    print(ok, (err:gsub("^.-:%d+: ", "")))
  end
end
function on_packet() end`)
  assert.equal(scriptMsgs(r), [
    'faces\t7', 'one\t7', 'full range\tinteger', 'wide\ttrue', 'wrapping span\ttrue', 'bytes\t16\t0\ttrue',
    'false\trandom.int: integers lo <= hi expected', 'false\trandom.int: integers lo <= hi expected',
    'false\trandom.bytes: n must be an integer in 0..65536', 'false\trandom.bytes: n must be an integer in 0..65536',
  ])
})

test('log.* and print: JSON lines with level, tenant, script and where (file:line); a bad format is an error at the call', () => {
  const r = run(`function on_packet(pkt)
  if pkt.id == 1 then
    log.debug("d %d", 1)
    log.info("i %s=%d", "x", 2)
    log.warn("w")
    log.error("e %q", "q")
    print("p", 1, nil, true, 2.5)
    print()
  elseif pkt.id == 2 then
    log.info("%d", "not a number")
  end
end`, ['--log-level', 'debug'])
  const lines = r.logs.filter((l) => l.source === 'script')
  assert.equal(lines.map((l) => [l.level, l.msg, l.where.replace(/^.*\//, '')]), [
    ['debug', 'd 1', 'script.lua:3'], ['info', 'i x=2', 'script.lua:4'], ['warn', 'w', 'script.lua:5'],
    ['error', 'e "q"', 'script.lua:6'], ['info', 'p\t1\tnil\ttrue\t2.5', 'script.lua:7'], ['info', '', 'script.lua:8'],
  ])
  for (const l of lines) {
    assert.is(l.tenant, 'default')
    assert.is(l.script, join(dir, 'script.lua'))
    assert.ok(typeof l.time === 'string')
  }
  assert.equal(r.verdicts.map((v) => v.fault), [null, 'error', null, null])
  assert.match(r.logs.find((l) => l.fault === 'error').msg, /script\.lua:10: log\.info: bad argument #2 to '(string\.)?format' \(number expected, got string\)/)
  // at the default level, debug lines are left out
  const quiet = run('function on_packet() log.debug("hidden") log.info("shown") end')
  assert.equal(scriptMsgs(quiet), Array(4).fill('shown'))
})

test('stats.inc/set feed the tenant\'s metrics (logged at the end); bad names and values are errors', () => {
  const r = run(`function on_packet(pkt)
  stats.inc("packets")
  stats.inc("bytes", pkt.len)
  stats.set("last_id", pkt.id)
  stats.inc("half", 0.5)
end
function on_start()
  for _, bad in ipairs { function() stats.inc("no spaces") end, function() stats.inc("") end,
      function() stats.inc(("x"):rep(65)) end, function() stats.set("x", "1") end, function() stats.inc("x", {}) end } do
    print((select(2, pcall(bad)):gsub("^.-:%d+: ", "")))
  end
end`)
  assert.equal(r.logs.find((l) => l.msg === 'script stats').stats, { packets: 4, bytes: 4 * 29, last_id: 4, half: 2 })
  assert.equal(scriptMsgs(r), [
    'stats: name must be 1-64 letters, digits or _', 'stats: name must be 1-64 letters, digits or _',
    'stats: name must be 1-64 letters, digits or _', 'stats.set: number expected', 'stats.inc: number expected',
  ])
})

test('bit and bytes helpers', () => {
  const r = run(`function on_start()
  print(bit.band(0xff0f, 0x0ff0, 0xfff0), bit.bor(1, 2, 4), bit.bxor(0xff, 0x0f), bit.bnot(0))
  print(bit.lshift(1, 31), bit.lshift(0x80000000, 1), bit.rshift(0x80000000, 31), bit.arshift(0x80000000, 4), bit.arshift(0x40, 2))
  print(bit.band(3.0, 1), pcall(bit.band, 1.5, 1))
  print(bytes.hex("\\0\\1\\171\\255"), bytes.fromhex("48656c6C6f"), bytes.checksum("\\0\\1\\242\\3"))
  print(pcall(bytes.fromhex, "abc"))
  print(pcall(bytes.fromhex, "zz"))
end
function on_packet() end`)
  const msgs = scriptMsgs(r).map((m) => m.replace(/\t[^\t]*\.lua:\d+: /g, '\t'))
  assert.equal(msgs, [
    '3840\t7\t240\t4294967295',
    '2147483648\t0\t1\t4160749568\t16',
    '1\tfalse\tbit.band: integer expected, got number',
    '0001abff\tHello\t' + String(0xffff - (0x0001 + 0xf203)), // words 0x0001 0xf203
    'false\tbytes.fromhex: even-length hex string expected',
    'false\tbytes.fromhex: bad hex digit near position 1',
  ])
})

test.run()
