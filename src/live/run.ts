// The live daemon: NFQUEUE in, the tenant's script, verdicts out (API.md sections 3 and 9).
//
// One QueueWorker per queue of each tenant, each with its own NfQueue and its own Tenant
// instance (its own VM: a flow stays on one queue, so per-flow state in a script stays in one VM).
// A worker's loop, started when the socket is readable:
//
//   receive a batch of records (src/batch-format.ts) into buffer A (a receive that comes back
//   full is followed by more, into the same batch: up to 16 receives, 1024 packets)
//   start the tenant's run over A                      (the VM; async, may be another thread)
//   receive the next batch into buffer B meanwhile
//   wait for A's run, start B's run, and while it runs send A's verdicts in one sendmsg (the
//   addon's verdictRecords, or a VerdictBatch with fixed-up payloads when the script edited
//   packets); swap A and B, repeat until nothing is waiting
//
// After the source, this is the offline loop's contract (src/offline/run.ts): the tenant fills a
// BatchOutput, faults already replaced by the tenant's fault verdict, and edited packets get
// their lengths and checksums made right by src/packet/checksum.ts before they go back.
//
// Every packet gets exactly one verdict. A run that throws (the VM's worker died and could not be
// replaced) gives its whole batch the fault verdict. Verdicts the kernel would not take are
// settled with the fault verdict. On shutdown (SIGTERM, SIGINT) each worker stops reading, lets
// its batch in flight finish, runs the script over the packets that were already queued when the
// signal came (bounded in time), gives whatever is still waiting the fault verdict, and unbinds.
import { NfQueue, NfQueueError, NF_ACCEPT, NF_DROP, NF_REPEAT, RV, RV_SHOWN, RV_SLOTS, type QueueStats, type KernelQueueCounters, type VerdictBatch } from './nfqueue.js'
import { queuesWithRules, suggestedRule } from './rules.js'
import { Tenant, BatchOutput, FAULT_KINDS } from '../engine/tenant.js'
import { MAX_BATCH_BYTES } from '../../wasm/vm.js'
import { HDR, OFF } from '../batch-format.js'
import { fixup } from '../packet/checksum.js'
import type { TenantConfig } from '../config.js'
import type { Logger } from '../log.js'

/** What the live loop needs of a tenant instance; Tenant has it (afterBatch where services exist). */
export interface LiveTenant {
  run(batch: Uint8Array, count: number, out: BatchOutput, ns: ArrayLike<number>): Promise<void>
  stop(): void
  readonly stats: Map<string, number>
  /**
   * Hook for script services (defer, timers): called after each batch's verdicts have been sent,
   * off the packet path. Timers that fall due while no packet arrives are the tenant's own to
   * fire (its timer pump, armed from here).
   */
  afterBatch?(): Promise<void>
}

export interface LiveOptions {
  tenants: TenantConfig[]
  log: Logger
  /** --queue-maxlen: packets the kernel may hold per queue (default 4096). */
  maxlen?: number
  /** --fail-open: the kernel accepts what does not fit into a full queue. */
  failOpen?: boolean
  /** Packets per receive and per VM call (default 64, at most 1024); while the queue is backed
   *  up, a VM call takes up to 16 receives' worth (at most 1024 packets). */
  batch?: number
  /** Warn when a queue has seen no packet for this long after start (default 10 s; 0: never). */
  idleWarnMs?: number
  /** On shutdown, the longest time spent running the script over already-queued packets. */
  drainMs?: number
  /** Look for a rule feeding each queue with iptables-save at start (default true). */
  checkRules?: boolean
  /** Builds the tenant instance of one queue (default: Tenant.start with the real clock). */
  startTenant?: (cfg: TenantConfig, log: Logger, queue: number) => Promise<LiveTenant>
  /** Operations (src/ops/live.ts): SIGHUP and SIGUSR1 go there, and `psd ctl` load/unload
   *  bind and unbind tenants' queues while psd runs. */
  ops?: LiveOps
}

/** What src/ops needs from the live loop (ctl load/unload at run time), and gives it. */
export interface LiveOps {
  onHup(): void
  onUsr1(): void
  /** Called once the queues are bound and running. */
  attach(live: {
    /** Binds one queue per lane and starts feeding it; throws (nothing bound) if one cannot be. */
    bind(cfg: TenantConfig, lanes: { queue: number; tenant: LiveTenant }[]): void
    /** Drains and unbinds these queues (their tenants are stopped). */
    unbind(queues: number[]): Promise<void>
  }): void
}

