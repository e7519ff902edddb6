// Reload (API.md section 8) without the kernel: the state handoff between two real VMs
// (wasm/lua/state.lua), its limits and errors, and TenantSet swapping a tenant's engine between
// two batches while batches keep coming.
import { test } from 'uvu'
import * as assert from 'uvu/assert'
import { openSync, readFileSync, renameSync, writeFileSync } from 'node:fs'
import { join } from 'node:path'
import { Tenant } from '../src/engine/tenant.js'
import { tempDir } from './lib/psd.js'
import { quietLog, tenantCfg, memorySet, udpBatch, writeScript, versionScript } from './lib/ops.js'

const dir = tempDir('psd-ops-reload-')
const logPath = join(dir, 'log.jsonl')
const log = quietLog(openSync(logPath, 'a'))
const logs = () => readFileSync(logPath, 'utf8').split('\n').filter(Boolean).map((l) => JSON.parse(l))

async function handoff(oldText: string, newText: string, extra = {}) {
  const a = await Tenant.start(tenantCfg('t', writeScript(dir, 'old.lua', oldText), [0], extra), log, 'real')
  const b = await Tenant.start(tenantCfg('t', writeScript(dir, 'new.lua', newText), [0], extra), log, 'real')
  try {
    const state = await a.handOff()
    await b.takeOver(state)
    return { a, b, state }
  } finally {
    a.retire()
    b.stop()
  }
}

const ENTRY = 'function on_packet(p) return ACCEPT end\n'

test('state handoff: plain values keep their types and bits', async () => {
  const { state } = await handoff(ENTRY + `
    function on_stop() return { i = 41, big = math.maxinteger, small = math.mininteger, f = 1.5, third = 1/3,
      negzero = -0.0, inf = math.huge, ninf = -math.huge, nan = 0/0, s = "a\\0b\\255\\n", empty = "", t = true, no = false,
      list = { 1, 2, { 3, { 4 } } }, [7] = "seven", [2.5] = "float key", [true] = "bool key", nested = { deep = { deeper = {} } } } end`,
  ENTRY + `
    function on_reload(s)
      assert(math.type(s.i) == 'integer' and s.i == 41)
      assert(s.big == math.maxinteger and s.small == math.mininteger)
      assert(math.type(s.f) == 'float' and s.f == 1.5 and s.third == 1/3)
      assert(1/s.negzero == -math.huge and s.inf == math.huge and s.ninf == -math.huge and s.nan ~= s.nan)
      assert(s.s == "a\\0b\\255\\n" and s.empty == "" and s.t == true and s.no == false)
      assert(s.list[3][2][1] == 4 and #s.list == 3)
      assert(s[7] == "seven" and s[2.5] == "float key" and s[true] == "bool key")
      assert(type(s.nested.deep.deeper) == 'table' and next(s.nested.deep.deeper) == nil)
      stats.set('ok', 1)
    end`)
  assert.ok(state instanceof Uint8Array && state.length > 50)
})

test('state handoff: no on_stop, or on_stop returning nil, gives on_reload(nil)', async () => {
  const { b, state } = await handoff(ENTRY, ENTRY + 'function on_reload(s) stats.set("got_nil", s == nil and 1 or 0) end')
  assert.is(state, null)
  assert.is(b.stats.get('got_nil'), 1)
  const r = await handoff(ENTRY + 'function on_stop() end', ENTRY + 'function on_reload(s) stats.set("got_nil", s == nil and 1 or 0) end')
  assert.is(r.b.stats.get('got_nil'), 1)
})

test('state handoff: a non-table value is handed over as it is', async () => {
  const r = await handoff(ENTRY + 'function on_stop() return 12345 end', ENTRY + 'function on_reload(s) stats.set("v", s) end')
  assert.is(r.b.stats.get('v'), 12345)
})

for (const [what, value, message] of [
  ['a function', '{ f = function() end }', /on_stop returned a function \(at state\.f\)/],
  ['a cycle', '(function() local t = {} t.self = t return t end)()', /contains itself \(at state\.self\)/],
  ['a table key', '{ [{}] = 1 }', /a table as a key/],
  ['tables nested too deep', '(function() local t = {} local c = t for i = 1, 40 do c.x = {} c = c.x end return t end)()', /nested deeper than 32/],
  ['too many bytes', '{ string.rep("x", 600000), string.rep("y", 600000) }', /larger than 1048576 bytes/],
  ['a function deep in a list', '{ ok = "x", bad = { print } }', /on_stop returned a function \(at state\.bad\[1\]\)/],
] as const) {
  test(`state handoff refuses ${what} with an error that says where`, async () => {
    const path = writeScript(dir, 'bad-state.lua', ENTRY + `function on_stop() return ${value} end`)
    // a generous clock: the limits of the handoff are the point here, not the time budget
    const a = await Tenant.start(tenantCfg('t', path, [0], { timeoutMs: 5000 }), log, 'real')
    try {
      let err: Error | undefined
      try { await a.handOff() } catch (e) { err = e as Error }
      assert.ok(err, 'handOff must throw')
      assert.match(err!.message, message, err!.message)
      assert.ok(err!.message.startsWith(path), err!.message)
      assert.match(err!.message, /\(in on_stop\)/)
      // the old VM is still usable after a refused handoff
      const b = udpBatch(3)
      await a.run(b.batch, b.count, b.out, b.ns)
      assert.equal([...b.out.verdict.slice(0, 3)], [1, 1, 1])
    } finally { a.retire() }
  })
}

