// The daemon's tenants by name, and what an operator does to them while packets flow: load,
// unload, reload (API.md section 8), stats. The live daemon hands each batch of a queue to
// TenantSet.forQueue(q).run(...); everything here keeps that path short.
//
// Reload: the new script is loaded beside the old one (top level and on_start) while the old
// one keeps taking batches. Then, between two batches (the old finishes the batch it is in,
// the new takes the next), the old script's on_stop() runs, its result crosses to the new VM as
// bytes, and the new script's on_reload(old_state) runs; only then do batches move. Packets
// wait for that at most the old script's and the new script's time budgets (on_stop and
// on_reload each run under them). Any failure on the way (the file, a syntax error, the top
// level, on_start, on_stop, the state, on_reload) leaves the old script running, is logged and
// is returned to whoever asked (ctl, SIGHUP's log line).
import type { TenantConfig } from '../config.js'
import type { Logger } from '../log.js'
import type { BatchOutput, TenantCounters } from '../engine/tenant.js'
import { HDR } from '../batch-format.js'

/** What the set needs of one tenant's engine (src/engine/tenant.ts Tenant has all of it). */
export interface Engine {
  readonly counters: TenantCounters
  readonly stats: Map<string, number>
  readonly memoryUsed: number
  readonly services?: { counters: object }
  run(batch: Uint8Array, count: number, out: BatchOutput, ns: ArrayLike<number>): Promise<void>
  afterBatch?(): Promise<void>
  /** Ends the tenant: on_stop, then close. */
  stop(): void
  /** Reload, old side: on_stop's result as bytes (the engine stays usable). */
  handOff(): Promise<Uint8Array | null>
  /** Reload, new side: on_reload(old_state). */
  takeOver(state: Uint8Array | null): Promise<void>
  /** Closes an engine whose on_stop ran in handOff(). */
  retire(): void
  measureFuel?(on?: boolean): void
}

/** Observes what the slots do; src/ops/psd-metrics.ts implements it. */
export interface SlotObserver {
  batch(slot: TenantSlot, count: number, out: BatchOutput, seconds: number, fuel: boolean): void
}

export interface VerdictCounts {
  packets: number
  accept: number
  drop: number
  repeat: number
  queue: number
  modified: number
}

export interface ReloadReport {
  tenant: string
  ok: boolean
  /** set when ok: the script now running and its generation */
  script?: string
  generation?: number
  /** milliseconds packets waited while the scripts changed places */
  switch_ms?: number
  error?: string
}

export class OpsError extends Error {
  constructor(message: string, readonly code: 'unknown-tenant' | 'exists' | 'bad-request' | 'load' | 'busy' = 'bad-request') { super(message) }
}

function zeroCounts(): VerdictCounts { return { packets: 0, accept: 0, drop: 0, repeat: 0, queue: 0, modified: 0 } }

/**
 * One queue of a tenant with its own engine (the live daemon runs one VM per queue, so that a
 * flow's state stays in one VM). A lane is what the daemon's queue loop runs batches through:
 * it has the run/afterBatch/stop/stats of src/live/run.ts's LiveTenant.
 */
export class Lane {
  readonly counts: VerdictCounts = zeroCounts()
  private locked = false
  private waiters: (() => void)[] = []
  closed = false

  constructor(readonly slot: TenantSlot, readonly queue: number, public engine: Engine, private observer: SlotObserver | null) {}

  /**
   * The engine this lane ran before the current one, still referenced: an engine in another
   * thread may report its last counters after it was retired. Older ones are folded into
   * `folded` (counters summed, stats: last value of each name).
   */
  private previous: Engine | null = null
  private fuelOn: Engine | null = null
  private folded = { faults: {} as Record<string, number>, rebuilds: 0, services: {} as Record<string, number>, stats: new Map<string, number>() }

