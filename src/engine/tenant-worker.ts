// A tenant whose VM runs in its own worker thread (worker.ts), as Tenant.start gives it.
//
// Why a thread per tenant: the one thing no hook inside the VM can stop is a runaway inside a
// single C library call (a pattern match, a sort, a copy). The watchdog (watchdog.ts) sees such
// a call run past the tenant's time budget and terminates the thread; then the packet that was
// running gets the tenant's fault verdict with fault "time", the packets of the batch after it
// run on a fresh VM built from the script (its globals are lost, and that is logged), and the
// tenant goes on. Other tenants never notice: each has its own thread, VM and wasm memory, and
// this thread only hands batches over and copies results back.
//
// Per batch: the records are posted through the shared channel (Atomics.notify): copied into it,
// or, when they already lie in shared memory (the live loop's receive buffers), left there;
// verdicts, marks, faults and edited bytes come back through the channel, and so does the word
// that the batch is done (awaitDone); a message only when the answer needs one.
// The worker keeps a spare (a second worker with the script loaded) once the watchdog had to
// stop one, so a tenant that keeps running away does not also wait for a thread to start.
import { Worker, MessageChannel, type MessagePort } from 'node:worker_threads'
import { Channel, C, CUR_IDLE, CUR_CALLBACK, CHANNEL_PACKETS, REPLY_MESSAGE, waitAsync } from './channel.js'
import { watchdog, graceMs, type Watched } from './watchdog.js'
import { FaultLog } from './fault-log.js'
import { LoadError, BatchOutput, FAULT_KINDS, PROGRESS, wasmMemoryCap, type FaultKind } from '../../wasm/vm.js'
import { compileLuaWasm } from '../../wasm/loader.js'
import { Logger, type LogOptions } from '../log.js'
import type { TenantConfig } from '../config.js'
import type { TenantCounters, TenantServicesOptions } from './tenant.js'

// ---------------------------------------------------------------- the messages

export interface Snapshot {
  counters: TenantCounters
  services: Record<string, number>
  memory: number
  /** present when the script's stats changed since the last snapshot */
  stats?: [string, number][]
}

export interface WorkerInit {
  sab: SharedArrayBuffer
  /** shared buffers that batches may lie in, one message each ({ id, sab }), read synchronously */
  sharePort: MessagePort
  module: WebAssembly.Module
  cfg: TenantConfig
  clock: 'capture' | 'real'
  source: string
  log: { opts: LogOptions; base: Record<string, unknown> }
  svc: { clockStart?: bigint; limits?: TenantServicesOptions['limits']; sender: boolean }
  stats: [string, number][]
  measureFuel: boolean
}

export type WorkerCommand =
  | { c: 'stop'; id: number }
  | { c: 'handoff'; id: number }
  | { c: 'takeover'; id: number; state: Uint8Array | null }
  | { c: 'retire'; id: number }

export type WorkerReply =
  | { t: 'ready'; snap: Snapshot }
  | { t: 'load-error'; message: string; kind: FaultKind | 'load' }
  | { t: 'send'; packet: Uint8Array; timeNs: bigint }
  | { t: 'reply'; id: number; snap?: Snapshot; value?: Uint8Array | null; error?: string; kind?: FaultKind | 'load';
      overflowData?: [number, Uint8Array][]; overflowMsg?: [number, string][] }

/** How a worker ended while a command was pending. */
interface Death {
  kind: 'time' | 'crash'
  detail: string
  /** the command running when it ended (C.cur): a command id, CUR_IDLE, CUR_CALLBACK or CUR_BOOT */
  cur: number
  /** packets of the running batch with final results in the channel */
  done: number
  /** script line the stopped call was last seen on, 0 when not known */
  line: number
}

type Reply = Extract<WorkerReply, { t: 'reply' }> | { t: 'died'; death: Death }
type CommandBody = Extract<WorkerCommand, { id: number }> extends infer T ? T extends { id: number } ? Omit<T, 'id'> : never : never

