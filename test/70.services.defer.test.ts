// defer(fn, ...) offline (API.md sections 6 and 9): deferred calls run after each batch's
// verdicts, in order, with their own fuel; the ones still waiting at the end run before psd
// exits; the queue is bounded (the newest call is dropped and counted); a deferred call's
// fault is logged and counted and never changes a verdict.
import { test } from 'uvu'
import * as assert from 'uvu/assert'
import { tempDir } from './lib/psd.js'
import { timedCapture, scriptMsgs, services, callbackFaults, ns, runSvc } from './lib/services.js'

const dir = tempDir('psd-defer-')
// 5 packets, one second apart; the first payload byte (offset 28) is the packet's index
const pcap = timedCapture(dir, 'five.pcap', [0, 1000, 2000, 3000, 4000].map((ms) => ({ ms })))

test('deferred calls run after their batch, oldest first, with their arguments; pending ones run at the end', () => {
  const script = `
function on_packet(pkt)
  print("packet", pkt.id)
  defer(function(id, tag) print("deferred", id, tag, time.now()) end, pkt.id, "x")
  return ACCEPT
end`
  const r = runSvc({ script, pcap, dir, args: ['--batch', '2'] })
  assert.is(r.status, 0, r.stderr)
  const t = (ms: number) => String(ns(ms))
  assert.equal(scriptMsgs(r), [
    'packet\t1', 'packet\t2', `deferred\t1\tx\t${t(1000)}`, `deferred\t2\tx\t${t(1000)}`,
    'packet\t3', 'packet\t4', `deferred\t3\tx\t${t(3000)}`, `deferred\t4\tx\t${t(3000)}`,
    'packet\t5', `deferred\t5\tx\t${t(4000)}`,
  ])
  assert.equal(services(r), { deferred_run: 5 })
  assert.ok(r.verdicts.every((v) => v.verdict === 'accept' && v.fault === null))
  // the summary is still the last line
  assert.is(r.logs[r.logs.length - 1].msg, 'summary')
})

test('defer returns true; a full queue drops the newest call (false) and counts it; the queued ones all run', () => {
  const script = `
local ran, ok, refused = 0, 0, 0
function on_packet(pkt)
  if pkt.id == 1 then
    for i = 1, 1100 do
      if defer(function() ran = ran + 1 end) then ok = ok + 1 else refused = refused + 1 end
    end
    print("ok", ok, "refused", refused)
  else
    print("ran", ran)
  end
end`
  const r = runSvc({ script, pcap, dir, args: ['--batch', '1', '--timeout-ms', '5000'] })
  assert.is(r.status, 0, r.stderr)
  const msgs = scriptMsgs(r)
  assert.is(msgs[0], 'ok\t1024\trefused\t76')
  assert.is(msgs[1], 'ran\t1024')
  assert.equal(services(r), { deferred_run: 1024, deferred_dropped: 76 })
  const warn = r.logs.filter((l) => l.event === 'deferred_dropped')
  assert.ok(warn.length >= 1 && warn.length <= 100, 'the drops are logged, without flooding')
  assert.match(warn[0].msg, /queue is full \(1024 calls\)/)
})

test("a deferred call's fault (error, fuel, time, memory) is logged and counted, and never changes a verdict", () => {
  const script = `
local n = 0
function on_packet(pkt)
  n = n + 1
  local i = pkt.id
  if i == 1 then defer(function() error("boom in deferred") end)
  elseif i == 2 then defer(function() while true do end end)
  elseif i == 3 then defer(function() local t = {} for k = 1, 1e9 do t[k] = {} end end)
  else defer(function() print("still working", n) end) end
  return DROP
end`
  // fuel and memory: a small fuel budget, a generous clock; time: the other way round (and no
  // allocation loop, which could meet the memory budget first)
  const runs = [
    runSvc({ script, pcap, dir, args: ['--batch', '1', '--on-fault', 'accept', '--memory', '4MiB', '--fuel', '3000000', '--timeout-ms', '20000'] }),
    runSvc({ script: script.replace('t[k] = {}', 'k = 0'), pcap, dir, args: ['--batch', '1', '--on-fault', 'accept', '--fuel', '1000000000000', '--timeout-ms', '50'] }),
  ]
  const kinds: string[] = []
  for (const r of runs) {
    assert.is(r.status, 0, r.stderr)
    // every packet keeps the script's own verdict: DROP, no fault (the fault verdict would be accept)
    assert.equal(r.verdicts.map((v) => [v.verdict, v.fault]), Array(5).fill(['drop', null]))
    assert.equal(r.summary, { ...r.summary, packets: 5, dropped: 5, accepted: 0, faults: 0 })
    const faults = callbackFaults(r)
    for (const f of faults) assert.match(f.msg, /script\.lua:\d+/, 'file:line in the message')
    assert.match(faults[0].msg, /script\.lua:6: boom in deferred/)
    kinds.push(...faults.map((f) => f.fault))
    // the VM goes on: the later deferred calls run
    assert.equal(scriptMsgs(r), ['still working\t4', 'still working\t5'])
    assert.equal(services(r), { deferred_run: 5, deferred_faults: 3 })
  }
  assert.equal(kinds, ['error', 'fuel', 'memory', 'error', 'time', 'time'])
})