  /** The script's stats.* values: the current version's, over those of the versions before
   *  (a name the current version has not set yet shows its last value from before the reload). */
  get stats(): Map<string, number> {
    if (this.previous === null && this.folded.stats.size === 0) return this.engine.stats
    const m = new Map(this.folded.stats)
    if (this.previous) for (const [k, v] of this.previous.stats) m.set(k, v)
    for (const [k, v] of this.engine.stats) m.set(k, v)
    return m
  }

  /** Faults by kind of every engine this lane had. */
  faults(into: Record<string, number>): void {
    const add = (f: Record<string, number>) => { for (const [k, v] of Object.entries(f)) into[k] = (into[k] ?? 0) + v }
    add(this.folded.faults)
    if (this.previous) add(this.previous.counters.faults)
    add(this.engine.counters.faults)
  }

  rebuilds(): number { return this.folded.rebuilds + (this.previous?.counters.rebuilds ?? 0) + this.engine.counters.rebuilds }

  services(into: Record<string, number>): void {
    const add = (c: object | undefined) => { for (const [k, v] of Object.entries(c ?? {})) if (typeof v === 'number') into[k] = (into[k] ?? 0) + v }
    add(this.folded.services)
    add(this.previous?.services?.counters)
    add(this.engine.services?.counters)
  }

  /** Makes `engine` current; returns the one it replaces (which the caller retires). */
  swap(engine: Engine): Engine {
    const old = this.engine
    const p = this.previous
    if (p) {
      for (const [k, v] of Object.entries(p.counters.faults)) this.folded.faults[k] = (this.folded.faults[k] ?? 0) + v
      this.folded.rebuilds += p.counters.rebuilds
      for (const [k, v] of Object.entries(p.services?.counters ?? {})) if (typeof v === 'number') this.folded.services[k] = (this.folded.services[k] ?? 0) + v
      for (const [k, v] of p.stats) this.folded.stats.set(k, v)
    }
    this.previous = old
    this.engine = engine
    return old
  }

  acquire(): Promise<void> | undefined {
    if (!this.locked) { this.locked = true; return undefined }
    return new Promise((r) => this.waiters.push(r))
  }

  release(): void {
    const w = this.waiters.shift()
    if (w) w()
    else this.locked = false
  }

  /** Runs fn with no batch of this lane in flight and none starting (reload, unload). */
  async exclusive<T>(fn: () => Promise<T>): Promise<T> {
    const w = this.acquire()
    if (w) await w
    try { return await fn() } finally { this.release() }
  }

  /**
   * Runs one batch through whichever script version is current when the batch starts, and
   * counts its verdicts. out.verdict[k] then holds each packet's final kernel verdict.
   * startedAt (performance.now() when the batch was received) dates the latency histogram.
   */
  async run(batch: Uint8Array, count: number, out: BatchOutput, ns: ArrayLike<number>, startedAt = performance.now()): Promise<void> {
    const w = this.acquire()
    if (w) await w
    try {
      if (this.closed) throw new OpsError(`tenant "${this.slot.name}" was unloaded`, 'unknown-tenant')
      const engine = this.engine
      const fuel = this.observer !== null && engine.measureFuel !== undefined
      if (fuel && this.fuelOn !== engine) { engine.measureFuel!(true); this.fuelOn = engine } // once per engine (a message to its thread)
      await engine.run(batch, count, out, ns)
      this.count(batch, count, out)
      this.observer?.batch(this.slot, count, out, (performance.now() - startedAt) / 1000, fuel)
    } finally {
      this.release()
    }
  }

  /** Deferred calls and timers, after the batch's verdicts went out (the daemon calls this). */
  async afterBatch(): Promise<void> {
    const w = this.acquire()
    if (w) await w
    try {
      if (!this.closed && this.engine.afterBatch) await this.engine.afterBatch()
    } finally {
      this.release()
    }
  }

