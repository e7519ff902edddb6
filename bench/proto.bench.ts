// Packets/s of protocol-object scripts (issue 4): a script that reads ip.src, tcp.dstport and
// http.host on every packet of a mixed capture, against the accept-all script as the baseline,
// in the same run, on one core. Two measurements:
//   - offline engine: one whole pass of psd's offline loop (read the pcap, batch, run the VM,
//     verdict accounting) per sample, as `node psd.js --pcap` does;
//   - VM only: the prepared batches through LuaVM.runBatch (what protocol decoding itself costs).
//
//   npm run build && node dist/bench/proto.bench.js [--packets 100000] [--json]
import { existsSync, writeFileSync } from 'node:fs'
import { join } from 'node:path'
import { tmpdir } from 'node:os'
import { parseArgs } from 'node:util'
import { makeMixedCapture, mixedPackets } from '../test/lib/packets.js'
import { runCapture } from '../src/offline/run.js'
import { Tenant, BatchOutput } from '../src/engine/tenant.js'
import { LuaVM, MAX_BATCH_BYTES } from '../wasm/vm.js'
import { writeRecord, HDR } from '../src/batch-format.js'
import { Logger } from '../src/log.js'
import { DEFAULTS, type TenantConfig } from '../src/config.js'

const { values } = parseArgs({ options: { packets: { type: 'string', default: '100000' }, json: { type: 'boolean' }, time: { type: 'string', default: '2000' } } })
const N = Number(values.packets)
const pcap = join(tmpdir(), `psd-bench-mixed-${N}.pcap`)
if (!existsSync(pcap)) makeMixedCapture(pcap, N, 1)

export const SCRIPTS: Record<string, string> = {
  'accept-all (baseline)': 'function on_packet(pkt) return ACCEPT end',
  'ip.src + tcp.dstport + http.host': `
-- reads three fields of three layers on every packet; drops one host
local n = 0
function on_packet(pkt)
  local ip = pkt.ip
  if not ip then return ACCEPT end
  local src = ip.src
  local tcp = pkt.tcp
  if tcp and tcp.dstport == 22 then n = n + 1 end
  local http = pkt.http
  if http and http.host == 'blocked.example' then return DROP end
  return ACCEPT
end`,
  'dns.qname (UDP) + tls.sni': `
function on_packet(pkt)
  local d = pkt.dns
  if d and d.qname == 'ads.example.net' then return DROP end
  local t = pkt.tls
  if t and t.sni == 'blocked.example' then return DROP end
  return ACCEPT
end`,
}

const quiet = new Logger({ format: 'json', level: 'error' })

async function tenantFor(name: string, source: string): Promise<Tenant> {
  const path = join(tmpdir(), `psd-bench-proto-${name.replace(/\W+/g, '-')}.lua`)
  writeFileSync(path, source)
  const cfg: TenantConfig = { name, script: path, queues: [0], fuel: DEFAULTS.fuel, memory: DEFAULTS.memory, timeoutMs: 1000, onFault: 'accept', send: false, workers: 1 }
  // inline: the VM on this thread (one core), as `node psd.js bench` runs it
  return Tenant.start(cfg, quiet, 'capture', {}, { inline: true })
}

// Batches of 128 records, as the offline engine builds them.
function batches(): { data: Uint8Array; count: number }[] {
  const out: { data: Uint8Array; count: number }[] = []
  let buf = new Uint8Array(MAX_BATCH_BYTES), view = new DataView(buf.buffer), pos = 0, count = 0, id = 1
  for (const p of mixedPackets(N, 1)) {
    if (count === 128 || pos + HDR + p.data.length + 4 > buf.length) {
      out.push({ data: buf.slice(0, pos), count })
      buf = new Uint8Array(MAX_BATCH_BYTES); view = new DataView(buf.buffer); pos = 0; count = 0
    }
    pos = writeRecord(buf, view, pos, p.data, { id: id++, origlen: p.data.length, sec: p.sec, nsec: p.nsec, family: p.data[0] >> 4 === 6 ? 6 : 4 })
    count++
  }
  if (count) out.push({ data: buf.slice(0, pos), count })
  return out
}

// Every task is one whole pass over the capture; passes of all tasks alternate so that they
// share the machine's conditions. Two clocks: wall time, and this process's CPU time (user +
// system), which is what "packets/s on one core" means when the machine is shared with other
// work (everything here runs on this one thread).
interface Task { name: string; pass: () => Promise<void> | void; wall: number[]; cpu: number[] }
const tasks: Task[] = []
const opts = { tenants: [], pcap, outputs: {}, log: quiet, progressMs: 0 }
const prepared = batches()
const out = new BatchOutput(128)
for (const [name, src] of Object.entries(SCRIPTS)) {
  const t = await tenantFor(name, src)
  const runner = { run: (b: Uint8Array, c: number, o: BatchOutput, n: ArrayLike<number>) => t.run(b, c, o, n), stop() {}, stats: t.stats }
  tasks.push({ name: `engine: ${name}`, pass: async () => { await runCapture(runner, opts, {}, quiet) }, wall: [], cpu: [] })
}
for (const [name, src] of Object.entries(SCRIPTS)) {
  const vm = await LuaVM.create({ scriptPath: name, source: src, fuel: DEFAULTS.fuel, memory: DEFAULTS.memory, timeoutMs: 1000,
    host: { log() {}, stat() {}, clock: 'capture' } })
  tasks.push({ name: `vm: ${name}`, pass: () => { for (const b of prepared) vm.runBatch(b.data, b.count, out) }, wall: [], cpu: [] })
}
const passes = Math.max(3, Number(values.time) > 0 ? Math.round(Number(values.time) / 300) : 5)
for (const t of tasks) await t.pass() // warm-up
for (let i = 0; i < passes; i++) {
  for (const t of tasks) {
    const c0 = process.cpuUsage(), w0 = performance.now()
    await t.pass()
    const w = performance.now() - w0, c = process.cpuUsage(c0)
    t.wall.push(w); t.cpu.push((c.user + c.system) / 1000)
  }
}
const median = (a: number[]) => [...a].sort((x, y) => x - y)[Math.floor(a.length / 2)]
const rows = tasks.map((t) => ({
  task: t.name,
  pps_cpu: Math.round(N / (median(t.cpu) / 1000)),
  ns_per_packet_cpu: Math.round((median(t.cpu) * 1e6) / N),
  pps_wall: Math.round(N / (median(t.wall) / 1000)),
}))
if (values.json) console.log(JSON.stringify({ packets: N, passes, rows }))
else {
  console.log(`protocol objects, ${N} packets of a mixed capture (${pcap}), median of ${passes} passes per task, one thread`)
  console.table(rows)
}