test('a deferred call has its own fuel: a packet and its deferred call may each use most of the budget', () => {
  const script = `
local function spend(k) local x = 0 for i = 1, k do x = x + i end return x end
function on_packet(pkt)
  spend(200000)  -- about 3 instructions a turn: well over half of the fuel
  defer(function() spend(200000) print("deferred done") end)
  return DROP
end`
  const r = runSvc({ script, pcap, dir, args: ['--batch', '1', '--fuel', '1000000', '--timeout-ms', '10000'] })
  assert.is(r.status, 0, r.stderr)
  assert.ok(r.verdicts.every((v) => v.verdict === 'drop' && v.fault === null))
  assert.is(scriptMsgs(r).length, 5)
  assert.equal(services(r), { deferred_run: 5 })
})

test('defer outside packets: from the top level and on_start (before the first packet), timers, and on_stop', () => {
  const script = `
defer(print, "from the top level")
function on_start() defer(print, "from on_start") end
function on_packet(pkt) print("packet", pkt.id) if pkt.id == 1 then timer.after(500, function() defer(print, "from a timer") end) end end
function on_stop() defer(print, "from on_stop") end`
  const r = runSvc({ script, pcap, dir, args: ['--batch', '1'] })
  assert.is(r.status, 0, r.stderr)
  // the timer fires between packets 1 and 2 (in packet 2's batch); what it defers runs after that batch
  assert.equal(scriptMsgs(r), ['from the top level', 'from on_start', 'packet\t1', 'packet\t2', 'from a timer',
    'packet\t3', 'packet\t4', 'packet\t5', 'from on_stop'])
})

test('a deferred call that defers again runs in the next round, never in an endless loop', () => {
  const script = `
local rounds = 0
local function again() rounds = rounds + 1 defer(again) end
function on_packet(pkt) if pkt.id == 1 then defer(again) end print("rounds", rounds) end`
  const r = runSvc({ script, pcap, dir, args: ['--batch', '1'] })
  assert.is(r.status, 0, r.stderr)
  // one round after each batch: the chain advances by one per packet
  assert.equal(scriptMsgs(r), ['rounds\t0', 'rounds\t1', 'rounds\t2', 'rounds\t3', 'rounds\t4'])
  // at the end (before on_stop, and again after it): 100 rounds, then the one still waiting is
  // dropped with a warning
  assert.is(r.logs.filter((l) => l.level === 'warn' && /deferred calls still waiting after 100 rounds were dropped/.test(l.msg)).length, 2)
  assert.is(services(r).deferred_run, 5 + 100 + 100)
})

test('defer with something that is not a function is an error at the call, with file:line', () => {
  const r = runSvc({ script: 'function on_packet(pkt)\n  defer(42)\nend', pcap, dir })
  assert.is(r.status, 0, r.stderr)
  assert.ok(r.verdicts.every((v) => v.fault === 'error'))
  const err = r.logs.find((l) => l.fault === 'error')
  assert.match(err.msg, /script\.lua:2: defer: function expected, got number/)
})

test('an offline run with deferred calls is deterministic', () => {
  const script = `
local acc = 0
function on_packet(pkt)
  defer(function(v) acc = acc * 31 + v print("acc", acc, time.now()) end, pkt.id)
  if acc % 2 == 0 then return DROP end
end`
  const a = runSvc({ script, pcap, dir, args: ['--batch', '2'] })
  const b = runSvc({ script, pcap, dir, args: ['--batch', '2'] })
  assert.is(a.status, 0, a.stderr)
  assert.is(b.status, 0, b.stderr)
  assert.is(scriptMsgs(a).length, 5, a.stderr)
  assert.equal(scriptMsgs(a), scriptMsgs(b))
  assert.equal(a.verdicts, b.verdicts)
})

test.run()
