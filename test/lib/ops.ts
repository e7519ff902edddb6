// Helpers for the operations tests (test/90.ops.*): tenants over real VMs (no stub engine),
// batches of UDP packets built in memory, a TenantSet whose queues are "bound" in memory.
import { openSync, writeFileSync } from 'node:fs'
import { join } from 'node:path'
import { Tenant, BatchOutput } from '../../src/engine/tenant.js'
import { TenantSet, type TenantSlot } from '../../src/ops/tenants.js'
import { DEFAULTS, type TenantConfig } from '../../src/config.js'
import { Logger } from '../../src/log.js'
import { writeRecord } from '../../src/batch-format.js'
import { MAX_BATCH_BYTES } from '../../wasm/vm.js'
import { ipv4, udp } from './packets.js'

/** Log lines go to a file (fd) or nowhere: tests read them back where they need to. */
export function quietLog(fd?: number): Logger {
  return new Logger({ format: 'json', level: 'debug', fd: fd ?? openSync('/dev/null', 'a') })
}

export function tenantCfg(name: string, script: string, queues: number[] = [0], extra: Partial<TenantConfig> = {}): TenantConfig {
  return { name, script, queues, fuel: DEFAULTS.fuel, memory: DEFAULTS.memory, timeoutMs: DEFAULTS.timeoutMs, onFault: 'accept', send: false, workers: 1, ...extra }
}

/** A TenantSet over real Tenants; bind/unbind only record what they were asked. */
export function memorySet(log: Logger, observer?: any): { set: TenantSet; bound: string[] } {
  const bound: string[] = []
  const set = new TenantSet({
    log,
    start: (cfg) => Tenant.start(cfg, log, 'real'),
    bind: async (slot: TenantSlot) => { bound.push(`+${slot.name}`) },
    unbind: async (slot: TenantSlot) => { bound.push(`-${slot.name}`) },
    observer,
  })
  return { set, bound }
}

/** A batch of `count` UDP packets to port 9999; packet i's payload starts with first(i). */
export function udpBatch(count: number, first: (i: number) => string = () => 'A', startId = 1) {
  const batch = new Uint8Array(MAX_BATCH_BYTES)
  const view = new DataView(batch.buffer)
  let pos = 0
  const ns = new Float64Array(count)
  for (let i = 0; i < count; i++) {
    const p = ipv4({ src: '10.0.0.1', dst: '10.0.0.2' }, udp({ sport: 40000, dport: 9999, payload: `${first(i)}${String(startId + i).padStart(8, '0')}` }))
    pos = writeRecord(batch, view, pos, p, { id: startId + i, origlen: p.length, sec: 1_700_000_000, nsec: 0, family: 4 })
    ns[i] = startId + i
  }
  return { batch: batch.subarray(0, pos), count, out: new BatchOutput(count), ns }
}

export function writeScript(dir: string, name: string, text: string): string {
  const p = join(dir, name)
  writeFileSync(p, text)
  return p
}

/**
 * The script of the reload tests, version `version`: it counts packets (total, and X packets
 * dropped and accepted) in a table that on_stop hands to the next version (on_reload), counts
 * versions the same way, and drops packets whose payload starts with X in even versions (so a
 * packet's fate shows which version met it). stats: the carried counts, and v<N>: packets that
 * version N saw.
 */
export function versionScript(version: number): string {
  return `
local VERSION = ${version}
local st = { total = 0, gen = 1, x_dropped = 0, x_accepted = 0 }
local seen = 0
function on_reload(old)
  st = old
  st.gen = old.gen + 1
  stats.set('generation', st.gen)
end
function on_packet(pkt)
  st.total = st.total + 1
  seen = seen + 1
  stats.set('total', st.total)
  stats.set('v${version}', seen)
  local p = pkt.udp and pkt.udp.payload
  if p and p:sub(1, 1) == 'X' then
    if VERSION % 2 == 0 then
      st.x_dropped = st.x_dropped + 1
      stats.set('x_dropped', st.x_dropped)
      return DROP
    end
    st.x_accepted = st.x_accepted + 1
    stats.set('x_accepted', st.x_accepted)
  end
  return ACCEPT
end
function on_stop() return st end
`
}
