// Packets/s through the offline engine. Every task is one whole pass of the offline loop (read
// capture, build batches, run, verdict accounting) over the same capture; the baseline is that
// same loop with no VM, in the same run. Each script runs twice: inline (the VM in this thread:
// one core) and in a worker thread (as `node psd.js --pcap` runs it).
//
//   npm run build && node dist/bench/engine.bench.js [--packets 100000] [--json]
import { Bench } from 'tinybench'
import { existsSync, writeFileSync } from 'node:fs'
import { join } from 'node:path'
import { tmpdir } from 'node:os'
import { parseArgs } from 'node:util'
import { makeMixedCapture } from '../test/lib/packets.js'
import { runCapture, type BatchRunner } from '../src/offline/run.js'
import { Tenant, BatchOutput } from '../src/engine/tenant.js'
import { Logger } from '../src/log.js'
import { DEFAULTS, type TenantConfig } from '../src/config.js'

const { values } = parseArgs({ options: { packets: { type: 'string', default: '100000' }, json: { type: 'boolean' } } })
const N = Number(values.packets)
const pcap = join(tmpdir(), `psd-bench-mixed-${N}.pcap`)
if (!existsSync(pcap)) makeMixedCapture(pcap, N, 1)

const quiet = new Logger({ format: 'json', level: 'error' })

/** The same loop, no VM: every packet accepted unchanged. */
class NoVm implements BatchRunner {
  readonly stats = new Map<string, number>()
  async run(_b: Uint8Array, count: number, out: BatchOutput): Promise<void> {
    out.verdict.fill(1, 0, count); out.fault.fill(0, 0, count); out.mark.fill(-1, 0, count)
    for (let k = 0; k < count; k++) out.data[k] = null
  }
  stop(): void {}
}

const scripts: Record<string, string> = {
  'accept-all': 'function on_packet(pkt) return ACCEPT end',
  'read header bytes': `
-- drop UDP to port 9999 and TTL 1, reading raw header bytes
function on_packet(pkt)
  local v = pkt:u8(0) >> 4
  if v == 4 then
    if pkt:u8(8) <= 1 then return DROP end
    if pkt:u8(9) == 17 and pkt:u16((pkt:u8(0) & 15) * 4 + 2) == 9999 then return DROP end
  end
  return ACCEPT
end`,
}

async function tenantFor(name: string, source: string, inline: boolean): Promise<Tenant> {
  const dir = tmpdir()
  const path = join(dir, `psd-bench-${name.replace(/\W+/g, '-')}.lua`)
  writeFileSync(path, source)
  const cfg: TenantConfig = { name, script: path, queues: [0], fuel: DEFAULTS.fuel, memory: DEFAULTS.memory, timeoutMs: 1000, onFault: 'accept', send: false, workers: 1 }
  return Tenant.start(cfg, quiet, 'capture', {}, { inline })
}

const opts = { tenants: [], pcap, outputs: {}, log: quiet, progressMs: 0 }
const bench = new Bench({ name: 'offline engine', time: 2000, iterations: 5, warmup: true })
bench.add('baseline: offline loop, no VM', async () => { await runCapture(new NoVm(), opts, {}, quiet) })
// inline: the VM in this thread (one core, no watchdog); worker: the VM in its own worker thread
// with the watchdog, as `node psd.js --pcap` runs it.
for (const inline of [true, false]) {
  for (const [name, src] of Object.entries(scripts)) {
    const t = await tenantFor(name, src, inline)
    bench.add(`${name} (${inline ? 'inline' : 'worker'})`, async () => {
      await runCapture({ run: (b, c, o, n) => t.run(b, c, o, n), stop() {}, stats: t.stats } as BatchRunner, opts, {}, quiet)
    })
  }
}
await bench.run()

const rows = bench.tasks.map((task) => {
  const r: any = task.result
  const ms = r.latency.mean
  return { task: task.name, pps: Math.round(N / (ms / 1000)), ns_per_packet: Math.round((ms * 1e6) / N), passes: r.latency.samplesCount ?? r.latency.samples?.length }
})
if (values.json) console.log(JSON.stringify({ packets: N, rows }))
else {
  console.log(`offline engine, ${N} packets of a mixed capture (${pcap}), one pass per sample`)
  console.table(rows)
}