const CUR_BOOT = -2
/** JS heap limits of a worker: the VM's memory is wasm memory, outside these; the JS side is small. */
const RESOURCE_LIMITS = { maxOldGenerationSizeMb: 64, maxYoungGenerationSizeMb: 4, stackSizeMb: 4 }
/** Batches of at most this many packets are waited for blocking, at most SYNC_WAIT_MS (awaitDone). */
const SYNC_WAIT_PACKETS = 64
const SYNC_WAIT_MS = 0.5
/** Shared buffers a worker is handed for batches to lie in (a queue loop has two). */
const MAX_SHARED = 4
const workerUrl = new URL('./worker.js', import.meta.url)
const F_TIME = FAULT_KINDS.indexOf('time'), F_CRASH = FAULT_KINDS.indexOf('crash')
/** After a rebuild fails, the next attempt waits this long (packets meanwhile get fault verdicts). */
const RETRY_MS = 1000

// ---------------------------------------------------------------- one worker

/** Keeps the process alive while any worker is waited for (a ref'd timer that never fires). */
let waiting = 0
const alive = setInterval(() => {}, 1 << 30)
alive.unref()
function keepAlive(on: boolean): void {
  waiting += on ? 1 : -1
  if (on && waiting === 1) alive.ref()
  else if (!on && waiting === 0) alive.unref()
}

class WorkerHandle implements Watched {
  readonly channel = new Channel()
  readonly ready: Promise<Snapshot>
  readonly limitMs: number
  seenCalls = -1
  seenAt = 0
  cpuAt = -1
  cpuRun = -1
  gone = false
  death: Death | null = null
  /** packets of the batch command in flight, and its records (channel.input or the caller's buffer) */
  batchCount = 0
  batchInput: Uint8Array = this.channel.input
  private worker: Worker
  private sharePort: MessagePort
  private shared = new Map<SharedArrayBuffer, number>()
  private pending = new Map<number, (r: Reply) => void>()
  private nextId = 1
  private lastError = ''
  private settleReady: ((d: Death) => void) | null = null

  constructor(init: Omit<WorkerInit, 'sab' | 'sharePort'>, private onSend: (packet: Uint8Array, timeNs: bigint) => void,
    private onDeath: (h: WorkerHandle, d: Death) => void) {
    this.limitMs = init.cfg.timeoutMs + graceMs(init.cfg.timeoutMs)
    this.channel.ctl[C.cur] = CUR_BOOT
    this.measureFuel = init.measureFuel
    const { port1, port2 } = new MessageChannel()
    this.sharePort = port1
    this.worker = new Worker(workerUrl, {
      workerData: { ...init, sab: this.channel.sab, sharePort: port2 } satisfies WorkerInit,
      transferList: [port2],
      resourceLimits: RESOURCE_LIMITS,
    })
    this.ready = new Promise<Snapshot>((resolve, reject) => {
      this.settleReady = (d) => reject(new LoadError(d.kind === 'time'
        ? `${init.cfg.script}: time budget exhausted (${init.cfg.timeoutMs} ms)${d.line ? ` at ${init.cfg.script}:${d.line}` : ''}: the watchdog stopped the load (top level or on_start)`
        : `${init.cfg.script}: the VM's worker died while loading: ${d.detail}`, d.kind))
      this.worker.on('message', (m: WorkerReply) => {
        switch (m.t) {
          case 'send': this.onSend(m.packet, m.timeNs); break
          case 'ready': this.settleReady = null; resolve(m.snap); break
          case 'load-error': this.settleReady = null; this.end(); reject(new LoadError(m.message, m.kind)); break
          case 'reply': { const p = this.pending.get(m.id); this.pending.delete(m.id); p?.(m); break }
        }
      })
    })
    this.ready.catch(() => {})
    // A worker keeps the process alive only while main waits for it (booting, a command running):
    // an idle tenant must not hold up the exit of a run that ended, or failed, elsewhere. The
    // worker itself is never a reason to stay; a process-wide timer is, while anyone waits.
    this.worker.unref()
    this.hold(true)
    void this.ready.then(() => this.holdIfBusy(), () => this.hold(false))
    this.worker.on('error', (e) => { this.lastError = e?.message ?? String(e) })
    this.worker.on('exit', (code) => this.die('crash', `the worker thread exited (code ${code})${this.lastError ? ': ' + this.lastError : ''}`))
    // Followed for its whole life: the watchdog only acts while a call runs (PROGRESS.inCall).
    watchdog.watch(this)
  }

  get progress(): Int32Array { return this.channel.progress }
  get tid(): number { return this.channel.ctl[C.tid] }

