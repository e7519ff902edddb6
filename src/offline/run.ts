// The offline engine: every record of a pcap/pcapng file, in order, through each tenant's
// script, with the verdict log, the accepted/dropped pcaps and the end-of-run summary of
// API.md section 9. Runs without root and without the native addon.
import { openCapture, CaptureError, type CaptureRecord } from '../pcap/reader.js'
import { PcapWriter } from '../pcap/writer.js'
import { LineWriter } from '../sinks/line-writer.js'
import { writeRecord, HDR } from '../batch-format.js'
import { fixup } from '../packet/checksum.js'
import { Tenant, BatchOutput, LoadError, FAULT_KINDS } from '../engine/tenant.js'
import { MAX_BATCH_BYTES } from '../../wasm/vm.js'
import type { TenantConfig } from '../config.js'
import { PcapSender } from './write-sent.js'
import type { Logger } from '../log.js'

export interface OfflineOutputs {
  accepted?: string
  dropped?: string
  sent?: string
  verdicts?: string
}

export interface OfflineOptions {
  tenants: TenantConfig[]
  pcap: string
  outputs: OfflineOutputs
  log: Logger
  /** Packets per batch handed to the VM. */
  batchSize?: number
  /** Milliseconds between progress lines (0: none). */
  progressMs?: number
}

export interface Summary {
  packets: number
  accepted: number
  dropped: number
  modified: number
  faults: number
  skipped: number
}

const BATCH = 128
const VERDICT_NAMES = ['drop', 'accept', 'accept', 'queue', 'repeat']

/** Substitutes {tenant}; with several tenants every output name must contain it. */
export function outputPath(template: string | undefined, tenant: string, several: boolean, what: string): string | undefined {
  if (template === undefined) return undefined
  if (several && !template.includes('{tenant}')) {
    throw new LoadError(`${what} ${template}: with several tenants the file name must contain {tenant}`)
  }
  return template.replaceAll('{tenant}', tenant)
}

function verdictName(code: number): string {
  if ((code & 0xffff) === 3) return 'queue'
  return VERDICT_NAMES[code] ?? 'accept'
}

function sameBytes(a: Uint8Array, b: Uint8Array): boolean {
  if (a.length !== b.length) return false
  for (let i = 0; i < a.length; i++) if (a[i] !== b[i]) return false
  return true
}

/** Runs every tenant over the capture; returns the process exit status (0, or 1 on bad input). */
export async function runOffline(opts: OfflineOptions): Promise<number> {
  const several = opts.tenants.length > 1
  let status = 0
  for (const cfg of opts.tenants) {
    const log = opts.log.child({ tenant: cfg.name })
    const outs = {
      accepted: outputPath(opts.outputs.accepted, cfg.name, several, '--write-accepted'),
      dropped: outputPath(opts.outputs.dropped, cfg.name, several, '--write-dropped'),
      verdicts: outputPath(opts.outputs.verdicts, cfg.name, several, '--verdicts'),
      sent: outputPath(opts.outputs.sent, cfg.name, several, '--write-sent'),
    }
    const s = await runTenant(cfg, opts, outs, log)
    if (s !== 0) status = s
  }
  return status
}

/** What the offline loop needs of a tenant: run a batch, stop, and the script's stats. */
export interface BatchRunner {
  run(batch: Uint8Array, count: number, out: BatchOutput, ns: ArrayLike<number>): Promise<void>
  /** on_stop; a tenant whose VM runs in a worker answers with a promise */
  stop(): void | Promise<void>
  readonly stats: Map<string, number>
  /** After a batch's verdicts are written: deferred calls (script services). */
  afterBatch?(): Promise<void>
}

async function runTenant(cfg: TenantConfig, opts: OfflineOptions, outs: { accepted?: string; dropped?: string; verdicts?: string; sent?: string }, log: Logger): Promise<number> {
  if (outs.sent !== undefined && !cfg.send) log.warn('--write-sent: this tenant may not send (no --allow-send, or "send": false), so the file stays empty')
  // net.send offline writes to --write-sent (never the wire); time starts at the capture's first timestamp
  const tenant = await Tenant.start(cfg, opts.log, 'capture', { sender: outs.sent !== undefined ? new PcapSender(outs.sent) : undefined, clockStart: firstTimestamp(opts.pcap) })
  log.info('script loaded', { script: cfg.script, pcap: opts.pcap })
  return runCapture(tenant, opts, outs, log)
}

/** The capture's first record's timestamp in ns (0 when it has none or cannot be read). */
function firstTimestamp(path: string): bigint {
  try {
    const c = openCapture(path)
    try {
      const r = c.next()
      return r ? BigInt(r.sec) * 1_000_000_000n + BigInt(r.nsec) : 0n
    } finally { c.close() }
  } catch { return 0n }
}

/**
 * The offline loop over one capture for one runner. Exported so benchmarks can time the very
 * same loop with a runner that has no VM as their baseline.
 */