  /** Shutdown of this queue (the daemon's drain is done): on_stop, then the VM closes; after
   *  a reload that is switching this lane's scripts, once it is done. */
  stop(): void {
    if (this.closed) return
    this.closed = true
    if (!this.locked) { this.engine.stop(); return }
    void this.exclusive(async () => { this.engine.stop() })
  }

  private count(batch: Uint8Array, count: number, out: BatchOutput): void {
    const c = this.counts
    c.packets += count
    let pos = 0, at = 0
    for (let k = 0; k < count; k++) {
      const v = out.verdict[k]
      const kind = v & 0xffff
      if (kind === 0) c.drop++
      else if (kind === 3) c.queue++
      else if (kind === 4) c.repeat++
      else c.accept++
      const d = out.data[k]
      if (d !== null && kind !== 0) {
        // modified: the bytes going back differ from the bytes received
        while (at < k) { pos += readU32(batch, pos); at++ }
        if (!sameBytes(d, batch, pos + HDR, readU32(batch, pos + 4))) c.modified++
      }
    }
  }
}

/** One tenant by name: its lanes (one per queue), its counters across reloads. */
export class TenantSlot {
  /** 1 for the first load, +1 for every reload that took effect */
  generation = 1
  loadedAt = new Date()
  readonly lanes: Lane[] = []
  readonly reloads = { ok: 0, failed: 0 }
  lastReload: { time: string; ok: boolean; error?: string } | null = null
  private reloading: Promise<unknown> = Promise.resolve()
  closed = false

  constructor(public cfg: TenantConfig) {}

  get name(): string { return this.cfg.name }

  /** Verdict counts of every lane. */
  get counts(): VerdictCounts {
    const c = zeroCounts()
    for (const l of this.lanes) for (const k of Object.keys(c) as (keyof VerdictCounts)[]) c[k] += l.counts[k]
    return c
  }

  /** The script's stats.* values, summed over the tenant's VMs (one per queue). */
  get stats(): Map<string, number> {
    if (this.lanes.length === 1) return this.lanes[0].stats
    const m = new Map<string, number>()
    for (const l of this.lanes) for (const [k, v] of l.stats) m.set(k, (m.get(k) ?? 0) + v)
    return m
  }

  get memoryUsed(): number { return this.lanes.reduce((a, l) => a + l.engine.memoryUsed, 0) }

  /** Faults of every engine this tenant had, by kind. */
  faults(): Record<string, number> {
    const f: Record<string, number> = {}
    for (const l of this.lanes) l.faults(f)
    return f
  }

  rebuilds(): number { return this.lanes.reduce((a, l) => a + l.rebuilds(), 0) }

  services(): Record<string, number> {
    const s: Record<string, number> = {}
    for (const l of this.lanes) l.services(s)
    return s
  }

  /** Serialises reloads of this tenant (SIGHUP and ctl may ask at once). */
  serial<T>(fn: () => Promise<T>): Promise<T> {
    const p = this.reloading.then(fn, fn)
    this.reloading = p.catch(() => undefined)
    return p
  }

  /** Swaps a lane's engine; the old engine's counters and stats stay counted. */
  replace(lane: Lane, engine: Engine): Engine {
    return lane.swap(engine)
  }

  /** The stats of `ctl stats NAME` and of SIGUSR1's log line. */
  snapshot(): Record<string, unknown> {
    const c = this.counts
    return {
      name: this.name,
      script: this.cfg.script,
      queues: this.cfg.queues,
      generation: this.generation,
      loaded_at: this.loadedAt.toISOString(),
      packets: c.packets,
      verdicts: { accept: c.accept, drop: c.drop, repeat: c.repeat, queue: c.queue },
      modified: c.modified,
      faults: this.faults(),
      rebuilds: this.rebuilds(),
      reloads: { ...this.reloads },
      last_reload: this.lastReload,
      vm_memory_bytes: this.memoryUsed,
      budgets: { fuel: this.cfg.fuel, memory: this.cfg.memory, timeout_ms: this.cfg.timeoutMs, on_fault: this.cfg.onFault },
      stats: Object.fromEntries(this.stats),
      services: this.services(),
    }
  }
}