const DEFAULT_BATCH = 64
/** While the queue is backed up, a VM batch gathers up to GROW receives (at most MAX_BATCH packets). */
const GROW = 16
const MAX_BATCH = 1024
const DEFAULT_MAXLEN = 4096
/** Batches a worker runs before it lets the event loop (other queues, signals, timers) in. */
const MAX_ROUNDS = 16
const F_CRASH = FAULT_KINDS.indexOf('crash')
/** Record flags (src/batch-format.ts). */
const FLAG_GSO = 1, FLAG_CSUM_NOT_READY = 2

/** Where net.send gets its sender, and anything else a live tenant needs, is decided here. */
export async function defaultStartTenant(cfg: TenantConfig, log: Logger): Promise<LiveTenant> {
  return Tenant.start(cfg, log, 'real')
}

function validCode(code: number): boolean {
  const v = code & 0xffff
  return code === NF_ACCEPT || code === NF_DROP || code === NF_REPEAT || (v === 3 && code >>> 16 <= 65535)
}

/** Why an edited packet cannot go back as the new packet, or null. */
function unsendableEdit(d: Uint8Array, len: number, origlen: number): string | null {
  if (len < origlen) return `psd holds only ${len} of the packet's ${origlen} bytes (copy range); sending the edit would cut the packet`
  if (d.length > 65535) return `the edited packet has ${d.length} bytes (at most 65535)`
  const v = d.length ? d[0] >> 4 : 0
  if (!((v === 4 && d.length >= 20) || (v === 6 && d.length >= 40))) return 'the edited bytes are not an IPv4 or IPv6 packet'
  return null
}

function hasEdits(out: BatchOutput, n: number): boolean {
  for (let k = 0; k < n; k++) if (out.data[k] !== null) return true
  return false
}

function sameBytes(d: Uint8Array, buf: Uint8Array, at: number, len: number): boolean {
  if (d.length !== len) return false
  for (let i = 0; i < len; i++) if (d[i] !== buf[at + i]) return false
  return true
}

/** Logs the first 20 of something, then one in 1000 with the number left out. */
class Throttle {
  private seen = 0
  private left = 0
  constructor(private log: Logger) {}
  warn(msg: string, fields: Record<string, unknown>): void {
    this.seen++
    if (this.seen <= 20 || this.seen % 1000 === 0) {
      this.log.warn(msg, { ...fields, suppressed: this.left || undefined })
      this.left = 0
    } else {
      this.left++
    }
  }
}

export interface QueueCounts {
  packets: number
  accepted: number
  dropped: number
  /** REPEAT or queue(n) */
  other: number
  modified: number
  faults: number
  /** edits that could not be sent back (the verdict was kept) */
  editsDropped: number
  batches: number
  /** packets given the fault verdict without the script: run failures, refused verdicts, shutdown */
  settled: number
  /** records that were GSO super-packets, and records whose checksum was not ready (partial) */
  gso: number
  csumPartial: number
}

/** One bound queue of one tenant: its socket, its tenant instance, its buffers and its loop. */
export class QueueWorker {
  readonly counts: QueueCounts = { packets: 0, accepted: 0, dropped: 0, other: 0, modified: 0, faults: 0, editsDropped: 0, batches: 0, settled: 0, gso: 0, csumPartial: 0 }
  /** performance.now() of the first packet received, and of the last verdict sent (0: none) */
  firstAt = 0
  lastAt = 0
  readonly faultCode: number
  private readonly bufs: Uint8Array[]
  private readonly views: DataView[]
  private readonly outs: BatchOutput[]
  /** the packet ids of each buffer's records, written by receive() */
  private readonly ns: Float64Array[]
  private readonly used = [0, 0]
  private readonly ids: Uint32Array
  private readonly codes: Uint32Array
  private readonly offsets: Uint32Array
  private readonly lengths: Uint32Array
  private data = new Uint8Array(256 << 10)
  /** what the last verdictRecords sent (RV slots) */
  private readonly sent = new Float64Array(RV_SLOTS)
  /** packets of one VM batch while the queue is backed up (receive); bytes of the largest record */
  private readonly maxBatch: number
  private readonly maxRecord: number
  /** the last receive filled up: more is waiting */
  private full = false
  private busy = false
  private polling = false
  private stopping = false
  private idleWaiters: (() => void)[] = []
  private throttle: Throttle
  /** kernel counters as they were just before the queue was closed */
  finalKernel: KernelQueueCounters | undefined
  finalStats: QueueStats | undefined

