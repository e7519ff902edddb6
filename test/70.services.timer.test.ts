// timer.after/every offline (API.md sections 6 and 9): timers run on the capture's clock and
// fire between packets, when the capture's time reaches their due time (also inside a batch),
// with time.now() at their due time; :cancel(); the bound on timers; faults in callbacks;
// catching up over quiet periods, and the bound on one round of firings.
import { test } from 'uvu'
import * as assert from 'uvu/assert'
import { tempDir } from './lib/psd.js'
import { timedCapture, scriptMsgs, services, callbackFaults, ns, runSvc } from './lib/services.js'

const dir = tempDir('psd-timer-')
const pcap = timedCapture(dir, 'five.pcap', [0, 1000, 2000, 3000, 4000].map((ms) => ({ ms })))
const t = (ms: number) => String(ns(ms))

test('after and every fire between the right packets, with time.now() at their due time, whatever the batch size', () => {
  const script = `
function on_start()
  timer.after(2500, function() print("after", time.now()) end)
  timer.every(1000, function() print("every", time.now()) end)
end
function on_packet(pkt) print("packet", pkt.id, time.now()) end`
  const expected = [
    `packet\t1\t${t(0)}`, `every\t${t(1000)}`, `packet\t2\t${t(1000)}`, `every\t${t(2000)}`, `packet\t3\t${t(2000)}`,
    `after\t${t(2500)}`, `every\t${t(3000)}`, `packet\t4\t${t(3000)}`, `every\t${t(4000)}`, `packet\t5\t${t(4000)}`,
  ]
  for (const batch of ['128', '1', '3']) {
    const r = runSvc({ script, pcap, dir, args: ['--batch', batch] })
    assert.is(r.status, 0, r.stderr)
    assert.equal(scriptMsgs(r), expected, `--batch ${batch}`)
    assert.equal(services(r), { timers_fired: 5 })
  }
})

test('a timer set by a packet fires before the first later packet at or after its due time, inside the same batch', () => {
  const script = `
function on_packet(pkt)
  print("packet", pkt.id)
  if pkt.id == 1 then timer.after(1500, function(h) print("fired", tostring(h), time.now()) end) end
end`
  const r = runSvc({ script, pcap, dir })
  assert.is(r.status, 0, r.stderr)
  assert.equal(scriptMsgs(r), ['packet\t1', 'packet\t2', `fired\ttimer (done)\t${t(1500)}`, 'packet\t3', 'packet\t4', 'packet\t5'])
})

test('time.now() before the first packet (top level, on_start) is the capture\'s first timestamp', () => {
  const r = runSvc({ script: 'print("top", time.now())\nfunction on_start() print("start", time.now()) end\nfunction on_packet() end', pcap, dir })
  assert.equal(scriptMsgs(r), [`top\t${t(0)}`, `start\t${t(0)}`])
})

test(':cancel() stops a timer (true once, then false); a cancelled timer never fires', () => {
  const script = `
local n = 0
timer.every(1000, function(h)
  n = n + 1
  print("tick", n)
  if n == 2 then print("cancel", h:cancel(), h:cancel(), tostring(h)) end
end)
local h2 = timer.after(1500, function() print("never") end)
print("cancel h2", h2:cancel())
function on_packet() end`
  const r = runSvc({ script, pcap, dir })
  assert.is(r.status, 0, r.stderr)
  assert.equal(scriptMsgs(r), ['cancel h2\ttrue', 'tick\t1', 'tick\t2', 'cancel\ttrue\tfalse\ttimer (done)'])
  assert.equal(services(r), { timers_fired: 2 })
})

test('a tenant may have 256 timers at once: one more raises a clear error (counted); cancelling makes room', () => {
  const script = `
local hs = {}
for i = 1, 256 do hs[i] = timer.after(100000, function() end) end
print(pcall(timer.after, 1, function() end))
hs[1]:cancel()
print("again", (pcall(timer.every, 10, function() end)))
function on_packet(pkt)
  if pkt.id == 1 then timer.after(1, print) end
end`
  const r = runSvc({ script, pcap, dir, args: ['--timeout-ms', '5000'] })
  assert.is(r.status, 0, r.stderr)
  const msgs = scriptMsgs(r)
  assert.is(msgs[0], 'false\ttimer.after: too many timers (the tenant may have 256 at once)')
  assert.is(msgs[1], 'again\ttrue')
  // from a packet: that packet's fault, with file:line; the others are fine
  assert.equal(r.verdicts.map((v) => v.fault), ['error', null, null, null, null])
  assert.match(r.logs.find((l) => l.fault === 'error').msg, /script\.lua:8: timer\.after: too many timers/)
  assert.equal(services(r), { ...services(r), timers_refused: 2 })
})

