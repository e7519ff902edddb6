// Operations around the live daemon: the tenants by name (TenantSet), the control socket, the
// metrics page and the signals SIGHUP (reload) and SIGUSR1 (stats to the log). The daemon's
// queue loop gets its per-queue engines from Ops.startTenant and runs batches through them;
// everything an operator does goes through here.
import type { Server as HttpServer } from 'node:http'
import type { Server as NetServer } from 'node:net'
import { loadConfigFile, ConfigError, type TenantConfig } from '../config.js'
import type { Logger } from '../log.js'
import { TenantSet, type Engine, type Lane, type TenantSlot, type ReloadReport } from './tenants.js'
import { PsdMetrics, type QueueCounters } from './psd-metrics.js'
import { serveMetrics } from './metrics.js'
import { serveControl } from './control.js'

export interface OpsOptions {
  log: Logger
  /** Starts one engine of a tenant for one queue (the daemon's Tenant.start with the real clock). */
  start(cfg: TenantConfig, queue: number): Promise<Engine>
  /** --config: SIGHUP and `ctl reload` (no name) re-read it. */
  configPath?: string
  /** --metrics HOST:PORT */
  metrics?: string
  /** control socket path (null: none) */
  control?: string | null
  /** settings for a tenant that `ctl load NAME FILE --queue N` creates (the command line's) */
  defaults: Omit<TenantConfig, 'name' | 'script' | 'queues'>
  /** the kernel's per-queue counters (src/live/nfqueue.ts readKernelCounters) */
  kernelCounters?: () => QueueCounters[]
  /** the daemon binds and unbinds queues of tenants loaded and unloaded at run time */
  bind?(slot: TenantSlot): Promise<void>
  unbind?(slot: TenantSlot): Promise<void>
}

export class Ops {
  readonly set: TenantSet
  readonly metrics: PsdMetrics | null
  private http: HttpServer | null = null
  private control: NetServer | null = null
  private signals: (() => void) | null = null
  private hupRunning: Promise<unknown> = Promise.resolve()

  private constructor(private opts: OpsOptions) {
    this.metrics = opts.metrics ? new PsdMetrics(opts.kernelCounters) : null
    this.set = new TenantSet({ log: opts.log, start: opts.start, bind: opts.bind, unbind: opts.unbind, observer: this.metrics ?? undefined })
    this.metrics?.watch(this.set)
  }

  /** Creates the set and opens the metrics page and the control socket (errors name them). */
  static async open(opts: OpsOptions): Promise<Ops> {
    const ops = new Ops(opts)
    try {
      if (opts.metrics && ops.metrics) {
        try {
          ops.http = await serveMetrics(ops.metrics.registry, opts.metrics)
        } catch (e) {
          throw new ConfigError(`--metrics ${opts.metrics}: cannot listen: ${(e as NodeJS.ErrnoException).code ?? (e as Error).message}`)
        }
        opts.log.info('metrics', { url: `http://${opts.metrics}/metrics` })
      }
      if (opts.control) {
        try {
          ops.control = await serveControl(opts.control, {
            set: ops.set, log: opts.log,
            newTenant: (name, script, queues) => ({ ...opts.defaults, name, script, queues }),
            reloadAll: () => ops.reloadAll('ctl'),
          })
        } catch (e) {
          throw new ConfigError((e as Error).message)
        }
        opts.log.info('control socket', { path: opts.control })
      }
    } catch (e) {
      await ops.close()
      throw e
    }
    return ops
  }

  /**
   * The engine of one queue of a tenant, for the daemon's queue loop (src/live/run.ts
   * startTenant). Without `queue`, the tenant's next queue that has no engine yet.
   */
  startTenant = async (cfg: TenantConfig, _log?: Logger, queue?: number): Promise<Lane> => {
    const have = this.set.get(cfg.name)?.lanes.map((l) => l.queue) ?? []
    const q = queue ?? cfg.queues.find((x) => !have.includes(x))
    if (q === undefined) throw new Error(`tenant ${cfg.name}: every queue already has an engine`)
    return this.set.startLane(cfg, q)
  }

  /**
   * SIGHUP and `ctl reload` without a name: with --config, the file is read again first (new
   * budgets and script paths apply; a tenant added or removed there is loaded or unloaded where
   * the daemon can bind queues at run time); then every tenant reloads from its script file.
   */
  reloadAll(why: string): Promise<ReloadReport[]> {
    const run = async (): Promise<ReloadReport[]> => {
      const log = this.opts.log
      if (!this.opts.configPath) return this.set.reloadAll()
      let tenants: TenantConfig[]
      try {
        tenants = loadConfigFile(this.opts.configPath).tenants
      } catch (e) {
        log.error(`${why}: the config was not reloaded, nothing changed: ${(e as Error).message}`)
        return [{ tenant: '*', ok: false, error: (e as Error).message }]
      }
      const out: ReloadReport[] = []
      const wanted = new Set(tenants.map((t) => t.name))
      for (const slot of this.set.all()) {
        if (wanted.has(slot.name)) continue
        if (!this.set.canLoad) { log.warn(`${why}: tenant "${slot.name}" is no longer in the config; restart psd to remove it`, { tenant: slot.name }); continue }
        await this.set.unload(slot.name)
        out.push({ tenant: slot.name, ok: true })
      }
      for (const cfg of tenants) {
        if (this.set.get(cfg.name)) out.push(await this.set.reload(cfg.name, { cfg }))
        else if (this.set.canLoad) {
          try { await this.set.load(cfg); out.push({ tenant: cfg.name, ok: true, script: cfg.script, generation: 1 }) } catch (e) { out.push({ tenant: cfg.name, ok: false, error: (e as Error).message }) }
        } else {
          log.warn(`${why}: tenant "${cfg.name}" is new in the config; restart psd to start it`, { tenant: cfg.name })
          out.push({ tenant: cfg.name, ok: false, error: 'new in the config: restart psd to start it' })
        }
      }
      return out
    }
    const p = this.hupRunning.then(run, run)
    this.hupRunning = p.catch(() => undefined)
    return p
  }

  /** SIGHUP: every tenant reloads (with --config, the config is read again first). */
  onHup = (): void => {
    this.opts.log.info('SIGHUP: reloading every tenant')
    void this.reloadAll('SIGHUP').then((r) => {
      const failed = r.filter((x) => !x.ok)
      this.opts.log.info('SIGHUP: reload done', { reloaded: r.length - failed.length, failed: failed.length })
    })
  }

  /** SIGUSR1: one stats line per tenant in the log. */
  onUsr1 = (): void => { this.set.logStats() }

  /** Installs onHup and onUsr1 as the SIGHUP and SIGUSR1 handlers; returns their removal. */
  installSignals(): () => void {
    process.on('SIGHUP', this.onHup)
    process.on('SIGUSR1', this.onUsr1)
    this.signals = () => { process.off('SIGHUP', this.onHup); process.off('SIGUSR1', this.onUsr1) }
    return this.signals
  }

  /** Closes the control socket and the metrics page, and removes the signal handlers. */
  async close(): Promise<void> {
    this.signals?.()
    this.signals = null
    const closing: Promise<void>[] = []
    if (this.control) { const c = this.control; closing.push(new Promise((r) => c.close(() => r()))); this.control = null }
    if (this.http) { const h = this.http; h.closeAllConnections?.(); closing.push(new Promise((r) => h.close(() => r()))); this.http = null }
    await Promise.all(closing)
  }
}
