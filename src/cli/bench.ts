// `psd bench --script FILE [--pcap IN] [--json]`: what a script costs per packet.
//
// The capture is read into memory and cut into the same batches the engine uses. Two tinybench
// tasks each make one whole pass over the packets: the script through its VM, and the same loop
// with no VM (the baseline: building the batch and reading the results back), in the same run.
// Per-packet percentiles come from a further pass that calls the VM with one packet at a time and
// times each call, so they include the fixed cost of a call (a batch shares it between packets).
import { Bench } from 'tinybench'
import { join, dirname } from 'node:path'
import { fileURLToPath } from 'node:url'
import { openCapture } from '../pcap/reader.js'
import { writeRecord, HDR } from '../batch-format.js'
import { LuaVM, BatchOutput, MAX_BATCH_BYTES, FAULT_KINDS } from '../../wasm/vm.js'
import { readScript } from '../engine/tenant.js'
import { tenantFromOptions, UsageError, type RunValues } from './options.js'

const BATCH = 128
const here = dirname(fileURLToPath(import.meta.url))
export const DEFAULT_CAPTURE = join(here, '..', '..', '..', 'test', 'fixtures', 'sample.pcap')

interface Batch { bytes: Uint8Array; count: number }

/** Reads every IP packet of a capture into batches of records (src/batch-format.ts). */
export function loadBatches(path: string, size = BATCH): { batches: Batch[]; packets: number; singles: Batch[] } {
  const cap = openCapture(path)
  const batches: Batch[] = [], singles: Batch[] = []
  let buf = new Uint8Array(MAX_BATCH_BYTES), view = new DataView(buf.buffer), pos = 0, count = 0, packets = 0
  const close = () => {
    if (count) batches.push({ bytes: buf.slice(0, pos), count })
    pos = 0; count = 0
  }
  try {
    for (let r = cap.next(); r !== null; r = cap.next()) {
      if (!r.data || (r.family !== 4 && r.family !== 6)) continue
      const meta = { id: r.n, origlen: r.origlen, sec: r.sec, nsec: r.nsec, family: r.family as 4 | 6 }
      if (count === size || pos + HDR + r.data.length + 4 > buf.length) close()
      pos = writeRecord(buf, view, pos, r.data, meta)
      count++
      packets++
      const one = new Uint8Array(HDR + r.data.length + 4)
      const end = writeRecord(one, new DataView(one.buffer), 0, r.data, meta)
      singles.push({ bytes: one.subarray(0, end), count: 1 })
    }
    close()
  } finally {
    cap.close()
  }
  return { batches, packets, singles }
}

function percentile(sorted: Float64Array, p: number): number {
  if (!sorted.length) return 0
  return sorted[Math.min(sorted.length - 1, Math.floor((p / 100) * sorted.length))]
}