test('state handoff runs under the budgets: an on_stop that loops runs out of fuel', async () => {
  const path = writeScript(dir, 'loop-stop.lua', ENTRY + 'function on_stop() while true do end end')
  const a = await Tenant.start(tenantCfg('t', path, [0], { fuel: 100_000 }), log, 'real')
  let err: any
  try { await a.handOff() } catch (e) { err = e }
  a.retire()
  assert.ok(err)
  assert.is(err.kind, 'fuel')
  assert.match(err.message, /fuel budget exhausted/)
})

test('an on_reload that fails is reported with the new script\'s file and line', async () => {
  const path = writeScript(dir, 'bad-reload.lua', ENTRY + 'function on_reload(s)\n  error("cannot take " .. tostring(s.n))\nend')
  const a = await Tenant.start(tenantCfg('t', writeScript(dir, 'ok.lua', ENTRY + 'function on_stop() return { n = 3 } end')), log, 'real')
  const b = await Tenant.start(tenantCfg('t', path), log, 'real')
  let err: any
  try { await b.takeOver(await a.handOff()) } catch (e) { err = e }
  a.retire(); b.stop()
  assert.ok(err)
  assert.match(err.message, new RegExp(`^${path.replace(/[.*+?^${}()|[\]\\/]/g, '\\$&')}:3: cannot take 3 \\(in on_reload\\)`))
})

// ---- TenantSet

test('reload: the new version takes the next batch; counters and stats go on; generation counts', async () => {
  const { set } = memorySet(log)
  const path = writeScript(dir, 'v.lua', versionScript(1))
  await set.startLane(tenantCfg('web', path, [0]), 0)
  const lane = set.forQueue(0)!
  const xs = (i: number) => (i % 2 ? 'X' : 'A')
  let b = udpBatch(10, xs)
  await lane.run(b.batch, b.count, b.out, b.ns)
  assert.equal([...b.out.verdict.slice(0, 10)], [1, 1, 1, 1, 1, 1, 1, 1, 1, 1]) // version 1 accepts X
  writeFileSync(path + '.new', versionScript(2))
  renameSync(path + '.new', path) // replaced by rename, as an editor or deploy tool does
  const r = await set.reload('web')
  assert.is(r.ok, true, r.error)
  assert.is(r.generation, 2)
  b = udpBatch(10, xs, 11)
  await lane.run(b.batch, b.count, b.out, b.ns)
  assert.equal([...b.out.verdict.slice(0, 10)], [1, 0, 1, 0, 1, 0, 1, 0, 1, 0]) // version 2 drops X
  const s = set.get('web')!.snapshot() as any
  assert.is(s.generation, 2)
  assert.is(s.packets, 20)
  assert.equal(s.verdicts, { accept: 15, drop: 5, repeat: 0, queue: 0 })
  assert.is(s.stats.total, 20, 'the packet count crossed the reload in on_stop/on_reload')
  assert.is(s.stats.generation, 2)
  assert.is(s.stats.v1, 10)
  assert.is(s.stats.v2, 10)
  assert.is(s.stats.x_accepted, 5)
  assert.is(s.stats.x_dropped, 5)
  await set.stopAll()
})

