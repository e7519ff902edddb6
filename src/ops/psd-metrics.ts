// psd's metrics (API.md section 9), by tenant, on a Registry (src/ops/metrics.ts):
//
//   psd_packets_total{tenant,verdict}         verdict: accept, drop, repeat, queue (final verdicts:
//                                             a fault counts under the verdict it was given)
//   psd_modified_total{tenant}                packets sent back with bytes changed
//   psd_faults_total{tenant,kind}             kind: fuel, memory, time, error, crash, verdict
//   psd_script_stat{tenant,name}              the script's stats.inc / stats.set values
//   psd_fuel_used{tenant}                     histogram: VM instructions per packet
//   psd_packet_latency_seconds{tenant}        histogram: from the batch's arrival in psd to its verdicts
//   psd_batch_packets{tenant}                 histogram: packets per batch run
//   psd_vm_memory_bytes{tenant}               bytes the tenant's VM holds
//   psd_vm_rebuilds_total{tenant}             VMs rebuilt from the script after a crash
//   psd_reloads_total{tenant,result}          result: ok, failed
//   psd_tenant_generation{tenant}             1 + reloads that took effect
//   psd_services_total{tenant,name}           defer/timer/net.send counters
//   psd_queue_dropped_total{queue,reason}     the kernel's drops: queue_dropped (queue full),
//                                             user_dropped (psd's socket buffer full)
//   psd_queue_waiting{queue}                  packets the kernel holds for psd now
//   psd_up, psd_start_time_seconds
//
// Counters never go back: a reloaded tenant's series go on from the old script's values.
import { Registry, exponentialBuckets, type Histogram, type HistogramSeries } from './metrics.js'
import type { TenantSet, TenantSlot, SlotObserver } from './tenants.js'
import type { BatchOutput } from '../engine/tenant.js'

export const FAULT_KIND_NAMES = ['fuel', 'memory', 'time', 'error', 'crash', 'verdict'] as const
export const VERDICT_NAMES = ['accept', 'drop', 'repeat', 'queue'] as const

/** One line of /proc/net/netfilter/nfnetlink_queue, as src/live/nfqueue.ts parses it. */
export interface QueueCounters { queue: number; waiting: number; queueDropped: number; userDropped: number }

const LATENCY_BUCKETS = [0.000005, 0.00001, 0.000025, 0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1]
const FUEL_BUCKETS = exponentialBuckets(100, 4, 11) // 100 .. ~100M instructions
const BATCH_BUCKETS = [1, 2, 4, 8, 16, 32, 64, 128, 256, 512]

interface Children { fuel: HistogramSeries; latency: HistogramSeries; batch: HistogramSeries }

export class PsdMetrics implements SlotObserver {
  readonly registry = new Registry()
  private packets = this.registry.counter('psd_packets_total', 'Packets given a verdict, by tenant and final verdict', ['tenant', 'verdict'])
  private modified = this.registry.counter('psd_modified_total', 'Packets sent back with their bytes changed by the script', ['tenant'])
  private faults = this.registry.counter('psd_faults_total', 'Script faults by kind (each got the tenant\'s fault verdict or, for callbacks, none)', ['tenant', 'kind'])
  private stat = this.registry.gauge('psd_script_stat', 'Values the script keeps with stats.inc and stats.set', ['tenant', 'name'])
  private fuel: Histogram = this.registry.histogram('psd_fuel_used', 'VM instructions used per packet', ['tenant'], FUEL_BUCKETS)
  private latency: Histogram = this.registry.histogram('psd_packet_latency_seconds', 'Seconds from a batch reaching the tenant to its verdicts being ready', ['tenant'], LATENCY_BUCKETS)
  private batches: Histogram = this.registry.histogram('psd_batch_packets', 'Packets per batch run by the tenant', ['tenant'], BATCH_BUCKETS)
  private memory = this.registry.gauge('psd_vm_memory_bytes', 'Bytes the tenant\'s Lua VM holds', ['tenant'])
  private rebuilds = this.registry.counter('psd_vm_rebuilds_total', 'VMs rebuilt from the script after a crash', ['tenant'])
  private reloads = this.registry.counter('psd_reloads_total', 'Reloads of the tenant\'s script, by result', ['tenant', 'result'])
  private generation = this.registry.gauge('psd_tenant_generation', 'Script versions the tenant has run (1 + reloads that took effect)', ['tenant'])
  private services = this.registry.counter('psd_services_total', 'Script service events (defer, timer, net.send)', ['tenant', 'name'])
  private queueDropped = this.registry.counter('psd_queue_dropped_total', 'Packets the kernel dropped for a queue: queue_dropped (queue full), user_dropped (socket buffer full)', ['queue', 'reason'])
  private queueWaiting = this.registry.gauge('psd_queue_waiting', 'Packets the kernel holds for psd, waiting for a verdict', ['queue'])
  private up = this.registry.gauge('psd_up', '1 while psd runs')
  private startTime = this.registry.gauge('psd_start_time_seconds', 'When psd started, seconds since the epoch')
  private children = new WeakMap<TenantSlot, Children>()
  private set: TenantSet | null = null