export async function runBench(values: RunValues): Promise<number> {
  const cfg = tenantFromOptions(values)
  const pcap = values.pcap ?? DEFAULT_CAPTURE
  const timeMs = values.time !== undefined ? Number(values.time) : 2000
  if (!Number.isFinite(timeMs) || timeMs <= 0) throw new UsageError('--time: expected milliseconds per task, e.g. 2000')
  const { batches, packets, singles } = loadBatches(pcap)
  if (packets === 0) throw new UsageError(`${pcap}: no IPv4 or IPv6 packets to run`)
  const stats = new Map<string, number>()
  const vm = await LuaVM.create({
    scriptPath: cfg.script, source: readScript(cfg.script), entry: cfg.entry,
    fuel: cfg.fuel, memory: cfg.memory, timeoutMs: cfg.timeoutMs,
    host: { clock: 'capture', log: () => {}, stat: (op, n, v) => stats.set(n, op ? v : (stats.get(n) ?? 0) + v) },
  })
  const out = new BatchOutput(BATCH)

  // one measured pass first: fuel per packet, faults, memory after a full pass
  vm.measureFuel = true
  let fuel = 0, faults = 0
  const faultKinds: Record<string, number> = {}
  for (const b of batches) {
    faults += vm.runBatch(b.bytes, b.count, out)
    for (let k = 0; k < b.count; k++) {
      fuel += out.fuel[k]
      if (out.fault[k]) { const f = FAULT_KINDS[out.fault[k]]!; faultKinds[f] = (faultKinds[f] ?? 0) + 1 }
    }
  }
  vm.measureFuel = false
  const memory = vm.memoryUsed

  let sink = 0
  const readBack = (count: number) => { for (let k = 0; k < count; k++) sink += out.verdict[k] + out.fault[k] }
  const bench = new Bench({ name: 'psd bench', time: timeMs, warmup: true })
  bench.add('baseline (no VM)', () => {
    for (const b of batches) {
      // what the engine does around the VM call: the batch into place, the results read back
      out.verdict.fill(1, 0, b.count); out.mark.fill(-1, 0, b.count); out.fault.fill(0, 0, b.count)
      sink += b.bytes[b.bytes.length - 1]
      readBack(b.count)
    }
  })
  bench.add('script', () => {
    for (const b of batches) { vm.runBatch(b.bytes, b.count, out); readBack(b.count) }
  })
  await bench.run()

  // per-packet latency: one packet per call, each timed
  const lat = new Float64Array(singles.length * Math.max(1, Math.ceil(20000 / singles.length)))
  for (let i = 0; i < lat.length; i++) {
    const s = singles[i % singles.length]
    const t0 = process.hrtime.bigint()
    vm.runBatch(s.bytes, 1, out)
    lat[i] = Number(process.hrtime.bigint() - t0)
  }
  lat.sort()
  vm.close()

  const perPass = (name: string) => (bench.tasks.find((t) => t.name === name)!.result as any).latency.mean as number
  const scriptMs = perPass('script'), baseMs = perPass('baseline (no VM)')
  const result = {
    script: cfg.script,
    capture: pcap,
    packets,
    pps: Math.round(packets / (scriptMs / 1000)),
    ns_per_packet: {
      mean: Math.round((scriptMs * 1e6) / packets),
      p50: Math.round(percentile(lat, 50)),
      p99: Math.round(percentile(lat, 99)),
    },
    fuel_per_packet: Math.round(fuel / packets),
    vm_memory_bytes: memory,
    faults,
    fault_kinds: faultKinds,
    baseline: { pps: Math.round(packets / (baseMs / 1000)), ns_per_packet: { mean: Math.round((baseMs * 1e6) / packets) } },
    batch: BATCH,
    budgets: { fuel: cfg.fuel, memory: cfg.memory, timeout_ms: cfg.timeoutMs },
  }
  if (sink === -1) process.stderr.write('') // keeps the read-back from being optimised away
  if (values.json) {
    process.stdout.write(JSON.stringify(result) + '\n')
  } else {
    const f = (n: number) => n.toLocaleString('en-US')
    process.stdout.write(
      `script      ${result.script}\n` +
      `capture     ${pcap} (${f(packets)} IP packets, batches of ${BATCH})\n` +
      `throughput  ${f(result.pps)} packets/s   (baseline with no VM: ${f(result.baseline.pps)} packets/s)\n` +
      `per packet  mean ${f(result.ns_per_packet.mean)} ns in batches; one packet per call: p50 ${f(result.ns_per_packet.p50)} ns, p99 ${f(result.ns_per_packet.p99)} ns\n` +
      `fuel        ${f(result.fuel_per_packet)} VM instructions per packet (budget ${f(cfg.fuel)})\n` +
      `memory      ${f(memory)} bytes held by the VM after a pass (budget ${f(cfg.memory)})\n` +
      (faults ? `faults      ${faults} in one pass: ${JSON.stringify(faultKinds)}\n` : ''),
    )
  }
  return 0
}