  /** Sends a command as a message (stop, reload); its reply is a message too. */
  call(m: CommandBody): { id: number; reply: Promise<Reply> } {
    return this.issue((id) => this.worker.postMessage({ ...m, id }))
  }

  /**
   * Puts records batch[pos, end) where the worker reads the next batch. Records that lie in a
   * SharedArrayBuffer (the live loop's receive buffers) stay where they are: the worker is handed
   * the buffer the first time (a message it reads synchronously, sent before the batch's wake-up)
   * and told the offset, which saves copying every batch. The caller leaves them unchanged until
   * the batch is answered. Anything else is copied into channel.input.
   */
  placeInput(batch: Uint8Array, pos: number, end: number): void {
    const ctl = this.channel.ctl, sab = batch.buffer
    if (sab instanceof SharedArrayBuffer && (this.shared.has(sab) || this.shared.size < MAX_SHARED)) {
      let id = this.shared.get(sab)
      if (id === undefined) {
        id = this.shared.size + 1
        this.shared.set(sab, id)
        this.sharePort.postMessage({ id, sab })
      }
      ctl[C.src] = id
      ctl[C.srcOff] = batch.byteOffset + pos
      this.batchInput = batch.subarray(pos, end)
    } else {
      ctl[C.src] = 0
      this.channel.input.set(batch.subarray(pos, end))
      this.batchInput = this.channel.input
    }
  }

  /**
   * Posts a batch command through the channel: its records are placed (placeInput) and its record
   * numbers in channel.ns. The worker is woken with Atomics.notify, and its answer awaited
   * (awaitDone); a message comes only when the answer does not fit the channel.
   */
  batch(count: number, bytes: number): { id: number; reply: Promise<Reply> } {
    return this.issue((id) => {
      const ctl = this.channel.ctl
      ctl[C.count] = count
      ctl[C.bytes] = bytes
      Atomics.store(ctl, C.cmd, id)
      Atomics.notify(ctl, C.cmd)
      this.awaitDone(id, count)
    })
  }

  /** The reply of the command issued last (commands run one at a time, in the order issued). */
  private last: Promise<Reply> | null = null

  private issue(send: (id: number) => void): { id: number; reply: Promise<Reply> } {
    const id = this.nextId++
    if (this.gone) return { id, reply: Promise.resolve({ t: 'died', death: this.death! }) }
    const reply = new Promise<Reply>((resolve) => this.pending.set(id, (r) => { resolve(r); this.holdIfBusy() }))
    this.hold(true)
    // A command issued while another one runs goes once that one is answered: a batch goes by
    // the channel, the others by message, and the worker must see them in the order issued.
    const before = this.pending.size > 1 ? this.last : null
    this.last = reply
    if (before === null) send(id)
    else void before.then(() => { if (!this.gone && this.pending.has(id)) send(id) })
    return { id, reply }
  }

  /**
   * Resolves batch command id once the worker says it is done (ctl[C.done]). A short batch is
   * first waited for blocking (Atomics.wait, at most SYNC_WAIT_MS): a worker that answers by then
   * wakes this thread by a futex, a few microseconds, where a wake-up through the event loop
   * (waitAsync) costs tens, and the packets of a short batch are waiting for just that. A long
   * batch is waited for asynchronously, so that this thread feeds the other queues' workers
   * meanwhile.
   */
  private awaitDone(id: number, count: number): void {
    const ctl = this.channel.ctl
    const prev = Atomics.load(ctl, C.done)
    if (prev !== id && count <= SYNC_WAIT_PACKETS) Atomics.wait(ctl, C.done, prev, SYNC_WAIT_MS)
    const check = (): void => {
      for (;;) {
        if (this.gone) return
        const done = Atomics.load(ctl, C.done)
        if (done !== id) {
          const w = waitAsync(ctl, C.done, done)
          if (w.async) { void w.value.then(check); return }
          continue // changed meanwhile: look again
        }
        if (ctl[C.reply] === REPLY_MESSAGE) return // the 'reply' message settles it
        const p = this.pending.get(id)
        this.pending.delete(id)
        p?.({ t: 'reply', id })
        return
      }
    }
    check()
  }

  private held = false
  private hold(on: boolean): void {
    if (on === this.held) return
    this.held = on
    keepAlive(on)
  }

