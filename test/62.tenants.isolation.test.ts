// Tenants side by side (API.md section 7): one tenant's runaway, memory bomb, crash or rebuild
// never changes another tenant's verdicts and never holds it up. A well-behaved tenant runs over
// a capture alone, then again in the same process beside two hostile tenants running over the
// same capture at the same time; its verdicts must be identical and it must never wait for them.
import { test } from 'uvu'
import * as assert from 'uvu/assert'
import { writeFileSync, readFileSync, openSync } from 'node:fs'
import { join } from 'node:path'
import { Tenant, BatchOutput } from '../src/engine/tenant.js'
import { FAULT_KINDS, MAX_BATCH_BYTES } from '../wasm/vm.js'
import { writeRecord } from '../src/batch-format.js'
import { Logger } from '../src/log.js'
import type { TenantConfig } from '../src/config.js'
import { mixedPackets, makeMixedCapture } from './lib/packets.js'
import { tmp } from './lib/hostile.js'
import { runPsd } from './lib/psd.js'

const PACKETS = 1500
const BATCH = 128

interface Batch { bytes: Uint8Array; count: number; ns: Float64Array }

const batches: Batch[] = []
{
  let buf = new Uint8Array(MAX_BATCH_BYTES), view = new DataView(buf.buffer), pos = 0, count = 0, n = 0
  let ns: number[] = []
  const close = () => { batches.push({ bytes: buf.slice(0, pos), count, ns: Float64Array.from(ns) }); pos = 0; count = 0; ns = [] }
  for (const p of mixedPackets(PACKETS, 7)) {
    n++
    if (count === BATCH) close()
    pos = writeRecord(buf, view, pos, p.data, { id: n, origlen: p.data.length, sec: p.sec, nsec: p.nsec, family: (p.data[0] >> 4) as 4 | 6 })
    ns.push(n)
    count++
  }
  close()
}

const GOOD = `
local seen, flows = 0, {}
function on_packet(pkt)
  seen = seen + 1
  local ip = pkt.ip
  if not ip then return ACCEPT end
  local key = ip.src .. '>' .. ip.dst
  local c = (flows[key] or 0) + 1
  flows[key] = c
  if pkt.udp and pkt.udp.dstport == 53 then return DROP end
  if c % 5 == 0 then return ACCEPT, c end
  if pkt.tcp and pkt.tcp.syn then return ACCEPT, seen % 1000 end
  return ACCEPT
end`

// every kind of trouble, a few times over the capture
const HOSTILE = `
n = 0
function on_packet(pkt)
  n = n + 1
  local k = pkt.id % 300
  if k == 10 then string.find(string.rep("a", 40), string.rep("a?", 40) .. string.rep("a", 40)) end
  if k == 60 then local s = string.rep("x", 2^30) end
  if k == 110 then while true do end end
  if k == 160 then error({}) end
  if k == 210 then local t = {} for i = 1, 1e9 do t[i] = ("x"):rep(1e5) .. i end end
  if k == 260 then local t0 = time.mono() while time.mono() - t0 < 10e9 do pcall(string.rep, "x", 1000) end end
  return DROP, n
end`

// one that is stopped from outside in the middle of a long call (a crash of its worker)
const SLOW = `
function on_packet(pkt)
  if pkt.id % 500 == 3 then for i = 1, 5e7 do end end -- a few hundred ms
  return ACCEPT
end`

function config(name: string, source: string, timeoutMs: number, fuel = 1_000_000): TenantConfig {
  const script = join(tmp.dir, `${name}.lua`)
  writeFileSync(script, source)
  return { name, script, queues: [0], fuel, memory: 16 << 20, timeoutMs, onFault: 'accept', send: false, workers: 1 }
}

const quiet = new Logger({ format: 'json', level: 'error', fd: openSync('/dev/null', 'w') })

interface Run { verdicts: number[]; marks: number[]; faults: (string | null)[]; latency: number[] }

async function runAll(t: Tenant, during?: (i: number) => void): Promise<Run> {
  const out = new BatchOutput(BATCH)
  const r: Run = { verdicts: [], marks: [], faults: [], latency: [] }
  for (let i = 0; i < batches.length; i++) {
    const b = batches[i]
    out.verdict.fill(-99, 0, b.count)
    during?.(i)
    const t0 = performance.now()
    await t.run(b.bytes, b.count, out, b.ns)
    r.latency.push(performance.now() - t0)
    for (let k = 0; k < b.count; k++) {
      r.verdicts.push(out.verdict[k])
      r.marks.push(out.mark[k])
      r.faults.push(FAULT_KINDS[out.fault[k]] ?? null)
    }
  }
  return r
}

const stat = (a: number[]) => { const s = [...a].sort((x, y) => x - y); return { p50: s[s.length >> 1], max: s[s.length - 1] } }

