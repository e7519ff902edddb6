// Helpers for the budget and sandbox tests (6x.*): run a script as a tenant, in this process,
// over a few packets in chosen batches, and see every packet's result, the time each batch took
// and the log lines the tenant wrote.
import { openSync, closeSync, readFileSync, writeFileSync } from 'node:fs'
import { join } from 'node:path'
import { Tenant, BatchOutput } from '../../src/engine/tenant.js'
import { FAULT_KINDS, MAX_BATCH_BYTES } from '../../wasm/vm.js'
import { writeRecord } from '../../src/batch-format.js'
import { Logger } from '../../src/log.js'
import type { TenantConfig } from '../../src/config.js'
import { ipv4, udp } from './packets.js'
import { tempDir } from './pcaptools.js'

export const tmp = tempDir('psd-hostile-')

/** The n-th test packet (n from 1): a small UDP datagram whose payload says n. */
export function packet(n: number): Uint8Array {
  return ipv4({ src: '192.0.2.1', dst: '192.0.2.2', id: n }, udp({ sport: 1000 + n, dport: 9999, payload: new TextEncoder().encode(`packet ${n}`) }))
}

export interface PacketResult {
  n: number
  verdict: number
  mark: number
  fault: string | null
  message: string | null
}

export interface BatchRun {
  results: PacketResult[]
  ms: number
}

let scripts = 0

export interface TenantOptions {
  fuel?: number
  memory?: number
  timeoutMs?: number
  onFault?: 'accept' | 'drop'
  inline?: boolean
  name?: string
}

/** A tenant of one script, in this process, writing its log lines to a file of its own. */
export class TestTenant {
  private out = new BatchOutput(1024)
  private buf = new Uint8Array(MAX_BATCH_BYTES)
  readonly logPath: string
  private constructor(readonly tenant: Tenant, logPath: string, private fd: number) { this.logPath = logPath }

  static async start(source: string | Uint8Array, o: TenantOptions = {}): Promise<TestTenant> {
    const id = ++scripts
    const script = join(tmp.dir, `s${id}.lua`)
    writeFileSync(script, source)
    const logPath = join(tmp.dir, `s${id}.log`)
    const fd = openSync(logPath, 'w')
    const log = new Logger({ format: 'json', level: 'debug', fd })
    const cfg: TenantConfig = {
      name: o.name ?? `t${id}`, script, queues: [0], fuel: o.fuel ?? 1_000_000, memory: o.memory ?? 16 << 20,
      timeoutMs: o.timeoutMs ?? 50, onFault: o.onFault ?? 'accept', send: false, workers: 1,
    }
    try {
      const t = await Tenant.start(cfg, log, 'capture', {}, { inline: o.inline })
      return new TestTenant(t, logPath, fd)
    } catch (e) {
      closeSync(fd)
      throw e
    }
  }

  /** Runs packets with these numbers as one batch; returns each one's result and the time taken. */
  async batch(ns: number[]): Promise<BatchRun> {
    const view = new DataView(this.buf.buffer)
    let pos = 0
    for (const n of ns) pos = writeRecord(this.buf, view, pos, packet(n), { id: n, origlen: packet(n).length, sec: 1_700_000_000 + n, nsec: 0, family: 4 })
    const nsArr = Float64Array.from(ns)
    this.out.verdict.fill(-99, 0, ns.length) // so a packet left without a result shows
    const t0 = performance.now()
    await this.tenant.run(this.buf.subarray(0, pos), ns.length, this.out, nsArr)
    const ms = performance.now() - t0
    const results = ns.map((n, k) => ({
      n, verdict: this.out.verdict[k], mark: this.out.mark[k],
      fault: FAULT_KINDS[this.out.fault[k]] ?? null, message: this.out.message[k],
    }))
    return { results, ms }
  }

  async stop(): Promise<void> {
    await this.tenant.stop()
    closeSync(this.fd)
  }

  /** The tenant's log lines so far, parsed. */
  logs(): any[] {
    return readFileSync(this.logPath, 'utf8').split('\n').filter(Boolean).map((l) => JSON.parse(l))
  }
}