  private holdIfBusy(): void {
    this.hold(!this.gone && this.pending.size > 0)
  }

  /** Per-packet fuel measuring on or off, from the next batch on. */
  set measureFuel(on: boolean) { Atomics.store(this.channel.ctl, C.fuel, on ? 1 : 0) }

  stuck(ranMs: number, cpuMs: number): void {
    this.die('time', `a call ran ${Math.round(ranMs)} ms (${Math.round(cpuMs)} ms on a CPU)`)
  }

  /** Ends a worker that is no longer wanted (after stop or retire, or a spare at shutdown). */
  end(): void {
    if (this.gone) return
    this.gone = true
    this.hold(false)
    watchdog.unwatch(this)
    void this.worker.terminate()
    this.sharePort.close()
  }

  private die(kind: 'time' | 'crash', detail: string): void {
    if (this.gone) return
    this.gone = true
    this.hold(false)
    watchdog.unwatch(this)
    void this.worker.terminate()
    this.sharePort.close()
    const p = this.channel.progress
    const calls = Atomics.load(p, PROGRESS.calls)
    const d: Death = {
      kind, detail,
      cur: Atomics.load(this.channel.ctl, C.cur),
      done: Atomics.load(p, PROGRESS.done),
      line: Atomics.load(p, PROGRESS.lineCall) === calls ? Atomics.load(p, PROGRESS.line) : 0,
    }
    this.death = d
    this.settleReady?.(d)
    this.settleReady = null
    const waiting = [...this.pending.values()]
    this.pending.clear()
    Atomics.notify(this.channel.ctl, C.done) // ends main's own wait for a batch that will not finish
    this.onDeath(this, d)
    for (const resolve of waiting) resolve({ t: 'died', death: d })
  }
}

// ---------------------------------------------------------------- the tenant

type Counts = Record<string, number>

function addInto(into: Counts, from: Counts): void {
  for (const [k, v] of Object.entries(from)) if (typeof v === 'number') into[k] = (into[k] ?? 0) + v
}

function zeroCounters(): TenantCounters {
  return { packets: 0, accepted: 0, dropped: 0, modified: 0, faults: {}, rebuilds: 0 }
}

export class WorkerTenant {
  readonly stats = new Map<string, number>()
  readonly faultLog: FaultLog
  readonly log: Logger
  private w: WorkerHandle | null = null
  private spare: WorkerHandle | null = null
  private module!: WebAssembly.Module
  private source = ''
  /** counters of workers that are gone, plus what this side counted itself */
  private base = { counters: zeroCounters(), services: {} as Counts }
  /** the live worker's last snapshot */
  private snap: Snapshot = { counters: zeroCounters(), services: {}, memory: 0 }
  private kills = 0
  private downUntil = 0
  private downReason = ''
  private fuelOn = false
  private stopped = false
  private lastClock: bigint | undefined

  private constructor(readonly cfg: TenantConfig, private rootLog: Logger, private clock: 'capture' | 'real',
    private svc: TenantServicesOptions) {
    this.log = rootLog.child({ tenant: cfg.name, script: cfg.script })
    this.faultLog = new FaultLog(this.log)
    this.lastClock = svc.clockStart
  }

  static async start(cfg: TenantConfig, log: Logger, clock: 'capture' | 'real', svc: TenantServicesOptions, source: string): Promise<WorkerTenant> {
    const t = new WorkerTenant(cfg, log, clock, svc)
    t.source = source
    t.module = await compileLuaWasm(wasmMemoryCap(cfg.memory))
    const h = t.spawn()
    t.take(await h.ready)
    t.w = h
    return t
  }

  private spawn(): WorkerHandle {
    const anyLog = this.rootLog as any // the worker writes its own log lines, formatted like ours
    return new WorkerHandle({
      module: this.module, cfg: this.cfg, clock: this.clock, source: this.source,
      log: { opts: anyLog.opts ?? { format: 'json' }, base: anyLog.base ?? {} },
      svc: { clockStart: this.lastClock, limits: this.svc.limits, sender: this.svc.sender !== undefined },
      stats: [...this.stats], measureFuel: this.fuelOn,
    }, (packet, timeNs) => this.svc.sender?.send(packet, timeNs), (h, d) => this.died(h, d))
  }

