// A tenant: one script, its VM, budgets, fault policy and counters. Runs batches and turns the
// VM's per-packet results into final verdicts: a fault gives the tenant's fault verdict and a
// log line with the script's file and line; a VM that cannot go on is rebuilt from the script.
import { readFileSync } from 'node:fs'
import { LuaVM, BatchOutput, LoadError, FAULT_KINDS, type HostServices } from '../../wasm/vm.js'
import type { TenantConfig } from '../config.js'
import type { Logger } from '../log.js'
import { FaultLog } from './fault-log.js'
import { interfaceName } from '../live/ifname.js'
import { TenantServices, TimerPump, type ServicesOptions } from './services.js'
import { RawSender } from '../live/raw-send.js'
import { isMainThread } from 'node:worker_threads'
import { WorkerTenant } from './tenant-worker.js'

export { BatchOutput, LoadError, FAULT_KINDS }

export interface TenantCounters {
  packets: number
  accepted: number
  dropped: number
  modified: number
  faults: Record<string, number>
  rebuilds: number
}

/** Reads a script file; a missing or unreadable file is a LoadError naming it. */
export function readScript(path: string): string {
  try {
    return readFileSync(path, 'utf8')
  } catch (e: any) {
    throw new LoadError(`${path}: cannot read script: ${e.code === 'ENOENT' ? 'no such file' : e.code ?? e.message}`)
  }
}

export class Tenant {
  readonly stats = new Map<string, number>()
  readonly counters: TenantCounters = { packets: 0, accepted: 0, dropped: 0, modified: 0, faults: {}, rebuilds: 0 }
  readonly faultLog: FaultLog
  private vm: LuaVM | null = null
  private source = ''
  /** defer, timer, net: bounds, sender, counters (src/engine/services.ts) */
  readonly services: TenantServices
  private pump: TimerPump | null = null
  /** offline: the capture clock where the last batch left it (a rebuilt VM starts there) */
  private captureNow: bigint | undefined

  private constructor(readonly cfg: TenantConfig, readonly log: Logger, private clock: 'capture' | 'real', svc: TenantServicesOptions = {}) {
    this.faultLog = new FaultLog(log)
    this.services = new TenantServices(cfg, log, svc, (kind) => { this.counters.faults[kind] = (this.counters.faults[kind] ?? 0) + 1 })
    this.captureNow = svc.clockStart
    if (clock === 'real') this.pump = new TimerPump(() => { void this.runTimers() })
  }

  private engine: EngineOptions = {}

  /**
   * Loads the script; throws LoadError (file:line) if it does not load. The VM runs in its own
   * worker thread (tenant-worker.ts: the watchdog can stop a runaway there), unless
   * `engine.inline`: here, in this thread (inside that worker, and for benchmarks).
   */
  static async start(cfg: TenantConfig, log: Logger, clock: 'capture' | 'real', svc: TenantServicesOptions = {},
    engine: EngineOptions = {}): Promise<Tenant> {
    const source = engine.source ?? readScript(cfg.script)
    // Live, net.send goes to a raw socket in the main thread (raw-socket loads in one thread
    // only); a worker forwards its tenant's packets there (tenant-worker.ts).
    if (clock === 'real' && cfg.send && svc.sender === undefined && isMainThread) svc = { ...svc, sender: new RawSender(log) }
    if (!(engine.inline ?? process.env.PSD_ENGINE === 'inline')) {
      return await WorkerTenant.start(cfg, log, clock, svc, source) as unknown as Tenant
    }
    const t = new Tenant(cfg, log.child({ tenant: cfg.name, script: cfg.script }), clock, svc)
    t.engine = engine
    t.source = source
    t.vm = await t.build()
    await t.afterBatch() // deferred calls and timers from the top level and on_start
    return t
  }

  private host(): HostServices {
    const scriptLog = this.log
    return {
      clock: this.clock,
      // live: pkt.indev/outdev names for the kernel's interface indexes (none offline)
      ifname: this.clock === 'real' ? interfaceName : undefined,
      log: (level, msg, where) => scriptLog.log((['debug', 'info', 'warn', 'error'] as const)[level] ?? 'info', msg, { where: where || undefined, source: 'script' }),
      stat: (op, name, value) => {
        if (op === 0) this.stats.set(name, (this.stats.get(name) ?? 0) + value)
        else this.stats.set(name, value)
      },
      services: this.services.host(this.captureNow),
    }
  }

  private async build(): Promise<LuaVM> {
    const vm = await LuaVM.create({
      scriptPath: this.cfg.script, source: this.source, entry: this.cfg.entry,
      fuel: this.cfg.fuel, memory: this.cfg.memory, timeoutMs: this.cfg.timeoutMs, host: this.host(),
      progress: this.engine.progress,
    })
    vm.onPacket = this.engine.onPacket ?? null
    return vm
  }

  get memoryUsed(): number { return this.vm?.memoryUsed ?? 0 }