function readU32(b: Uint8Array, p: number): number {
  return (b[p] | (b[p + 1] << 8) | (b[p + 2] << 16) | (b[p + 3] << 24)) >>> 0
}

function sameBytes(a: Uint8Array, b: Uint8Array, off: number, len: number): boolean {
  if (a.length !== len) return false
  for (let i = 0; i < len; i++) if (a[i] !== b[off + i]) return false
  return true
}

export interface TenantSetOptions {
  log: Logger
  /** Builds and starts one engine of a tenant, for one of its queues (the daemon's clock,
   *  sender ...); throws LoadError when the script does not load. */
  start(cfg: TenantConfig, queue: number): Promise<Engine>
  /** Called when `ctl load` creates a tenant, after its engines loaded: bind its queues and
   *  start feeding its lanes. A throw fails the load. Absent: such loads are refused. */
  bind?(slot: TenantSlot): Promise<void>
  /** Called when a tenant is unloaded: stop feeding its lanes and unbind its queues (the daemon
   *  may stop the lanes itself; Lane.stop is idempotent). Absent: unload is refused. */
  unbind?(slot: TenantSlot): Promise<void>
  observer?: SlotObserver
}

export class TenantSet {
  private slots = new Map<string, TenantSlot>()
  private byQueue = new Map<number, Lane>()
  /** configs of tenants ever loaded (an unloaded one can be loaded again by name) */
  private known = new Map<string, TenantConfig>()
  private stopping = false

  constructor(private opts: TenantSetOptions) {}

  get log(): Logger { return this.opts.log }
  get size(): number { return this.slots.size }
  names(): string[] { return [...this.slots.keys()] }
  get(name: string): TenantSlot | undefined { return this.slots.get(name) }
  /** The lane of queue q (what the daemon runs a batch from q through). */
  forQueue(q: number): Lane | undefined { return this.byQueue.get(q) }
  all(): TenantSlot[] { return [...this.slots.values()] }
  knownConfig(name: string): TenantConfig | undefined { return this.known.get(name) }
  get canLoad(): boolean { return this.opts.bind !== undefined }

  private need(name: string): TenantSlot {
    const s = this.slots.get(name)
    if (!s) throw new OpsError(`unknown tenant "${name}"`, 'unknown-tenant')
    return s
  }

  private checkFree(cfg: TenantConfig): void {
    for (const q of cfg.queues) {
      const other = this.byQueue.get(q)
      if (other && other.slot.name !== cfg.name) throw new OpsError(`queue ${q} belongs to tenant "${other.slot.name}"`, 'exists')
    }
  }

  /**
   * The engine of one queue of a tenant, for a daemon that starts its queues itself (the
   * startTenant of src/live/run.ts): the tenant is registered on its first queue.
   */
  async startLane(cfg: TenantConfig, queue: number): Promise<Lane> {
    let slot = this.slots.get(cfg.name)
    if (slot && slot.lanes.some((l) => l.queue === queue)) throw new OpsError(`tenant "${cfg.name}" already runs queue ${queue}`, 'exists')
    this.checkFree(cfg)
    const engine = await this.opts.start(cfg, queue)
    slot = this.slots.get(cfg.name)
    if (!slot) {
      slot = new TenantSlot(cfg)
      this.slots.set(cfg.name, slot)
      this.known.set(cfg.name, cfg)
    }
    const lane = new Lane(slot, queue, engine, this.opts.observer ?? null)
    slot.lanes.push(lane)
    this.byQueue.set(queue, lane)
    return lane
  }