  private take(s: Snapshot | undefined): void {
    if (s === undefined) return
    this.snap = s
    if (s.stats) for (const [k, v] of s.stats) this.stats.set(k, v)
  }

  get counters(): TenantCounters {
    const c = zeroCounters(), a = this.base.counters, b = this.snap.counters
    c.packets = a.packets + b.packets
    c.accepted = a.accepted + b.accepted
    c.dropped = a.dropped + b.dropped
    c.modified = a.modified + b.modified
    c.rebuilds = a.rebuilds + b.rebuilds
    addInto(c.faults, a.faults)
    addInto(c.faults, b.faults)
    return c
  }

  get services(): { counters: Counts } {
    const c: Counts = {}
    addInto(c, this.base.services)
    addInto(c, this.snap.services)
    return { counters: c }
  }

  get memoryUsed(): number { return this.snap.memory }

  private fault(kind: FaultKind | 'callback', message: string, packet?: number): void {
    const k = kind === 'callback' ? 'time' : kind
    this.base.counters.faults[k] = (this.base.counters.faults[k] ?? 0) + 1
    this.faultLog.report(k, message, packet ?? 0)
  }

  /** A worker ended: the live one (watchdog or crash), or a spare. */
  private died(h: WorkerHandle, d: Death): void {
    if (h === this.spare) { this.spare = null; return }
    if (h !== this.w) return
    this.w = null
    // what the dead worker had counted up to its last snapshot stays counted
    const s = this.snap.counters, b = this.base.counters
    b.packets += s.packets; b.accepted += s.accepted; b.dropped += s.dropped; b.modified += s.modified; b.rebuilds += s.rebuilds
    addInto(b.faults, s.faults)
    addInto(this.base.services, this.snap.services)
    this.snap = { counters: zeroCounters(), services: {}, memory: 0 }
    if (this.stopped) return
    if (d.kind === 'time') this.kills++
    // offline, the VM built next starts its clock at the packet that was running
    if (d.cur > 0 && d.done < h.batchCount) {
      const v = new DataView(h.batchInput.buffer, h.batchInput.byteOffset)
      let p = 0
      for (let j = 0; j < d.done; j++) p += v.getUint32(p, true)
      this.lastClock = BigInt(v.getUint32(p + 20, true)) * 1_000_000_000n + BigInt(v.getUint32(p + 24, true))
    }
    if (d.cur === CUR_CALLBACK || d.cur === CUR_IDLE) {
      // a timer or a deferred call ran away: no packet is waiting for it
      this.fault(d.kind === 'time' ? 'callback' : 'crash', d.kind === 'time'
        ? `${this.cfg.script}: time budget exhausted (${this.cfg.timeoutMs} ms) at ${this.where(d)} in a timer or deferred call: the watchdog stopped its worker`
        : `${this.cfg.script}: VM crashed in a timer or deferred call: ${d.detail}`)
    }
    b.rebuilds++
    const why = d.kind === 'time' ? 'the watchdog stopped a runaway call' : `its worker died (${d.detail})`
    this.log.warn(`VM rebuilt from the script after ${why}; the script's globals were lost`)
    // the replacement starts now, while the caller deals with the packets
    if (!this.spare) this.spare = this.spawn()
  }

  private where(d: Death): string {
    return d.line ? `${this.cfg.script}:${d.line}` : `${this.cfg.script} (line not known: inside a library call)`
  }

  /** The live worker, replacing a dead one (from the spare); null while the script cannot be loaded. */
  private async worker(): Promise<WorkerHandle | null> {
    for (;;) {
      if (this.w) return this.w
      if (this.stopped) return null
      if (performance.now() < this.downUntil) return null
      const h = this.spare ?? this.spawn()
      this.spare = null
      try {
        this.take(await h.ready)
      } catch (e) {
        this.downUntil = performance.now() + RETRY_MS
        this.downReason = (e as Error).message
        this.log.error(`cannot rebuild the VM: ${this.downReason}; packets get the fault verdict, next try in ${RETRY_MS} ms`)
        h.end()
        return null
      }
      if (h.gone) continue
      this.w = h
      // a tenant the watchdog had to stop once keeps a loaded spare, so the next stop costs no boot
      if (this.kills > 0 && !this.spare) this.spare = this.spawn()
    }
  }