  constructor(readonly tenantName: string, readonly cfg: TenantConfig, readonly q: NfQueue, readonly tenant: LiveTenant,
    readonly log: Logger, readonly batch: number, private onFatal: (e: Error) => void) {
    this.faultCode = cfg.onFault === 'drop' ? NF_DROP : NF_ACCEPT
    // Shared memory: a VM in another thread can read a batch where it lies.
    this.maxRecord = q.maxRecord
    this.maxBatch = Math.min(MAX_BATCH, batch * GROW)
    this.bufs = [0, 1].map(() => new Uint8Array(new SharedArrayBuffer(Math.max(MAX_BATCH_BYTES, q.maxRecord))))
    this.views = this.bufs.map((b) => new DataView(b.buffer))
    const max = this.maxBatch
    this.outs = [new BatchOutput(max), new BatchOutput(max)]
    this.ns = [new Float64Array(max), new Float64Array(max)]
    this.ids = new Uint32Array(max)
    this.codes = new Uint32Array(max)
    this.offsets = new Uint32Array(max)
    this.lengths = new Uint32Array(max)
    this.throttle = new Throttle(log)
  }

  get queue(): number { return this.q.queue }

  start(): void {
    this.resumePoll()
  }

  private onReadable = (): void => {
    // Readable while a batch is in flight (a VM in another thread): stop polling until the loop,
    // which reads until nothing is left, is done, rather than being woken for every event.
    if (this.busy) { this.pausePoll(); return }
    void this.drain()
  }

  private onPollError = (e: NfQueueError): void => { this.fatal(e) }

  private pausePoll(): void {
    if (!this.polling) return
    this.polling = false
    this.q.onReadable(null)
  }

  private resumePoll(): void {
    if (this.polling || this.stopping || this.q.closed) return
    this.polling = true
    this.q.onReadable(this.onReadable, this.onPollError)
  }

  /**
   * Receives a batch into buffer i. A receive that fills up (the queue is backed up) is followed
   * by more, into the same batch, up to maxBatch packets: the packets wait in the kernel anyway,
   * and a bigger batch spreads the cost of a VM call, a thread crossing and a verdict message over
   * more of them, so the backlog clears sooner. A short receive means the socket is empty.
   */
  private receive(i: number): number {
    const buf = this.bufs[i], ns = this.ns[i], q = this.q
    let n = q.receive(buf, this.batch, ns)
    let used = q.lastBytes
    let full = n === this.batch || q.pending
    while (full && n < this.maxBatch && buf.length - used >= this.maxRecord) {
      const ask = Math.min(this.batch, this.maxBatch - n)
      const m = q.receive(buf.subarray(used), ask, ns.subarray(n))
      n += m
      used += q.lastBytes
      full = m === ask || q.pending
    }
    this.used[i] = used
    this.full = full
    if (n > 0 && this.firstAt === 0) this.firstAt = performance.now()
    return n
  }

  private async drain(): Promise<void> {
    if (this.busy || this.stopping) return
    this.busy = true
    let again = false
    try {
      // Two buffers: while the VM runs one batch, the other has its verdicts sent and is then
      // filled with the next batch. With a VM in another thread, the kernel work (receive,
      // verdicts) overlaps the script; with one in this thread it costs nothing.
      let cur = 0
      let n = this.receive(0)
      let running: Promise<void> | null = n > 0 ? this.startRun(0, n) : null
      for (let rounds = 1; running; rounds++) {
        const nxt = 1 - cur
        // A batch smaller than asked for emptied the socket: the poll says when more comes
        // (sooner verdicts for this one, and no receive call that finds nothing).
        const full = this.full
        const more = full && !this.stopping && rounds < MAX_ROUNDS
        const m = more ? this.receive(nxt) : 0
        await running
        running = m > 0 ? this.startRun(nxt, m) : null
        await this.finish(cur, n)
        if (full && !more && !this.stopping) again = true
        cur = nxt
        n = m
      }
    } catch (e) {
      this.fatal(e as Error)
    } finally {
      this.busy = false
      for (const w of this.idleWaiters.splice(0)) w()
      this.resumePoll()
      // Yielded after MAX_ROUNDS: go on once the event loop has had its turn (messages already
      // read from the socket would not wake the poll).
      if (again) setImmediate(() => { void this.drain() })
    }
  }

