// The memory of N idle tenants in one process: each has its own VM, WebAssembly memory and
// worker thread (as psd runs them), has loaded a script and run one batch of packets, and then
// waits. Target: 100 tenants in at most 1 GiB of RSS.
//
//   npm run build && node dist/bench/budgets-idle.bench.js [--tenants 100] [--json]
//
// RSS is the whole process's (all threads), read from /proc/self/status after the tenants
// settled, against the same process before the first tenant started.
import { readFileSync, writeFileSync, openSync } from 'node:fs'
import { join } from 'node:path'
import { tmpdir } from 'node:os'
import { parseArgs } from 'node:util'
import { Tenant, BatchOutput } from '../src/engine/tenant.js'
import { Logger } from '../src/log.js'
import { DEFAULTS, type TenantConfig } from '../src/config.js'
import { mixedPackets } from '../test/lib/packets.js'
import { writeRecord } from '../src/batch-format.js'
import { MAX_BATCH_BYTES } from '../wasm/vm.js'
import { SCRIPTS } from './budgets-scripts.js'

const { values } = parseArgs({ options: { tenants: { type: 'string', default: '100' }, json: { type: 'boolean' }, inline: { type: 'boolean' } } })
const N = Number(values.tenants)

function status(): { rss: number; hwm: number; threads: number } {
  const s = readFileSync('/proc/self/status', 'utf8')
  const kb = (k: string) => Number(new RegExp(`${k}:\\s+(\\d+)`).exec(s)![1])
  return { rss: kb('VmRSS') / 1024, hwm: kb('VmHWM') / 1024, threads: kb('Threads') }
}

const quiet = new Logger({ format: 'json', level: 'error', fd: openSync('/dev/null', 'w') })
const script = join(tmpdir(), 'psd-idle-tenant.lua')
writeFileSync(script, SCRIPTS['protocol fields'])

// one batch of 128 packets, run once by each tenant
const buf = new Uint8Array(MAX_BATCH_BYTES), view = new DataView(buf.buffer)
let pos = 0, n = 0
for (const p of mixedPackets(128, 1)) pos = writeRecord(buf, view, pos, p.data, { id: ++n, origlen: p.data.length, sec: p.sec, nsec: p.nsec, family: (p.data[0] >> 4) as 4 | 6 })
const batch = buf.slice(0, pos), ns = Float64Array.from({ length: n }, (_, i) => i + 1)

const before = status()
const t0 = performance.now()
const tenants: Tenant[] = []
for (let i = 0; i < N; i++) {
  const cfg: TenantConfig = { name: `t${i}`, script, queues: [i], fuel: DEFAULTS.fuel, memory: DEFAULTS.memory, timeoutMs: DEFAULTS.timeoutMs, onFault: 'accept', send: false, workers: 1 }
  const t = await Tenant.start(cfg, quiet, 'real', {}, { inline: values.inline })
  await t.run(batch, n, new BatchOutput(128), ns)
  tenants.push(t)
}
const startMs = (performance.now() - t0) / N
await new Promise((r) => setTimeout(r, 3000)) // let the threads settle (GC, compilation)
const after = status()
const vmBytes = tenants.reduce((a, t) => a + t.memoryUsed, 0) / N
for (const t of tenants) await t.stop()

const result = {
  tenants: N, mode: values.inline ? 'inline' : 'worker',
  rss_before_mib: Math.round(before.rss), rss_after_mib: Math.round(after.rss),
  rss_per_tenant_mib: +((after.rss - before.rss) / N).toFixed(2),
  threads: after.threads, start_ms_per_tenant: +startMs.toFixed(1), lua_heap_per_tenant_kib: Math.round(vmBytes / 1024),
  target_met: after.rss <= 1024,
}
if (values.json) console.log(JSON.stringify(result))
else console.table([result])