test('a well-behaved tenant gets the same verdicts alone and beside hostile tenants, and never waits for them', async () => {
  const goodCfg = config('good', GOOD, 200)
  const alone = await Tenant.start(goodCfg, quiet, 'capture')
  const a = await runAll(alone)
  await alone.stop()

  const good = await Tenant.start(goodCfg, quiet, 'capture')
  const hostile = await Tenant.start(config('hostile', HOSTILE, 200), quiet, 'capture')
  const slow = await Tenant.start(config('slow', SLOW, 5000, 1e12), quiet, 'capture')
  const started = performance.now()
  // the slow tenant's worker is stopped from outside while it is inside a long call
  let killed = false
  const killSlow = (i: number) => {
    if (i === 3 && !killed) {
      killed = true
      setTimeout(() => { (slow as any).w.worker.terminate() }, 150)
    }
  }
  const [g, h, s] = await Promise.all([runAll(good), runAll(hostile), runAll(slow, killSlow)])
  const hostileMs = performance.now() - started
  await Promise.all([good.stop(), hostile.stop(), slow.stop()])

  // the well-behaved tenant: identical verdicts and marks, no fault
  assert.equal(g.verdicts, a.verdicts)
  assert.equal(g.marks, a.marks)
  assert.ok(g.faults.every((f) => f === null), 'no fault for the good tenant')
  assert.ok(a.verdicts.some((v) => v === 0) && a.verdicts.some((v) => v === 1), 'the script both drops and accepts')

  // the hostile ones: every packet has exactly one result, and every kind of fault happened
  for (const x of [h, s]) {
    assert.is(x.verdicts.length, PACKETS)
    assert.ok(x.verdicts.every((v) => v === 0 || v === 1), 'a verdict for every packet')
  }
  const kinds = new Set(h.faults.filter(Boolean))
  for (const k of ['time', 'memory', 'fuel', 'error']) assert.ok(kinds.has(k), `hostile: a ${k} fault (${[...kinds]})`)
  // six kinds of trouble, five times each: one fault each (a loop may meet the clock before its
  // fuel on a loaded machine, so only the pattern bombs and the busy waits are sure to be "time")
  assert.is(h.faults.filter(Boolean).length, 30)
  assert.ok(h.faults.filter((f) => f === 'time').length >= 10)
  assert.ok(s.faults.includes('crash'), `the slow tenant's worker crash is a fault of one packet (${s.faults.filter(Boolean)})`)
  assert.is(s.faults.filter(Boolean).length, 1, JSON.stringify(s.faults.map((f, i) => f && [i + 1, f]).filter(Boolean)))
  // packets not hit by a fault keep the hostile script's verdict
  assert.is(h.verdicts.filter((v, i) => h.faults[i] === null && v !== 0).length, 0)

  // it never waited for the others: no batch of the good tenant took anywhere near its budget,
  // while the hostile tenants spent seconds on their faults and rebuilds
  const gl = stat(g.latency), al = stat(a.latency)
  process.stdout.write(`\n  good alone: batch p50 ${al.p50.toFixed(2)} ms, max ${al.max.toFixed(1)} ms; beside the hostile ones: p50 ${gl.p50.toFixed(2)} ms, max ${gl.max.toFixed(1)} ms; hostile run ${hostileMs.toFixed(0)} ms, ${h.faults.filter(Boolean).length} faults\n`)
  assert.ok(gl.max < goodCfg.timeoutMs, `good tenant's slowest batch: ${gl.max.toFixed(1)} ms`)
  assert.ok(g.latency.reduce((x, y) => x + y, 0) < hostileMs, 'the good tenant finished long before the hostile ones')
})

test('--config with --pcap: each tenant over the whole capture; the good one\'s verdicts do not depend on the other', () => {
  const pcap = join(tmp.dir, 'mixed.pcap')
  makeMixedCapture(pcap, 800, 7)
  const good = join(tmp.dir, 'good.lua'), hostile = join(tmp.dir, 'hostile.lua')
  writeFileSync(good, GOOD)
  writeFileSync(hostile, HOSTILE)
  const conf = (tenants: object[]) => { const p = join(tmp.dir, `c${tenants.length}.json`); writeFileSync(p, JSON.stringify({ tenants })); return p }
  const verdicts = (name: string) => readFileSync(join(tmp.dir, `v-${name}.jsonl`), 'utf8')
  let r = runPsd({ pcap, dir: tmp.dir, args: ['--config', conf([{ name: 'good', script: good }]), '--verdicts', join(tmp.dir, 'v-{tenant}.jsonl')] })
  assert.is(r.status, 0, r.stderr)
  const alone = verdicts('good')
  r = runPsd({ pcap, dir: tmp.dir, args: ['--config', conf([{ name: 'hostile', script: hostile, timeout_ms: 200 }, { name: 'good', script: good }]), '--verdicts', join(tmp.dir, 'v-{tenant}.jsonl')] })
  assert.is(r.status, 0, r.stderr)
  assert.is(verdicts('good'), alone)
  const hv = verdicts('hostile').split('\n').filter(Boolean).map((l) => JSON.parse(l))
  assert.is(hv.length, 800)
  const faults = new Set(hv.map((v) => v.fault).filter(Boolean))
  for (const k of ['time', 'memory', 'fuel', 'error']) assert.ok(faults.has(k), k)
  assert.ok(r.logs.some((l) => l.tenant === 'hostile' && /globals were lost/.test(l.msg)), 'the rebuild is logged')
})

test.run()