  /** Runs batch i (n records) through the tenant and sends its verdicts. */
  private async process(i: number, n: number): Promise<void> {
    await this.startRun(i, n)
    await this.finish(i, n)
  }

  /** Starts the tenant's run over batch i; never rejects (a failed run gives fault verdicts). */
  private async startRun(i: number, n: number): Promise<void> {
    const out = this.outs[i], ns = this.ns[i] // ns: the packet ids, as receive() wrote them
    try {
      await this.tenant.run(this.bufs[i].subarray(0, this.used[i]), n, out, ns)
    } catch (e) {
      this.log.error(`the script's VM could not run a batch: ${(e as Error)?.message ?? e}; its ${n} packets get the fault verdict (${this.cfg.onFault})`)
      out.verdict.fill(this.faultCode, 0, n)
      out.fault.fill(F_CRASH, 0, n)
      out.mark.fill(-1, 0, n)
      out.data.fill(null, 0, n)
    }
  }

  /** Sends batch i's verdicts, then gives the tenant its turn after the batch. */
  private async finish(i: number, n: number): Promise<void> {
    this.sendVerdicts(this.bufs[i], this.views[i], this.outs[i], n)
    if (this.tenant.afterBatch) {
      try {
        await this.tenant.afterBatch()
      } catch (e) {
        this.log.error(`after the batch: ${(e as Error)?.message ?? e}`)
      }
    }
  }

  private sendVerdicts(buf: Uint8Array, dv: DataView, out: BatchOutput, n: number): void {
    if (hasEdits(out, n)) this.sendEdited(buf, dv, out, n)
    else this.sendPlain(buf, out, n)
    this.counts.packets += n
    this.counts.batches++
    this.lastAt = performance.now()
  }

  /** No packet has new bytes: the addon reads the ids and flags from the records, and counts. */
  private sendPlain(buf: Uint8Array, out: BatchOutput, n: number): void {
    const r = this.sent.fill(0)
    try {
      this.q.verdictRecords(buf, n, out.verdict, out.mark, out.fault, this.faultCode, r)
    } catch (e) {
      this.verdictsFailed(e as Error)
    }
    const c = this.counts
    c.accepted += r[RV.accepted]
    c.dropped += r[RV.dropped]
    c.other += r[RV.other]
    c.faults += r[RV.faults]
    c.gso += r[RV.gso]
    c.csumPartial += r[RV.csumPartial]
    const bad = r[RV.invalid]
    for (let i = 0; i < Math.min(bad, RV_SHOWN); i++) { // never from Tenant.run
      this.log.error(`packet ${r[RV.shown + 2 * i]}: verdict code ${r[RV.shown + 2 * i + 1]} is not one the kernel takes; the fault verdict is used`)
    }
    if (bad > RV_SHOWN) this.log.error(`${bad - RV_SHOWN} more packets of the batch had verdict codes the kernel does not take; the fault verdict is used`)
  }

  /** Some packets have new bytes: checked, fixed up and sent with their verdicts. */
  private sendEdited(buf: Uint8Array, dv: DataView, out: BatchOutput, n: number): void {
    const c = this.counts
    let dpos = 0
    for (let k = 0, pos = 0; k < n; k++) {
      const id = dv.getUint32(pos + OFF.id, true)
      const len = dv.getUint32(pos + OFF.len, true)
      const flags = buf[pos + OFF.flags]
      if (flags & FLAG_GSO) c.gso++
      if (flags & FLAG_CSUM_NOT_READY) c.csumPartial++
      this.ids[k] = id
      let code = out.verdict[k] >>> 0
      if (!validCode(code)) { // never from Tenant.run; a verdict the kernel refuses would leave the packet waiting
        this.log.error(`packet ${id}: verdict code ${code} is not one the kernel takes; the fault verdict is used`)
        code = this.faultCode
        out.mark[k] = -1
        out.data[k] = null
      }
      this.codes[k] = code
      this.lengths[k] = 0
      if (out.fault[k]) c.faults++
      const d = out.data[k]
      if (d !== null && code !== NF_DROP && !sameBytes(d, buf, pos + HDR, len)) {
        const why = unsendableEdit(d, len, dv.getUint32(pos + OFF.origlen, true))
        if (why) {
          c.editsDropped++
          this.throttle.warn(`packet ${id}: the script's edit was not applied: ${why}; the verdict stands`, { packet: id })
        } else {
          if (dpos + d.length > this.data.length) {
            const bigger = new Uint8Array(Math.max(this.data.length * 2, dpos + d.length))
            bigger.set(this.data.subarray(0, dpos))
            this.data = bigger
          }
          this.data.set(d, dpos)
          // Full lengths and checksums: the kernel takes the new bytes as they are, and a packet
          // whose checksum was left to the NIC (checksum not ready, GSO) must be complete now.
          fixup(this.data.subarray(dpos, dpos + d.length))
          this.offsets[k] = dpos
          this.lengths[k] = d.length
          dpos += d.length
          c.modified++
        }
      }
      if (code === NF_ACCEPT) c.accepted++
      else if (code === NF_DROP) c.dropped++
      else c.other++
      pos += dv.getUint32(pos + OFF.reclen, true)
    }
    const b: VerdictBatch = {
      count: n, ids: this.ids, codes: this.codes, marks: out.mark,
      payload: dpos > 0 ? { data: this.data, offsets: this.offsets, lengths: this.lengths } : null,
    }
    try {
      this.q.verdicts(b)
    } catch (e) {
      this.verdictsFailed(e as Error)
    }
  }

