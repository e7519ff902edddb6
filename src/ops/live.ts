// src/ops wired to the live daemon (src/live/run.ts): the tenants by name, the control socket,
// the metrics page, SIGHUP and SIGUSR1, and ctl load/unload binding queues at run time.
import { defaultStartTenant, type LiveOps, type LiveOptions, type LiveTenant } from '../live/run.js'
import { readKernelCounters } from '../live/nfqueue.js'
import { ConfigError, DEFAULTS, type TenantConfig } from '../config.js'
import type { Logger } from '../log.js'
import { Ops } from './daemon.js'
import { DEFAULT_SOCKET } from './control.js'
import type { Engine, TenantSlot } from './tenants.js'

export interface LiveOpsOptions {
  log: Logger
  /** --config, read again on SIGHUP */
  configPath?: string
  /** --metrics or the config's "metrics" */
  metrics?: string
  /** --control or the config's "control"; undefined: DEFAULT_SOCKET if free, else none (a warning) */
  control?: string
  /** the command line's settings, for tenants that `ctl load NAME FILE --queue N` creates */
  defaults?: Partial<Omit<TenantConfig, 'name' | 'script' | 'queues'>>
}

export interface LiveOpsHandle {
  ops: Ops
  /** for runLive: the per-queue engines come from the tenant set */
  startTenant: NonNullable<LiveOptions['startTenant']>
  hooks: LiveOps
  close(): Promise<void>
}

type LiveBinder = Parameters<LiveOps['attach']>[0]

export async function openLiveOps(o: LiveOpsOptions): Promise<LiveOpsHandle> {
  const log = o.log
  let live: LiveBinder | null = null
  const common = {
    log,
    start: (cfg: TenantConfig, queue: number) => defaultStartTenant(cfg, log.child({ queue })) as unknown as Promise<Engine>,
    configPath: o.configPath,
    metrics: o.metrics,
    defaults: { fuel: DEFAULTS.fuel, memory: DEFAULTS.memory, timeoutMs: DEFAULTS.timeoutMs, onFault: DEFAULTS.onFault, send: false, workers: 1, ...o.defaults },
    kernelCounters: readKernelCounters,
    bind: async (slot: TenantSlot) => {
      if (!live) throw new ConfigError('psd is still starting: try again')
      live.bind(slot.cfg, slot.lanes.map((l) => ({ queue: l.queue, tenant: l as LiveTenant })))
    },
    unbind: async (slot: TenantSlot) => { await live?.unbind(slot.lanes.map((l) => l.queue)) },
  }
  let ops: Ops
  if (o.control !== undefined) {
    ops = await Ops.open({ ...common, control: o.control })
  } else {
    try {
      ops = await Ops.open({ ...common, control: DEFAULT_SOCKET })
    } catch (e) {
      if (!String((e as Error).message).includes(DEFAULT_SOCKET)) throw e
      log.warn(`no control socket: ${(e as Error).message} (give another with --control PATH or "control")`)
      ops = await Ops.open({ ...common, control: null })
    }
  }
  return {
    ops,
    startTenant: (cfg, _log, queue) => ops.startTenant(cfg, undefined, queue) as Promise<LiveTenant>,
    hooks: { onHup: ops.onHup, onUsr1: ops.onUsr1, attach: (l) => { live = l } },
    close: () => ops.close(),
  }
}
