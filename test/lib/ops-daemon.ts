// A small live daemon for the operations tests: real NFQUEUE sockets (src/live/nfqueue.ts),
// real tenants, and src/ops (TenantSet, control socket, metrics, SIGHUP, SIGUSR1) exactly as
// psd uses them; only the queue loop is this file's own, kept minimal (one batch at a time,
// edits are not sent back). It speaks like psd: JSON log lines on stderr, and on stdout
// {"event":"ready"} once bound and {"event":"done",...} after SIGTERM has drained every queue.
//
//   node ops-daemon.js '{"config":"/path/psd.json","batch":64}'
import { NfQueue, readKernelCounters, NF_ACCEPT, NF_DROP } from '../../src/live/nfqueue.js'
import { Ops } from '../../src/ops/daemon.js'
import type { Lane, TenantSlot } from '../../src/ops/tenants.js'
import { Tenant, BatchOutput } from '../../src/engine/tenant.js'
import { loadConfigFile, DEFAULTS } from '../../src/config.js'
import { Logger } from '../../src/log.js'
import { OFF } from '../../src/batch-format.js'
import { MAX_BATCH_BYTES } from '../../wasm/vm.js'

const args = JSON.parse(process.argv[2] ?? '{}') as { config: string; batch?: number }
const log = new Logger({ format: 'json', level: 'info' })
const cfg = loadConfigFile(args.config)
const BATCH = args.batch ?? 64

class QueueLoop {
  readonly q: NfQueue
  private buf: Uint8Array
  private out = new BatchOutput(BATCH)
  private ns = new Float64Array(BATCH)
  private ids = new Uint32Array(BATCH)
  private codes = new Uint32Array(BATCH)
  private busy: Promise<void> | null = null
  private stopping = false
  packets = 0

  constructor(readonly lane: Lane) {
    this.q = NfQueue.open({ queue: lane.queue, maxlen: 32768 }) // room for seconds of traffic on a busy 2-core machine
    this.buf = new Uint8Array(Math.max(MAX_BATCH_BYTES, this.q.maxRecord))
    this.q.onReadable(() => { if (!this.busy) this.busy = this.drain().finally(() => { this.busy = null }) })
  }

  private async batch(n: number): Promise<void> {
    const dv = new DataView(this.buf.buffer)
    for (let k = 0, pos = 0; k < n; k++) {
      this.ids[k] = dv.getUint32(pos + OFF.id, true)
      this.ns[k] = this.ids[k]
      pos += dv.getUint32(pos + OFF.reclen, true)
    }
    const fault = this.lane.slot.cfg.onFault === 'drop' ? NF_DROP : NF_ACCEPT
    try {
      await this.lane.run(this.buf.subarray(0, this.q.lastBytes), n, this.out, this.ns)
      for (let k = 0; k < n; k++) this.codes[k] = this.out.verdict[k] >>> 0
    } catch (e) {
      log.error(`batch failed: ${(e as Error).message}`)
      this.codes.fill(fault, 0, n)
    }
    this.q.verdicts({ count: n, ids: this.ids, codes: this.codes, marks: this.out.mark })
    this.packets += n
    await this.lane.afterBatch()
  }

  private async drain(): Promise<void> {
    let n: number
    while (!this.stopping && (n = this.q.receive(this.buf, BATCH)) > 0) {
      await this.batch(n)
      await new Promise((r) => setImmediate(r)) // let signals, ctl and metrics in between batches
    }
  }

  /** SIGTERM: stop reading, finish the batch in flight, run what the kernel still holds, unbind. */
  async stop(): Promise<number> {
    this.stopping = true
    this.q.onReadable(null)
    if (this.busy) await this.busy
    let drained = 0, n: number
    const end = Date.now() + 10_000
    while (Date.now() < end && (n = this.q.receive(this.buf, BATCH)) > 0) { await this.batch(n); drained += n }
    this.q.close({ settle: NF_ACCEPT })
    return drained
  }
}

const loops = new Map<number, QueueLoop>()
const ops = await Ops.open({
  log,
  start: (c) => Tenant.start(c, log, 'real'),
  configPath: args.config,
  metrics: cfg.metrics,
  control: cfg.control,
  defaults: { fuel: DEFAULTS.fuel, memory: DEFAULTS.memory, timeoutMs: DEFAULTS.timeoutMs, onFault: DEFAULTS.onFault, send: false, workers: 1 },
  kernelCounters: readKernelCounters,
  bind: async (slot: TenantSlot) => { for (const l of slot.lanes) loops.set(l.queue, new QueueLoop(l)) },
  unbind: async (slot: TenantSlot) => {
    for (const l of slot.lanes) { const loop = loops.get(l.queue); loops.delete(l.queue); if (loop) await loop.stop() }
  },
})
for (const t of cfg.tenants) for (const q of t.queues) loops.set(q, new QueueLoop(await ops.startTenant(t, log, q)))
ops.installSignals()
process.on('SIGTERM', () => {
  void (async () => {
    log.info('SIGTERM: draining and stopping')
    const drained = await Promise.all([...loops.values()].map((l) => l.stop()))
    await ops.set.stopAll()
    await ops.close()
    const packets = [...loops.values()].reduce((a, l) => a + l.packets, 0)
    process.stdout.write(JSON.stringify({ event: 'done', packets, drained: drained.reduce((a, b) => a + b, 0) }) + '\n')
    process.exit(0)
  })()
})
process.stdout.write(JSON.stringify({ event: 'ready', queues: [...loops.keys()] }) + '\n')