test('reload: a failing new script leaves the old one running and says why', async () => {
  const { set } = memorySet(log)
  const path = writeScript(dir, 'keep.lua', versionScript(1))
  await set.startLane(tenantCfg('keep', path, [3]), 3)
  for (const [bad, why] of [
    ['function on_packet(p)\n  return ACCEPT\nen', /keep\.lua:3: 'end' expected/],
    ['error("top level says no")', /keep\.lua:1: top level says no/],
    ['function on_packet() end\nfunction on_start() local t = {} while true do t[#t+1] = 1 end end', /budget exhausted/],
    ['x = 1', /no global function on_packet/],
  ] as const) {
    writeFileSync(path, bad)
    const r = await set.reload('keep')
    assert.is(r.ok, false)
    assert.match(r.error!, why)
  }
  const missing = await set.reload('keep', { script: join(dir, 'does-not-exist.lua') })
  assert.is(missing.ok, false)
  assert.match(missing.error!, /does-not-exist\.lua: cannot read script: no such file/)
  // still version 1, still counting from where it was
  const b = udpBatch(4, () => 'X')
  await set.forQueue(3)!.run(b.batch, b.count, b.out, b.ns)
  assert.equal([...b.out.verdict.slice(0, 4)], [1, 1, 1, 1])
  const s = set.get('keep')!.snapshot() as any
  assert.is(s.generation, 1)
  assert.equal(s.reloads, { ok: 0, failed: 5 })
  assert.is(s.last_reload.ok, false)
  assert.ok(logs().some((l) => l.level === 'error' && l.tenant === 'keep' && /^reload failed: /.test(l.msg)))
  await set.stopAll()
})

test('reload: a failing on_reload keeps the old version (its on_stop ran), reported', async () => {
  const { set } = memorySet(log)
  const path = writeScript(dir, 'r.lua', versionScript(1))
  await set.startLane(tenantCfg('r', path, [4]), 4)
  const r = await set.reload('r', { script: writeScript(dir, 'r2.lua', ENTRY + 'function on_reload(s) error("no thanks") end') })
  assert.is(r.ok, false)
  assert.match(r.error!, /r2\.lua:2: no thanks \(in on_reload\); the old script keeps running/, r.error)
  const b = udpBatch(2, () => 'X')
  await set.forQueue(4)!.run(b.batch, b.count, b.out, b.ns)
  assert.equal([...b.out.verdict.slice(0, 2)], [1, 1])
  await set.stopAll()
})

test('reload under load: 20 reloads while batches keep coming; every packet meets exactly one version', async () => {
  const { set } = memorySet(log)
  const path = writeScript(dir, 'busy.lua', versionScript(1))
  await set.startLane(tenantCfg('busy', path, [0, 1]), 0)
  await set.startLane(tenantCfg('busy', path, [0, 1]), 1)
  let stop = false
  let sent = 0, dropped = 0, xSent = 0
  const feeders = [0, 1].map(async (q) => {
    const lane = set.forQueue(q)!
    let id = 1
    while (!stop) {
      const b = udpBatch(16, (i) => ((id + i) % 3 === 0 ? 'X' : 'A'), id)
      for (let i = 0; i < 16; i++) if ((id + i) % 3 === 0) xSent++
      id += 16
      await lane.run(b.batch, b.count, b.out, b.ns)
      await lane.afterBatch()
      sent += 16
      for (let k = 0; k < 16; k++) if (b.out.verdict[k] === 0) dropped++
      await new Promise((r) => setTimeout(r, 1))
    }
  })
  const switches: number[] = []
  for (let v = 2; v <= 21; v++) {
    const r = await set.reload('busy', { script: writeScript(dir, `busy-${v}.lua`, versionScript(v)) })
    assert.is(r.ok, true, r.error)
    switches.push(r.switch_ms!)
    await new Promise((res) => setTimeout(res, 5))
  }
  stop = true
  await Promise.all(feeders)
  const s = set.get('busy')!.snapshot() as any
  assert.is(s.generation, 21)
  assert.is(s.packets, sent)
  assert.is(s.verdicts.drop, dropped)
  // each queue has its own VM and its own handoff chain: the totals add up over both
  assert.is(s.stats.total, sent, 'on_stop -> on_reload carried every count across 20 reloads')
  assert.is(s.stats.generation, 21 * 2, 'each of the 2 VMs counted 21 generations')
  let perVersion = 0
  for (let v = 1; v <= 21; v++) perVersion += s.stats[`v${v}`] ?? 0
  assert.is(perVersion, sent)
  assert.is(s.stats.x_dropped + s.stats.x_accepted, xSent)
  assert.is(s.stats.x_dropped, dropped)
  assert.ok(Math.max(...switches) < 2 * 50, `packets waited at most the two time budgets: ${switches}`)
  await set.stopAll()
})

test('reload with new settings from the config: budgets apply, queues may not change', async () => {
  const { set } = memorySet(log)
  const path = writeScript(dir, 'cfg.lua', versionScript(1))
  await set.startLane(tenantCfg('c', path, [5]), 5)
  const r = await set.reload('c', { cfg: tenantCfg('c', path, [5], { fuel: 5000, onFault: 'drop' }) })
  assert.is(r.ok, true)
  assert.is((set.get('c')!.snapshot() as any).budgets.fuel, 5000)
  const bad = await set.reload('c', { cfg: tenantCfg('c', path, [6]) })
  assert.is(bad.ok, false)
  assert.match(bad.error!, /queues of a loaded tenant cannot change/)
  await set.stopAll()
})

test.run()