  /**
   * Runs one batch (Tenant.run's contract): afterwards out.verdict[k] holds each packet's final
   * verdict code (faults already replaced by the fault policy) and out.fault[k] the fault kind.
   */
  async run(batch: Uint8Array, count: number, out: BatchOutput, ns: ArrayLike<number>): Promise<void> {
    const view = new DataView(batch.buffer, batch.byteOffset, batch.byteLength)
    const policy = this.cfg.onFault === 'drop' ? 0 : 1
    let first = 0, pos = 0
    while (first < count) {
      // The live worker is taken without an await: the batch is then posted before this call
      // returns, and the caller's own work (the live loop's next receive, the last batch's
      // verdicts) runs beside it instead of before it.
      const h = this.w ?? await this.worker()
      if (h === null) {
        const why = this.stopped ? 'the tenant is stopped' : `the VM cannot be rebuilt: ${this.downReason}`
        for (let k = first; k < count; k++) this.packetFault(out, k, F_CRASH, `${this.cfg.script}: ${why}`, ns[k], policy)
        return
      }
      let n = 0, end = pos
      if (count - first <= CHANNEL_PACKETS) { n = count - first; end = batch.length } // the rest fits
      else while (n < CHANNEL_PACKETS) { end += view.getUint32(end, true); n++ }
      const ch = h.channel
      h.placeInput(batch, pos, end)
      if (ns instanceof Float64Array) ch.ns.set(ns.subarray(first, first + n))
      else for (let j = 0; j < n; j++) ch.ns[j] = ns[first + j]
      h.batchCount = n
      const { id, reply } = h.batch(n, end - pos)
      const r = await reply
      if (r.t === 'reply') {
        this.take(r.snap)
        if (r.error) { // never expected: a bug in the engine, not the script
          this.log.error(`worker: ${r.error}`)
          h.end()
          this.died(h, { kind: 'crash', detail: r.error, cur: id, done: 0, line: 0 })
          continue
        }
        this.copy(ch, out, first, 0, n, r.overflowData, r.overflowMsg, policy, ns, false)
        first += n
        pos = end
        continue
      }
      // the worker is gone in the middle of this batch, or before it began
      const d = r.death
      const started = d.cur === id
      const done = started ? Math.min(n, d.done) : 0
      this.copy(ch, out, first, 0, done, undefined, undefined, policy, ns, true)
      for (let j = 0; j < done; j++) pos += view.getUint32(pos, true)
      first += done
      if (started && done < n) {
        const msg = d.kind === 'time'
          ? `${this.cfg.script}: time budget exhausted (${this.cfg.timeoutMs} ms) at ${this.where(d)}: the watchdog stopped its worker`
          : `${this.cfg.script}: VM crashed: ${d.detail}`
        this.packetFault(out, first, d.kind === 'time' ? F_TIME : F_CRASH, msg, ns[first], policy)
        pos += view.getUint32(pos, true)
        first++
      }
    }
  }

  private packetFault(out: BatchOutput, k: number, kind: number, message: string, packet: number, policy: number): void {
    out.verdict[k] = policy
    out.fault[k] = kind
    out.mark[k] = -1
    out.fuel[k] = this.cfg.fuel
    out.data[k] = null
    out.message[k] = message
    this.fault(FAULT_KINDS[kind]!, message, packet)
  }