test('bad arguments are errors at the call', () => {
  const cases: [string, RegExp][] = [
    ['timer.every(0.5, print)', /timer\.every: the period must be at least 1 ms/],
    ['timer.after(-1, print)', /timer\.after: ms must be a number in 0\.\.2592000000, got -1/],
    ['timer.after("soon", print)', /timer\.after: ms must be a number/],
    ['timer.after(0/0, print)', /timer\.after: ms must be a number/],
    ['timer.after(10, nil)', /timer\.after: function expected, got nil/],
    ['timer.every(10, {})', /timer\.every: function expected, got table/],
  ]
  for (const [call, re] of cases) {
    const r = runSvc({ script: `function on_packet()\n  ${call}\nend`, pcap, dir })
    assert.ok(r.verdicts.every((v) => v.fault === 'error'), call)
    assert.match(r.logs.find((l) => l.fault === 'error').msg, new RegExp('script\\.lua:2: ' + re.source), call)
  }
})

test("a timer callback's fault is logged and counted, never changes a verdict, and a periodic timer keeps running", () => {
  const script = `
local n = 0
timer.every(1000, function()
  n = n + 1
  if n % 2 == 1 then error("odd tick " .. n) end
  print("even tick", n)
end)
timer.after(1500, function() while true do end end)
function on_packet() return DROP end`
  const r = runSvc({ script, pcap, dir, args: ['--fuel', '200000', '--on-fault', 'accept', '--timeout-ms', '5000'] })
  assert.is(r.status, 0, r.stderr)
  assert.equal(r.verdicts.map((v) => [v.verdict, v.fault]), Array(5).fill(['drop', null]))
  assert.equal(scriptMsgs(r), ['even tick\t2', 'even tick\t4'])
  const faults = callbackFaults(r)
  assert.equal(faults.map((f) => [f.fault, f.in]), [['error', 'timer callback'], ['fuel', 'timer callback'], ['error', 'timer callback']])
  assert.match(faults[0].msg, /script\.lua:5: odd tick 1/)
  assert.match(faults[1].msg, /fuel budget exhausted \(200000 instructions\) at .*script\.lua:8/)
  assert.equal(services(r), { timers_fired: 5, timer_faults: 3 })
})

test('offline a periodic timer catches up over a quiet stretch of the capture, at most 1000 firings in a row, then skips ahead', () => {
  const gap10s = timedCapture(dir, 'gap10s.pcap', [{ ms: 0 }, { ms: 10_000 }])
  const script = `
local n = 0
timer.every(100, function() n = n + 1 end)
function on_packet(pkt) print("packet", pkt.id, n) end`
  let r = runSvc({ script, pcap: gap10s, dir })
  assert.equal(scriptMsgs(r), ['packet\t1\t0', 'packet\t2\t100'])
  assert.equal(services(r), { timers_fired: 100 })

  const gap1h = timedCapture(dir, 'gap1h.pcap', [{ ms: 0 }, { ms: 3_600_000 }, { ms: 3_600_000.5 }, { ms: 3_600_002 }])
  r = runSvc({ script: script.replace('every(100', 'every(1'), pcap: gap1h, dir })
  // 1000 firings (1..1000 ms), then it skips to 3600001 ms, fires there (before packet 4), and at 3600002
  assert.equal(scriptMsgs(r), ['packet\t1\t0', 'packet\t2\t1000', 'packet\t3\t1000', 'packet\t4\t1002'])
  assert.equal(services(r), { timers_fired: 1002, timers_skipped: 3_599_000 })
})

test('one round fires at most 10000 callbacks; what is still due then waits until the capture\'s clock moves on', () => {
  const script = `
local n = 0
local function again() n = n + 1 timer.after(0, again) end
function on_packet(pkt)
  if pkt.id == 1 then timer.after(0, again) end
  print("packet", pkt.id, n)
end`
  const r = runSvc({ script, pcap, dir })
  assert.is(r.status, 0, r.stderr)
  assert.equal(scriptMsgs(r), ['packet\t1\t0', 'packet\t2\t10000', 'packet\t3\t20000', 'packet\t4\t30000', 'packet\t5\t40000'])
  assert.equal(services(r), { timers_fired: 40000, timers_postponed: 4 })
  assert.ok(r.logs.some((l) => l.event === 'timers_postponed' && /postponed/.test(l.msg)))
})

test('timers not yet due when the capture ends do not fire', () => {
  const r = runSvc({ script: 'local h = timer.after(10000, function() print("late") end)\nfunction on_packet() end\nfunction on_stop() print("stop", tostring(h)) end', pcap, dir })
  assert.equal(scriptMsgs(r), ['stop\ttimer (active)'])
})

test('an offline run with timers is deterministic', () => {
  const script = `
local seen = 0
timer.every(700, function() print("tick", seen, time.now(), time.mono()) end)
function on_packet(pkt) seen = seen + 1 if seen % 2 == 0 then timer.after(300, function() print("half", time.now()) end) end end`
  const a = runSvc({ script, pcap, dir, args: ['--batch', '2'] })
  const b = runSvc({ script, pcap, dir, args: ['--batch', '5'] })
  assert.is(a.status, 0, a.stderr)
  assert.is(b.status, 0, b.stderr)
  assert.ok(scriptMsgs(a).length > 5, a.stderr)
  assert.equal(scriptMsgs(a), scriptMsgs(b))
})

test.run()