  /**
   * Runs one batch. Afterwards out.verdict[k] holds each packet's final kernel verdict code
   * (faults already replaced by the fault policy) and out.fault[k] the fault kind index.
   */
  async run(batch: Uint8Array, count: number, out: BatchOutput, ns: ArrayLike<number>): Promise<void> {
    const vm = this.vm!
    const faults = vm.runBatch(batch, count, out)
    if (faults) {
      const policy = this.cfg.onFault === 'drop' ? 0 : 1
      for (let k = 0; k < count; k++) {
        const f = out.fault[k]
        if (!f) continue
        const kind = FAULT_KINDS[f]!
        this.counters.faults[kind] = (this.counters.faults[kind] ?? 0) + 1
        out.verdict[k] = policy
        this.faultLog.report(kind, out.message[k] ?? kind, ns[k])
      }
      const why = vm.rebuildReason
      if (why !== null) await this.rebuild(why)
    }
  }

  /** Replaces a VM that cannot go on with a fresh one from the same script (its globals are lost). */
  async rebuild(why: string): Promise<void> {
    if (this.clock === 'capture' && this.vm) this.captureNow = this.vm.timerClock()
    this.vm?.close()
    this.vm = null
    this.counters.rebuilds++
    this.log.warn(`VM rebuilt from the script after ${why}; the script's globals were lost`)
    this.vm = await this.build()
  }

  stop(): void {
    this.pump?.disarm()
    this.pump = null
    if (!this.vm) { this.services.close(); return }
    this.drainDeferred() // still waiting at the end of the input (offline) or at shutdown
    try { this.vm.callLifecycle('on_stop') } catch (e) { this.log.error((e as Error).message) }
    this.drainDeferred() // queued by on_stop
    const svc = this.services.nonZero()
    if (Object.keys(svc).length) this.log.info('script services', { services: svc })
    this.vm.close()
    this.vm = null
    this.services.close()
  }

  // ---- script services (defer, timer, net): see src/engine/services.ts

  /**
   * Call after each batch's verdicts are on their way: runs the deferred calls (each under its
   * own budgets; a fault is logged and counted, never a verdict) and, live, re-arms the timer
   * pump. Offline, timers fire inside runBatch, between the right two packets.
   */
  async afterBatch(): Promise<void> {
    const vm = this.vm
    if (!vm) return
    if (vm.deferredPending > 0) vm.runDeferred()
    if (vm.isBroken) await this.rebuild('a deferred call crashed the VM')
    if (this.clock === 'capture') this.captureNow = this.vm?.timerClock()
    this.pump?.arm(this.vm?.nextTimerDue ?? null)
  }

  /** Live: fires the timers that are due now, then the calls they deferred. The pump calls this. */
  async runTimers(): Promise<void> {
    const vm = this.vm
    if (!vm) return // being rebuilt: the pump is armed again afterwards
    if (vm.nextTimerDue !== null) vm.runTimers()
    await this.afterBatch()
  }

  /** The earliest timer's due time (on LuaVM.timerClock()), or null. */
  get nextTimerDue(): bigint | null { return this.vm?.nextTimerDue ?? null }

  private drainDeferred(): void {
    const vm = this.vm!
    for (let round = 0; round < 100 && vm.deferredPending > 0 && !vm.isBroken; round++) vm.runDeferred()
    if (vm.deferredPending > 0) {
      this.services.counters.deferred_dropped += vm.deferredPending
      this.log.warn(`${vm.deferredPending} deferred calls still waiting after 100 rounds were dropped`)
    }
  }

  // ---- reload (API.md section 8; driven by src/ops/tenants.ts)

  /**
   * First half of a reload, on the old tenant: runs the deferred calls still waiting, then
   * on_stop, and returns its result written out inside the VM (wasm/lua/state.lua), or null.
   * The VM stays open, so a reload that fails after this leaves this tenant running.
   * Throws LoadError when on_stop faults or returns what cannot be handed over.
   */
  async handOff(): Promise<Uint8Array | null> {
    if (!this.vm) return null
    this.drainDeferred()
    return this.vm.stopWithState()
  }

  /** Second half, on the new tenant: on_reload(old_state) with the old tenant's handOff(). Throws LoadError. */
  async takeOver(state: Uint8Array | null): Promise<void> {
    this.vm!.startWithState(state)
    await this.afterBatch()
  }

  /** Closes a tenant whose on_stop already ran in handOff(). */
  retire(): void {
    this.pump?.disarm()
    this.pump = null
    this.vm?.close()
    this.vm = null
    this.services.close()
  }

  /** Instructions each packet used, in BatchOutput.fuel after run() (for the fuel histogram). */
  measureFuel(on = true): void {
    if (this.vm) this.vm.measureFuel = on
  }
}

export interface TenantServicesOptions extends ServicesOptions {
  /** Offline: the capture's first timestamp, time.now() before the first packet (top level, on_start). */
  clockStart?: bigint
}

/** Where and how a tenant's VM runs (Tenant.start). */
export interface EngineOptions {
  /** Run the VM in this thread instead of a worker of its own (no watchdog: benchmarks, and the worker itself). */
  inline?: boolean
  /** The script's text, when the caller has read it already. */
  source?: string
  /** VmConfig.progress: the slots the watchdog reads. */
  progress?: Int32Array
  /** LuaVM.onPacket: each packet's result as soon as it is final. */
  onPacket?: (k: number) => void
}