  /**
   * Copies results j0..j1 of the channel to out[first + j]. `raw`: the worker died before its
   * tenant applied the fault policy to them (their verdict is still -1), so it is applied here.
   */
  private copy(ch: Channel, out: BatchOutput, first: number, j0: number, j1: number,
    overflowData: [number, Uint8Array][] | undefined, overflowMsg: [number, string][] | undefined,
    policy: number, ns: ArrayLike<number>, raw: boolean): void {
    if (j1 <= j0) return
    out.verdict.set(ch.verdict.subarray(j0, j1), first + j0)
    out.mark.set(ch.mark.subarray(j0, j1), first + j0)
    out.fault.set(ch.fault.subarray(j0, j1), first + j0)
    out.fuel.set(ch.fuel.subarray(j0, j1), first + j0)
    if (!raw && ch.ctl[C.extra] === 0) { // no packet of the batch has edited bytes or a message
      out.data.fill(null, first + j0, first + j1)
      out.message.fill(null, first + j0, first + j1)
      return
    }
    const od = overflowData?.length ? new Map(overflowData) : null
    const om = overflowMsg?.length ? new Map(overflowMsg) : null
    for (let j = j0; j < j1; j++) {
      const k = first + j
      const dl = ch.dataLen[j]
      out.data[k] = dl >= 0 ? ch.data.slice(ch.dataOff[j], ch.dataOff[j] + dl) : dl === -2 ? od?.get(j) ?? null : null
      const ml = ch.msgLen[j]
      out.message[k] = ml >= 0 ? Buffer.from(ch.msg.buffer, ch.msg.byteOffset + ch.msgOff[j], ml).toString('utf8') : ml === -2 ? om?.get(j) ?? null : null
      if (!raw) continue
      const f = out.fault[k]
      if (f) {
        // the worker's own counts of these died with it: count them here; log the ones it had not
        const kind = FAULT_KINDS[f]!
        this.base.counters.faults[kind] = (this.base.counters.faults[kind] ?? 0) + 1
        if (out.verdict[k] === -1) {
          out.verdict[k] = policy
          this.faultLog.report(kind, out.message[k] ?? `${this.cfg.script}: ${kind} fault`, ns[k])
        }
      } else if (dl === -2 && out.data[k] === null) {
        this.packetFault(out, k, F_CRASH, `${this.cfg.script}: the packet's edited bytes were lost with its worker`, ns[k], policy)
      }
    }
  }

  /** The worker runs the deferred calls after each batch by itself; nothing to wait for here. */
  async afterBatch(): Promise<void> {}

  measureFuel(on = true): void {
    this.fuelOn = on
    if (this.w) this.w.measureFuel = on
    if (this.spare) this.spare.measureFuel = on
  }

  /** Ends the tenant: deferred calls still waiting, then on_stop, under the budgets and the watchdog. */
  async stop(): Promise<void> {
    if (this.stopped) return
    const h = this.w
    this.stopped = true
    this.spare?.end()
    this.spare = null
    if (h) {
      const r = await h.call({ c: 'stop' }).reply
      if (r.t === 'reply') this.take(r.snap)
      else this.log.error(`on_stop: ${r.death.kind === 'time' ? `time budget exhausted (${this.cfg.timeoutMs} ms): the watchdog stopped it` : r.death.detail}`)
      h.end()
    }
    this.w = null
    this.svc.sender?.close()
  }

  /** Reload, old side: the deferred calls, then on_stop's result as bytes. Throws LoadError. */
  async handOff(): Promise<Uint8Array | null> {
    const h = await this.worker()
    if (!h) throw new LoadError(`${this.cfg.script}: the VM cannot be rebuilt: ${this.downReason}`)
    const r = await h.call({ c: 'handoff' }).reply
    if (r.t === 'died') throw new LoadError(`${this.cfg.script}: on_stop: ${r.death.kind === 'time' ? `time budget exhausted (${this.cfg.timeoutMs} ms): the watchdog stopped it` : r.death.detail}`, r.death.kind)
    this.take(r.snap)
    if (r.error !== undefined) throw new LoadError(r.error, r.kind)
    return r.value ?? null
  }

  /** Reload, new side: on_reload(old_state). Throws LoadError. */
  async takeOver(state: Uint8Array | null): Promise<void> {
    const h = await this.worker()
    if (!h) throw new LoadError(`${this.cfg.script}: the VM cannot be rebuilt: ${this.downReason}`)
    const r = await h.call({ c: 'takeover', state }).reply
    if (r.t === 'died') throw new LoadError(`${this.cfg.script}: on_reload: ${r.death.kind === 'time' ? `time budget exhausted (${this.cfg.timeoutMs} ms): the watchdog stopped it` : r.death.detail}`, r.death.kind)
    this.take(r.snap)
    if (r.error !== undefined) throw new LoadError(r.error, r.kind)
  }

  /** Closes a tenant whose on_stop already ran in handOff(). */
  retire(): void {
    this.stopped = true
    this.spare?.end()
    this.spare = null
    const h = this.w
    this.w = null
    if (h) void h.call({ c: 'retire' }).reply.then((r) => { if (r.t === 'reply') this.take(r.snap); h.end(); this.svc.sender?.close() })
    else this.svc.sender?.close()
  }
}