  /** Loads a tenant, one engine per queue (its queues must be free). Throws LoadError or OpsError. */
  async load(cfg: TenantConfig): Promise<TenantSlot> {
    if (this.stopping) throw new OpsError('psd is shutting down', 'busy')
    if (!this.opts.bind) throw new OpsError('this psd cannot bind new queues while it runs: add the tenant to the config and restart', 'bad-request')
    if (this.slots.has(cfg.name)) throw new OpsError(`tenant "${cfg.name}" is already loaded (use reload)`, 'exists')
    this.checkFree(cfg)
    const engines: Engine[] = []
    try {
      for (const q of cfg.queues) engines.push(await this.opts.start(cfg, q))
    } catch (e) {
      for (const en of engines) try { en.stop() } catch { /* failing anyway */ }
      throw e
    }
    if (this.slots.has(cfg.name) || cfg.queues.some((q) => this.byQueue.has(q))) { // lost a race with another load
      for (const en of engines) en.stop()
      throw new OpsError(`tenant "${cfg.name}" or one of its queues was taken meanwhile`, 'exists')
    }
    const slot = new TenantSlot(cfg)
    cfg.queues.forEach((q, i) => slot.lanes.push(new Lane(slot, q, engines[i], this.opts.observer ?? null)))
    this.slots.set(cfg.name, slot)
    for (const l of slot.lanes) this.byQueue.set(l.queue, l)
    this.known.set(cfg.name, cfg)
    try {
      await this.opts.bind(slot)
    } catch (e) {
      this.forget(slot)
      for (const l of slot.lanes) l.stop()
      throw e
    }
    this.log.info('tenant loaded', { tenant: cfg.name, script: cfg.script, queues: cfg.queues })
    return slot
  }

  private forget(slot: TenantSlot): void {
    this.slots.delete(slot.name)
    for (const l of slot.lanes) if (this.byQueue.get(l.queue) === l) this.byQueue.delete(l.queue)
  }

  /** Unloads a tenant: its queues are unbound, the batches in flight finish, on_stop runs. */
  async unload(name: string): Promise<Record<string, unknown>> {
    const slot = this.need(name)
    if (!this.opts.unbind) throw new OpsError('this psd cannot unbind queues while it runs', 'bad-request')
    slot.closed = true
    this.forget(slot)
    try { await this.opts.unbind(slot) } catch (e) { this.log.error(`unbinding the queues of "${name}": ${(e as Error).message}`, { tenant: name }) }
    for (const l of slot.lanes) await l.exclusive(async () => { try { l.stop() } catch (e) { this.log.error((e as Error).message, { tenant: name }) } })
    const last = slot.snapshot()
    this.log.info('tenant unloaded', { tenant: name, packets: last.packets })
    return last
  }

  /**
   * Reloads one tenant, from `script` when given (a new file) or from its own path (re-read).
   * `cfg` replaces its settings (budgets ...) when given; queues cannot change.
   * Never throws for a script that fails: the report says why and the old script keeps running.
   */
  reload(name: string, opts: { script?: string; cfg?: TenantConfig } = {}): Promise<ReloadReport> {
    const slot = this.need(name)
    return slot.serial(() => this.reloadSlot(slot, opts))
  }

  /** Reloads every tenant (SIGHUP), one after the other. */
  async reloadAll(): Promise<ReloadReport[]> {
    const out: ReloadReport[] = []
    for (const slot of this.all()) if (!slot.closed) out.push(await this.reload(slot.name))
    return out
  }