export async function runCapture(tenant: BatchRunner, opts: OfflineOptions, outs: { accepted?: string; dropped?: string; verdicts?: string }, log: Logger): Promise<number> {
  const capture = openCapture(opts.pcap)
  const acceptedW = outs.accepted ? new PcapWriter(outs.accepted) : null
  const droppedW = outs.dropped ? new PcapWriter(outs.dropped) : null
  const verdictW = outs.verdicts ? new LineWriter(outs.verdicts) : null

  const sum: Summary = { packets: 0, accepted: 0, dropped: 0, modified: 0, faults: 0, skipped: 0 }
  const batchSize = opts.batchSize ?? BATCH
  const batch = new Uint8Array(MAX_BATCH_BYTES)
  const view = new DataView(batch.buffer)
  const out = new BatchOutput(batchSize)
  // per batch entry: record number, timestamp, origlen, offset in batch (-1: skipped, not IP)
  const entN = new Float64Array(batchSize * 2)
  const entSec = new Float64Array(batchSize * 2)
  const entNsec = new Float64Array(batchSize * 2)
  const entOrig = new Float64Array(batchSize * 2)
  const entPos = new Int32Array(batchSize * 2)
  const entLen = new Int32Array(batchSize * 2)
  const vmN = new Float64Array(batchSize)
  let entries = 0, count = 0, pos = 0
  const started = performance.now()
  let lastProgress = started
  const progressMs = opts.progressMs ?? 5000

  const flush = async () => {
    if (count > 0) await tenant.run(batch.subarray(0, pos), count, out, vmN)
    let k = 0
    for (let e = 0; e < entries; e++) {
      const n = entN[e]
      sum.packets++
      if (entPos[e] < 0) {
        sum.skipped++
        sum.accepted++
        verdictW?.write(`{"n":${n},"verdict":"accept","mark":0,"modified":false,"fault":null,"skipped":true}\n`)
        continue
      }
      const p = entPos[e], len = entLen[e]
      const original = batch.subarray(p + HDR, p + HDR + len)
      const code = out.verdict[k]
      const f = out.fault[k]
      let bytes: Uint8Array = original
      let modified = false
      let mark = 0
      if (!f) {
        if (out.mark[k] >= 0) mark = out.mark[k]
        const d = out.data[k]
        if (d) {
          fixup(d, entOrig[e] - len + d.length) // a truncated record keeps its wire length
          if (!sameBytes(d, original)) { bytes = d; modified = true }
        }
      } else {
        sum.faults++
      }
      const name = verdictName(code)
      const accepted = name !== 'drop'
      if (accepted) sum.accepted++
      else sum.dropped++
      if (modified) sum.modified++
      const w = accepted ? acceptedW : droppedW
      if (w) w.write(entSec[e], entNsec[e], bytes, bytes === original ? entOrig[e] : entOrig[e] - len + bytes.length)
      verdictW?.write(`{"n":${n},"verdict":"${name}","mark":${mark},"modified":${modified},"fault":${f ? `"${FAULT_KINDS[f]}"` : 'null'}}\n`)
      k++
    }
    entries = 0; count = 0; pos = 0
    if (tenant.afterBatch) await tenant.afterBatch()
    if (progressMs > 0) {
      const now = performance.now()
      if (now - lastProgress >= progressMs) {
        lastProgress = now
        log.info('progress', { packets: sum.packets, pps: Math.round(sum.packets / ((now - started) / 1000)) })
      }
    }
  }

  let status = 0
  try {
    for (;;) {
      let r: CaptureRecord | null
      try {
        r = capture.next()
      } catch (e) {
        if (!(e instanceof CaptureError)) throw e
        await flush()
        log.error(e.message, { file: e.file, offset: e.offset })
        status = 1
        break
      }
      if (r === null) break
      const ip = r.data !== null && (r.family === 4 || r.family === 6) ? r.data : null
      if (entries === entN.length || (ip && (count === batchSize || pos + HDR + ip.length + 4 > batch.length))) await flush()
      const e = entries++
      entN[e] = r.n; entSec[e] = r.sec; entNsec[e] = r.nsec; entOrig[e] = r.origlen
      if (ip === null) { entPos[e] = -1; continue }
      entPos[e] = pos
      entLen[e] = ip.length
      vmN[count] = r.n
      pos = writeRecord(batch, view, pos, ip, { id: r.n, origlen: r.origlen, sec: r.sec, nsec: r.nsec, family: r.family as 4 | 6 })
      count++
    }
    await flush()
  } finally {
    capture.close()
    await tenant.stop()
    acceptedW?.close()
    droppedW?.close()
    verdictW?.close()
  }
  const stats = Object.fromEntries(tenant.stats)
  if (Object.keys(stats).length) log.info('script stats', { stats })
  log.info('run finished', { seconds: +((performance.now() - started) / 1000).toFixed(3), pps: Math.round(sum.packets / Math.max(1e-9, (performance.now() - started) / 1000)) })
  log.info('summary', { ...sum })
  return status
}