  constructor(private kernelCounters?: () => QueueCounters[]) {
    this.up.set({}, 1)
    this.startTime.set({}, Math.floor(Date.now() / 1000))
    this.registry.onCollect(() => this.collect())
  }

  /** The tenants whose counters the page shows. */
  watch(set: TenantSet): void { this.set = set }

  private childrenOf(slot: TenantSlot): Children {
    let c = this.children.get(slot)
    if (!c) {
      const l = { tenant: slot.name }
      c = { fuel: this.fuel.child(l), latency: this.latency.child(l), batch: this.batches.child(l) }
      this.children.set(slot, c)
    }
    return c
  }

  batch(slot: TenantSlot, count: number, out: BatchOutput, seconds: number, fuel: boolean): void {
    const c = this.childrenOf(slot)
    c.batch.observe(count)
    c.latency.observe(seconds, count)
    if (fuel) for (let k = 0; k < count; k++) c.fuel.observe(out.fuel[k])
  }

  private collect(): void {
    const set = this.set
    if (set) {
      const names = new Set(set.names())
      for (const slot of set.all()) {
        const tenant = slot.name
        this.childrenOf(slot) // the histograms exist from the first scrape on
        const c = slot.counts
        this.packets.set({ tenant, verdict: 'accept' }, c.accept)
        this.packets.set({ tenant, verdict: 'drop' }, c.drop)
        this.packets.set({ tenant, verdict: 'repeat' }, c.repeat)
        this.packets.set({ tenant, verdict: 'queue' }, c.queue)
        this.modified.set({ tenant }, c.modified)
        const f = slot.faults()
        for (const kind of FAULT_KIND_NAMES) this.faults.set({ tenant, kind }, f[kind] ?? 0)
        for (const [kind, n] of Object.entries(f)) if (!(FAULT_KIND_NAMES as readonly string[]).includes(kind)) this.faults.set({ tenant, kind }, n)
        this.stat.remove({ tenant })
        for (const [name, v] of slot.stats) this.stat.set({ tenant, name }, v)
        this.memory.set({ tenant }, slot.memoryUsed)
        this.rebuilds.set({ tenant }, slot.rebuilds())
        this.reloads.set({ tenant, result: 'ok' }, slot.reloads.ok)
        this.reloads.set({ tenant, result: 'failed' }, slot.reloads.failed)
        this.generation.set({ tenant }, slot.generation)
        for (const [name, v] of Object.entries(slot.services())) this.services.set({ tenant, name }, v)
      }
      this.dropUnloaded(names)
    }
    if (this.kernelCounters) {
      let rows: QueueCounters[] = []
      try { rows = this.kernelCounters() } catch { /* no /proc file: no queue bound in this namespace */ }
      const mine = set ? new Set(set.all().flatMap((s) => s.cfg.queues)) : null
      this.queueDropped.clear() // the kernel's table is the truth: a queue psd let go of goes away
      this.queueWaiting.clear()
      for (const r of rows) {
        if (mine && !mine.has(r.queue)) continue
        this.queueDropped.set({ queue: r.queue, reason: 'queue_dropped' }, r.queueDropped)
        this.queueDropped.set({ queue: r.queue, reason: 'user_dropped' }, r.userDropped)
        this.queueWaiting.set({ queue: r.queue }, r.waiting)
      }
    }
  }

  private seen = new Set<string>()
  private dropUnloaded(names: Set<string>): void {
    for (const n of this.seen) if (!names.has(n)) this.registry.remove({ tenant: n })
    this.seen = names
  }
}