  /** The addon has already retried; what it could not send is still waiting. Settle it. */
  private verdictsFailed(e: Error): void {
    this.log.error(`queue ${this.queue}: ${e.message}; every packet still waiting gets the fault verdict (${this.cfg.onFault})`)
    const waiting = this.waiting(this.q.kernelCounters()?.waiting)
    this.q.settleAll(this.faultCode) // throws if even that fails: fatal
    this.counts.settled += waiting
  }

  /** Packets a settle gives a verdict: those we hold, and those still in the socket (the kernel's count). */
  private waiting(kernel: number | undefined): number {
    return Math.max(this.q.outstanding, kernel ?? 0)
  }

  private fatal(e: Error): void {
    this.onFatal(e instanceof Error ? e : new Error(String(e)))
  }

  private idle(): Promise<void> {
    if (!this.busy) return Promise.resolve()
    return new Promise((res) => this.idleWaiters.push(res))
  }

  /**
   * Stops reading, waits for the batch in flight, runs the script over what was queued before
   * now (for at most drainMs), gives everything still waiting the fault verdict, unbinds, and
   * stops the tenant. Never throws.
   */
  async stop(drainMs: number): Promise<void> {
    if (this.stopping) return
    this.stopping = true
    this.pausePoll()
    await this.idle()
    const last = this.q.kernelCounters()?.idSequence
    this.drainEnd = Math.min(this.drainEnd, performance.now() + drainMs)
    let drained = 0
    try {
      while (performance.now() < this.drainEnd) {
        const n = this.receive(0)
        if (n === 0) break
        await this.process(0, n)
        drained += n
        // Packets queued after the signal are not waited for.
        if (last !== undefined && ((this.ns[0][n - 1] - last) | 0) >= 0) break
      }
    } catch (e) {
      this.log.error(`queue ${this.queue}: while draining: ${(e as Error).message}`)
    }
    try {
      this.finalKernel = this.q.kernelCounters()
      this.finalStats = this.q.stats()
      const estimate = this.waiting(this.finalKernel?.waiting)
      this.q.settleAll(this.faultCode)
      // Exactly how many the settle took, from the kernel's packet ids: every id it gave out is
      // one we gave a verdict, one settled, one lost to a full socket buffer, or one still waiting.
      const k = this.q.kernelCounters()
      this.q.close()
      const c = this.counts
      this.counts.settled += k ? Math.max(0, k.idSequence - k.waiting - k.userDropped - c.packets - c.settled) : estimate
    } catch (e) {
      this.log.error(`queue ${this.queue}: while closing: ${(e as Error).message}`)
      try { this.q.close() } catch { /* closed */ }
    }
    if (drained) this.log.info('drained on shutdown', { queue: this.queue, packets: drained })
    try {
      this.tenant.stop()
    } catch (e) {
      this.log.error(`stopping the script: ${(e as Error).message}`)
    }
  }

  private drainEnd = Infinity

  /** Ends a drain in progress: what is still waiting gets the fault verdict now. */
  hurry(): void {
    this.drainEnd = 0
  }

