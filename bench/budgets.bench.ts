// What the budgets cost: packets/s of the same script over the same batches with and without
// fuel and memory accounting, in the same run, plus what the worker thread (and its watchdog)
// adds over running the VM in this thread.
//
//   npm run build && node dist/bench/budgets.bench.js [--packets 20000] [--rounds 5] [--time 1000] [--json]
//
// Tasks, per script (every one runs LuaVM.runBatch or Tenant.run over the very same batches):
//   none         VmConfig.metering off: no fuel hook, Lua's own allocator (the baseline)
//   fuel         the fuel hook (instruction count, clock checks) only
//   memory       the counting allocator (byte cap on every allocation) only
//   budgets      both: the VM as psd runs it
//   worker       both, the VM in its own worker thread behind the watchdog (as `psd --pcap` runs it)
// The machine is shared and noisy, so the whole set of tasks runs `rounds` times, interleaved,
// and the table gives medians; the ratios are medians of per-round ratios.
import { Bench } from 'tinybench'
import { writeFileSync, openSync } from 'node:fs'
import { join } from 'node:path'
import { tmpdir } from 'node:os'
import { parseArgs } from 'node:util'
import { mixedPackets } from '../test/lib/packets.js'
import { writeRecord } from '../src/batch-format.js'
import { LuaVM, BatchOutput, MAX_BATCH_BYTES } from '../wasm/vm.js'
import { Tenant } from '../src/engine/tenant.js'
import { Logger } from '../src/log.js'
import { DEFAULTS, type TenantConfig } from '../src/config.js'
import { SCRIPTS } from './budgets-scripts.js'

const { values } = parseArgs({ options: {
  packets: { type: 'string', default: '20000' }, rounds: { type: 'string', default: '5' },
  time: { type: 'string', default: '1000' }, json: { type: 'boolean' }, scripts: { type: 'string' },
} })
const N = Number(values.packets), ROUNDS = Number(values.rounds), TIME = Number(values.time)

interface Batch { bytes: Uint8Array; count: number; ns: Float64Array }
const batches: Batch[] = []
{
  const buf = new Uint8Array(MAX_BATCH_BYTES), view = new DataView(buf.buffer)
  let pos = 0, count = 0, n = 0, ns: number[] = []
  const close = () => { batches.push({ bytes: buf.slice(0, pos), count, ns: Float64Array.from(ns) }); pos = 0; count = 0; ns = [] }
  for (const p of mixedPackets(N, 1)) {
    if (count === 128) close()
    n++
    pos = writeRecord(buf, view, pos, p.data, { id: n, origlen: p.data.length, sec: p.sec, nsec: p.nsec, family: (p.data[0] >> 4) as 4 | 6 })
    ns.push(n)
    count++
  }
  close()
}

const quiet = new Logger({ format: 'json', level: 'error', fd: openSync('/dev/null', 'w') })
const host = { clock: 'capture' as const, log: () => {}, stat: () => {} }
const MODES = ['none', 'fuel', 'memory', 'budgets', 'worker'] as const
type Mode = typeof MODES[number]

async function runnerFor(name: string, source: string, mode: Mode): Promise<{ pass(): Promise<void>; close(): Promise<void> }> {
  if (mode === 'worker') {
    const script = join(tmpdir(), `psd-budgets-${name.replace(/\W+/g, '-')}.lua`)
    writeFileSync(script, source)
    const cfg: TenantConfig = { name, script, queues: [0], fuel: DEFAULTS.fuel, memory: DEFAULTS.memory, timeoutMs: DEFAULTS.timeoutMs, onFault: 'accept', send: false, workers: 1 }
    const t = await Tenant.start(cfg, quiet, 'capture')
    const out = new BatchOutput(128)
    return {
      async pass() { for (const b of batches) await t.run(b.bytes, b.count, out, b.ns) },
      async close() { await t.stop() },
    }
  }
  const vm = await LuaVM.create({
    scriptPath: `${name}.lua`, source, fuel: DEFAULTS.fuel, memory: DEFAULTS.memory, timeoutMs: DEFAULTS.timeoutMs, host,
    metering: { fuel: mode === 'fuel' || mode === 'budgets', memory: mode === 'memory' || mode === 'budgets' },
  })
  const out = new BatchOutput(128)
  return {
    async pass() { for (const b of batches) vm.runBatch(b.bytes, b.count, out) },
    async close() { vm.close() },
  }
}

const names = values.scripts ? values.scripts.split(',') : Object.keys(SCRIPTS)
const runners = new Map<string, { pass(): Promise<void>; close(): Promise<void> }>()
for (const name of names) for (const mode of MODES) runners.set(`${name}|${mode}`, await runnerFor(name, SCRIPTS[name], mode))

// per task: ms per pass, one value per round
const samples = new Map<string, number[]>()
for (let round = 0; round < ROUNDS; round++) {
  const bench = new Bench({ name: `budgets round ${round + 1}`, time: TIME, warmup: round === 0 })
  for (const [key, r] of runners) bench.add(key, () => r.pass())
  await bench.run()
  for (const task of bench.tasks) {
    const ms = (task.result as any).latency.mean as number
    if (!samples.has(task.name)) samples.set(task.name, [])
    samples.get(task.name)!.push(ms)
  }
}
for (const r of runners.values()) await r.close()

const median = (a: number[]) => { const s = [...a].sort((x, y) => x - y); return s.length % 2 ? s[s.length >> 1] : (s[s.length / 2 - 1] + s[s.length / 2]) / 2 }
const rows = names.map((name) => {
  const ms = (m: Mode) => samples.get(`${name}|${m}`)!
  const ratio = (m: Mode) => median(ms(m).map((v, i) => v / ms('none')[i]))
  const pps = (m: Mode) => Math.round(N / (median(ms(m)) / 1000))
  return {
    script: name,
    'pps none': pps('none'), 'pps fuel': pps('fuel'), 'pps memory': pps('memory'), 'pps budgets': pps('budgets'), 'pps worker': pps('worker'),
    'fuel cost': `${((ratio('fuel') - 1) * 100).toFixed(0)} %`,
    'memory cost': `${((ratio('memory') - 1) * 100).toFixed(0)} %`,
    'budgets cost': `${((ratio('budgets') - 1) * 100).toFixed(0)} %`,
    'worker vs inline': `${((median(ms('worker').map((v, i) => v / ms('budgets')[i])) - 1) * 100).toFixed(0)} %`,
  }
})
if (values.json) console.log(JSON.stringify({ packets: N, rounds: ROUNDS, rows, samples: Object.fromEntries(samples) }))
else {
  console.log(`budgets: ${N} packets of a mixed capture in batches of 128, ${ROUNDS} rounds of ${TIME} ms per task; medians`)
  console.table(rows)
}