  private async reloadSlot(slot: TenantSlot, opts: { script?: string; cfg?: TenantConfig }): Promise<ReloadReport> {
    const name = slot.name
    if (slot.closed) return this.failed(slot, 'the tenant was unloaded')
    const base = opts.cfg ?? slot.cfg
    if (opts.cfg && opts.cfg.queues.join(',') !== slot.cfg.queues.join(',')) {
      return this.failed(slot, `the queues of a loaded tenant cannot change (${slot.cfg.queues.join(',')} -> ${opts.cfg.queues.join(',')}): unload it and load it again`)
    }
    const cfg: TenantConfig = { ...base, name, queues: slot.cfg.queues, script: opts.script ?? base.script }
    const lanes = [...slot.lanes].sort((a, b) => a.queue - b.queue)
    // the new script, beside the old one, which keeps taking batches meanwhile
    const fresh: Engine[] = []
    try {
      for (const l of lanes) fresh.push(await this.opts.start(cfg, l.queue))
    } catch (e) {
      for (const en of fresh) try { en.stop() } catch { /* failing anyway */ }
      return this.failed(slot, (e as Error).message)
    }
    // between two batches of every lane: on_stop, the state, on_reload; then the swap
    for (const l of lanes) { const w = l.acquire(); if (w) await w }
    const t0 = performance.now()
    let error: string | null = null
    try {
      if (slot.closed || lanes.some((l) => l.closed)) {
        error = 'the tenant was unloaded meanwhile'
      } else {
        const states: (Uint8Array | null)[] = []
        for (const l of lanes) {
          try { states.push(await l.engine.handOff()) } catch (e) {
            error = `the old script's on_stop failed, so it keeps running: ${(e as Error).message}`
            break
          }
        }
        for (let i = 0; error === null && i < lanes.length; i++) {
          try { await fresh[i].takeOver(states[i]) } catch (e) {
            error = `${(e as Error).message}; the old script keeps running (its on_stop has run)`
          }
        }
      }
      if (error === null) {
        const old = lanes.map((l, i) => slot.replace(l, fresh[i]))
        slot.cfg = cfg
        slot.generation++
        slot.loadedAt = new Date()
        for (const o of old) try { o.retire() } catch (e) { this.log.warn(`closing the old VM: ${(e as Error).message}`, { tenant: name }) }
      }
    } finally {
      for (const l of lanes) l.release()
    }
    const switchMs = performance.now() - t0
    if (error !== null) {
      for (const en of fresh) try { en.stop() } catch { /* failing anyway */ }
      return this.failed(slot, error)
    }
    slot.reloads.ok++
    slot.lastReload = { time: new Date().toISOString(), ok: true }
    this.known.set(name, slot.cfg)
    const report: ReloadReport = { tenant: name, ok: true, script: cfg.script, generation: slot.generation, switch_ms: +switchMs.toFixed(3) }
    this.log.info('tenant reloaded', { tenant: name, script: cfg.script, generation: slot.generation, switch_ms: report.switch_ms })
    return report
  }

  private failed(slot: TenantSlot, error: string): ReloadReport {
    slot.reloads.failed++
    slot.lastReload = { time: new Date().toISOString(), ok: false, error }
    this.log.error(`reload failed: ${error}`, { tenant: slot.name })
    return { tenant: slot.name, ok: false, error }
  }

  /** The list of `ctl list`. */
  list(): Record<string, unknown>[] {
    return this.all().map((s) => ({
      name: s.name, script: s.cfg.script, queues: s.cfg.queues, generation: s.generation,
      packets: s.counts.packets, faults: Object.values(s.faults()).reduce((a, b) => a + b, 0),
      loaded_at: s.loadedAt.toISOString(),
    }))
  }

  stats(name?: string): Record<string, unknown>[] {
    if (name !== undefined) return [this.need(name).snapshot()]
    return this.all().map((s) => s.snapshot())
  }

  /** SIGUSR1: one log line per tenant with its stats. */
  logStats(): void {
    for (const s of this.all()) this.log.info('stats', { ...s.snapshot(), tenant: s.name })
    if (this.size === 0) this.log.info('stats: no tenant is loaded')
  }

  /** Shutdown: no new loads; every lane finishes its batch in flight, then on_stop runs. */
  async stopAll(): Promise<void> {
    this.stopping = true
    await Promise.all(this.all().flatMap((slot) => slot.lanes.map((l) => l.exclusive(async () => {
      try { l.stop() } catch (e) { this.log.error((e as Error).message, { tenant: slot.name }) }
    }))))
  }
}
