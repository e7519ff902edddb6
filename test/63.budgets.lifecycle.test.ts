// Budgets outside on_packet: the top level and on_start run under the same budgets and a fault
// there fails the load with a message naming the budget (API.md section 5); deferred calls and
// on_stop are bounded too; a VM that cannot be rebuilt leaves no packet without a verdict; the
// host survives a heap full of the smallest objects.
import { test } from 'uvu'
import * as assert from 'uvu/assert'
import { TestTenant } from './lib/hostile.js'
import { LoadError } from '../src/engine/tenant.js'

const DROP = 0, ACCEPT = 1

async function loadError(src: string, o: Parameters<typeof TestTenant.start>[1] = {}): Promise<LoadError> {
  const t0 = performance.now()
  try {
    const t = await TestTenant.start(src, o)
    await t.stop()
  } catch (e) {
    assert.ok(e instanceof LoadError, String(e))
    assert.ok(performance.now() - t0 < (o.timeoutMs ?? 50) + 2000, 'the load ends within its budget (and a worker start)')
    return e as LoadError
  }
  throw new Error('the script loaded')
}

test('the top level runs under the fuel budget: the load fails naming it', async () => {
  const e = await loadError('while true do end\nfunction on_packet() end', { timeoutMs: 5000 })
  assert.is(e.kind, 'fuel')
  assert.match(e.message, /s\d+\.lua: fuel budget exhausted \(1000000 instructions\) at .*s\d+\.lua:1 \(in top level\)/)
})

test('on_start runs under the memory budget', async () => {
  const e = await loadError('function on_start() local s = ("x"):rep(1 << 26) end\nfunction on_packet() end', { timeoutMs: 5000 })
  assert.is(e.kind, 'memory')
  assert.match(e.message, /memory budget exhausted \(16777216 bytes\).*\(in on_start\)/)
})

test('the top level runs under the time budget (the hook)', async () => {
  const e = await loadError('local x = 0 while true do x = x + 1 end\nfunction on_packet() end', { fuel: 1e12 })
  assert.is(e.kind, 'time')
  assert.match(e.message, /time budget exhausted \(50 ms\) at .*s\d+\.lua:1 \(in top level\)/)
})

test('a runaway library call in the top level: the watchdog stops the load', async () => {
  const e = await loadError('string.find(string.rep("a", 40), string.rep("a?", 40) .. string.rep("a", 40))\nfunction on_packet() end')
  assert.is(e.kind, 'time')
  assert.match(e.message, /time budget exhausted \(50 ms\).*watchdog stopped the load/)
})

test('a deferred call that runs away inside C: counted, logged, the VM rebuilt, the next batch runs', async () => {
  const t = await TestTenant.start(`n = 0
function on_packet(pkt)
  n = n + 1
  if pkt.id == 2 then defer(function() string.find(string.rep("a", 40), string.rep("a?", 40) .. string.rep("a", 40)) end) end
  return DROP, n
end`)
  try {
    const b1 = await t.batch([1, 2])
    assert.equal(b1.results.map((r) => [r.verdict, r.mark, r.fault]), [[DROP, 1, null], [DROP, 2, null]], 'the verdicts came before the deferred call')
    const b2 = await t.batch([3, 4])
    assert.equal(b2.results.map((r) => [r.verdict, r.mark, r.fault]), [[DROP, 1, null], [DROP, 2, null]], 'a rebuilt VM')
    assert.is(t.tenant.counters.faults.time, 1)
    const logs = t.logs()
    assert.ok(logs.some((l) => l.fault === 'time' && /timer or deferred call/.test(l.msg)), 'logged')
    assert.ok(logs.some((l) => /globals were lost/.test(l.msg)))
  } finally {
    await t.stop()
  }
})

test('on_stop that runs away: stop still ends', async () => {
  const t = await TestTenant.start('function on_stop() while true do end end\nfunction on_packet() return DROP end', { timeoutMs: 5000 })
  const r = await t.batch([1])
  assert.is(r.results[0].verdict, DROP)
  const t0 = performance.now()
  await t.stop()
  assert.ok(performance.now() - t0 < 5000)
  assert.ok(t.logs().some((l) => /fuel budget exhausted.*on_stop/.test(l.msg)), JSON.stringify(t.logs()))
})

test('a VM that cannot be rebuilt: every packet still gets the fault verdict, with the reason', async () => {
  // loads at the capture's start; a rebuild after a stop starts at the stopped packet's time and fails
  const t = await TestTenant.start(`if time.now() > 0 then error("this script loads only once") end
n = 0
function on_packet(pkt)
  n = n + 1
  if pkt.id == 2 then string.find(string.rep("a", 40), string.rep("a?", 40) .. string.rep("a", 40)) end
  return DROP, n
end`, { onFault: 'drop' })
  try {
    const b1 = await t.batch([1, 2])
    assert.equal(b1.results.map((r) => [r.verdict, r.fault]), [[DROP, null], [DROP, 'time']])
    const b2 = await t.batch([3, 4])
    assert.equal(b2.results.map((r) => [r.verdict, r.fault]), [[DROP, 'crash'], [DROP, 'crash']], 'the fault verdict (drop) for each')
    assert.match(b2.results[0].message!, /cannot be rebuilt: .*this script loads only once/)
    assert.ok(t.logs().some((l) => /cannot rebuild the VM/.test(l.msg)))
  } finally {
    await t.stop()
  }
})

test('a heap full of the smallest objects: the host never aborts and the tenant goes on', async () => {
  const t = await TestTenant.start(`n = 0
function on_packet(pkt)
  n = n + 1
  if pkt.id == 2 then hog = {} for i = 1, 1e9 do hog[i] = {} end end
  if pkt.id == 3 then hog2 = {} for i = 1, 1e9 do hog2[i] = i .. "" end end
  return DROP, n
end`, { fuel: 1e12, memory: 8 << 20, timeoutMs: 10000 })
  try {
    const r = [...(await t.batch([1, 2])).results, ...(await t.batch([3, 4])).results, ...(await t.batch([5, 6])).results]
    assert.equal(r.map((x) => x.n), [1, 2, 3, 4, 5, 6])
    assert.is(r[1].fault, 'memory')
    assert.equal([r[5].verdict, r[5].fault], [DROP, null], JSON.stringify(r))
    assert.ok(t.logs().some((l) => /memory budget stayed full/.test(l.msg)), 'rebuilt, and why')
  } finally {
    await t.stop()
  }
})

test('inline (same-thread) tenants apply the same budgets, without the watchdog', async () => {
  const t = await TestTenant.start('n = 0\nfunction on_packet(pkt) n = n + 1 if pkt.id == 2 then while true do end end return ACCEPT, n end', { inline: true, timeoutMs: 5000 })
  try {
    const r = (await t.batch([1, 2, 3])).results
    assert.equal(r.map((x) => [x.verdict, x.mark, x.fault]), [[ACCEPT, 1, null], [ACCEPT, -1, 'fuel'], [ACCEPT, 3, null]])
  } finally {
    await t.stop()
  }
})

test.run()