  /** Packets per second from the first packet to the last verdict. */
  get pps(): number {
    const s = (this.lastAt - this.firstAt) / 1000
    return s > 0 ? Math.round(this.counts.packets / s) : 0
  }
}

function bindError(e: NfQueueError, queue: number, tenant: string): string {
  let hint = ''
  if (e.code === 'EPERM') {
    hint = /not root/.test(e.message) ? '. Run psd as root (or with CAP_NET_ADMIN in this network namespace)'
      : /port id/.test(e.message) ? '. Stop the program that holds it (another psd, or any NFQUEUE consumer), or give psd another queue number with --queue / --queues'
      : '. Binding needs root (CAP_NET_ADMIN), and one process per queue number'
  }
  return `tenant ${tenant}: cannot bind NFQUEUE queue ${queue}: ${e.message}${hint}`
}

/** Runs until SIGTERM or SIGINT (exit status 0) or a fatal error (1). Bind errors are status 1. */
export async function runLive(opts: LiveOptions): Promise<number> {
  const log = opts.log
  const batch = Math.min(Math.max(1, opts.batch ?? DEFAULT_BATCH), 1024)
  const startTenant = opts.startTenant ?? defaultStartTenant
  const plan = opts.tenants.flatMap((cfg) => cfg.queues.map((queue) => ({ cfg, queue })))

  // Every script loads before any queue is bound: a script that does not load takes no traffic.
  const instances: LiveTenant[] = []
  try {
    for (const { cfg, queue } of plan) instances.push(await startTenant(cfg, log.child({ queue }), queue))
  } catch (e) {
    for (const t of instances) try { t.stop() } catch { /* already failing */ }
    throw e
  }

  const workers: QueueWorker[] = []
  let fatalError: Error | null = null
  let stopRequested!: (status: number) => void
  const stopped = new Promise<number>((res) => { stopRequested = res })
  const onFatal = (e: Error) => {
    if (fatalError) return
    fatalError = e
    log.error(`fatal: ${e.message}`)
    stopRequested(1)
  }
  /** Binds every lane's queue and makes its worker (not started); binds all or none: throws. */
  const bindAll = (lanes: { cfg: TenantConfig; queue: number; tenant: LiveTenant }[]): QueueWorker[] => {
    const bound: QueueWorker[] = []
    try {
      for (const { cfg, queue, tenant } of lanes) {
        let q: NfQueue
        try {
          q = NfQueue.open({ queue, maxlen: cfg.queueMaxlen ?? opts.maxlen ?? DEFAULT_MAXLEN, failOpen: cfg.failOpen ?? opts.failOpen === true, gso: true, uidGid: true, batch })
        } catch (e) {
          if (e instanceof NfQueueError) throw new NfQueueError(bindError(e, queue, cfg.name), e.code, e.errno, queue)
          throw e
        }
        bound.push(new QueueWorker(cfg.name, cfg, q, tenant, log.child({ tenant: cfg.name, queue }), batch, onFatal))
      }
    } catch (e) {
      for (const w of bound) w.q.close()
      throw e
    }
    return bound
  }
  try {
    workers.push(...bindAll(plan.map(({ cfg, queue }, i) => ({ cfg, queue, tenant: instances[i] }))))
  } catch (e) {
    for (const t of instances) try { t.stop() } catch { /* already failing */ }
    if (e instanceof NfQueueError) {
      log.error(e.message, { code: e.code })
      return 1
    }
    throw e
  }

  // Signals: SIGTERM/SIGINT drain and exit 0 (a second one skips the drain); SIGUSR1 logs stats.
  // Installed before 'ready' is said: a signal sent as soon as psd is ready must find them.
  let drainMs = opts.drainMs ?? 2000
  let signalled = false
  const onStop = (sig: NodeJS.Signals) => {
    if (signalled) {
      drainMs = 0
      for (const w of workers) w.hurry()
      log.warn(`${sig} again: giving the waiting packets the fault verdict now`)
      return
    }
    signalled = true
    log.info(`${sig}: draining and stopping`)
    stopRequested(0)
  }
  const onUsr1 = () => { for (const w of workers) logQueue(w, 'stats'); opts.ops?.onUsr1() }
  const onHup = opts.ops ? () => opts.ops!.onHup() : () => log.warn('SIGHUP: reloading is not available without src/ops; the scripts keep running')
  process.on('SIGTERM', onStop)
  process.on('SIGINT', onStop)
  process.on('SIGUSR1', onUsr1)
  process.on('SIGHUP', onHup)

  for (const w of workers) w.start()
  // ctl load/unload (src/ops): queues bound and unbound while psd runs
  opts.ops?.attach({
    bind: (cfg, lanes) => {
      for (const w of bindAll(lanes.map(({ queue, tenant }) => ({ cfg, queue, tenant })))) { workers.push(w); w.start() }
    },
    unbind: async (queues) => {
      const gone = workers.filter((w) => queues.includes(w.queue))
      for (const w of gone) workers.splice(workers.indexOf(w), 1)
      await Promise.all(gone.map((w) => w.stop(drainMs)))
    },
  })
  log.info('ready', {
    queues: workers.map((w) => ({ tenant: w.tenantName, queue: w.queue })),
    maxlen: opts.maxlen ?? DEFAULT_MAXLEN, fail_open: opts.failOpen === true, batch,
  })

  // No rule, no packets: say which rule to add, at start (iptables-save) and after idleWarnMs.
  const byTenant = new Map<string, number[]>()
  for (const w of workers) byTenant.set(w.tenantName, [...(byTenant.get(w.tenantName) ?? []), w.queue])
  const ruled = opts.checkRules === false ? Promise.resolve(null) : queuesWithRules().catch(() => null)
  void ruled.then((have) => {
    if (!have || fatalError) return
    for (const [tenant, queues] of byTenant) {
      const missing = queues.filter((q) => !have.has(q))
      if (missing.length === 0) continue
      log.warn(`no iptables rule sends packets to queue${missing.length > 1 ? 's' : ''} ${missing.join(', ')} ` +
        `(tenant ${tenant}); add one, for example: ${suggestedRule(queues)}`, { tenant, queues: missing })
    }
  })
  const idleMs = opts.idleWarnMs ?? 10_000
  const idleTimer = idleMs > 0 ? setTimeout(() => {
    void ruled.then((have) => {
      for (const w of workers) {
        if (w.counts.packets > 0 || w.firstAt > 0) continue
        const rule = have && have.has(w.queue)
          ? 'an iptables rule names it, so check that traffic matches that rule and that psd runs in the rule\'s network namespace'
          : `add a rule, for example: ${suggestedRule(byTenant.get(w.tenantName)!)}`
        w.log.warn(`no packet arrived on queue ${w.queue} in ${Math.round(idleMs / 1000)} s; ${rule}`)
      }
    })
  }, idleMs) : null
  idleTimer?.unref()

  const status = await stopped
  if (idleTimer) clearTimeout(idleTimer)
  await Promise.all(workers.map((w) => w.stop(drainMs)))
  process.off('SIGTERM', onStop)
  process.off('SIGINT', onStop)
  process.off('SIGUSR1', onUsr1)
  process.off('SIGHUP', onHup)

  const sum = { packets: 0, accepted: 0, dropped: 0, modified: 0, faults: 0, skipped: 0 }
  for (const w of workers) {
    logQueue(w, 'queue stats')
    const stats = Object.fromEntries(w.tenant.stats)
    if (Object.keys(stats).length) w.log.info('script stats', { stats })
    sum.packets += w.counts.packets
    sum.accepted += w.counts.accepted + w.counts.other
    sum.dropped += w.counts.dropped
    sum.modified += w.counts.modified
    sum.faults += w.counts.faults
  }
  log.info('summary', sum)
  return fatalError ? 1 : status
}

function logQueue(w: QueueWorker, msg: string): void {
  const k = w.finalKernel ?? w.q.kernelCounters()
  const s = w.finalStats ?? (w.q.closed ? undefined : w.q.stats())
  const c = w.counts
  w.log.info(msg, {
    packets: c.packets, accepted: c.accepted, dropped: c.dropped, other: c.other, modified: c.modified, faults: c.faults,
    edits_dropped: c.editsDropped, settled: c.settled, batches: c.batches, gso: c.gso, csum_partial: c.csumPartial, pps: w.pps, seconds: w.lastAt > w.firstAt ? +((w.lastAt - w.firstAt) / 1000).toFixed(6) : 0,
    queue_dropped: k?.queueDropped, user_dropped: k?.userDropped,
    recv_calls: s?.recvCalls, send_calls: s?.sendCalls, batch_msgs: s?.batchMsgs, nl_errors: s?.nlErrors, enobufs: s?.enobufs,
  })
}
