// How psd's cost grows (issue 8, part 3): per-packet cost against packet size (64 B to a 64 KiB
// GSO packet) and against script size (1 to 1000 rules), and memory against the number of
// tenants (1 to 200). Each timing has its baselines in the same run: the same loop with no VM
// (psd bench's baseline) and native lua5.4 running the same script (bench/compare/engines.ts).
// See docs/benchmarks.md for the figures.
//
//   npm run build && node dist/bench/growth.bench.js size    [--rounds 5] [--json F]
//   npm run build && node dist/bench/growth.bench.js rules   [--rounds 5] [--packets 10000] [--json F]
//   npm run build && node dist/bench/growth.bench.js tenants [--json F]
import { writeFileSync, mkdtempSync, readFileSync } from 'node:fs'
import { join } from 'node:path'
import { tmpdir, loadavg } from 'node:os'
import { parseArgs } from 'node:util'
import { spawnSync } from 'node:child_process'
import { fileURLToPath } from 'node:url'
import { CaptureWriter, LINK, ipv4, tcp, makeMixedCapture } from '../test/lib/packets.js'
import { loadPackets, createEngine, disagreements, sourceState, Psd, ROOT, type Engine, type EngineName, type Packets } from './compare/engines.js'
import { summary, paired, median, fmtNs, fmtRatio } from './compare/stats.js'
import { LuaVM, BatchOutput } from '../wasm/vm.js'
import { Tenant } from '../src/engine/tenant.js'
import { Logger } from '../src/log.js'
import { DEFAULTS, type TenantConfig } from '../src/config.js'

const { values, positionals } = parseArgs({
  allowPositionals: true,
  options: {
    rounds: { type: 'string', default: '5' },
    packets: { type: 'string', default: '10000' },
    json: { type: 'string' },
    sizes: { type: 'string' },
    rules: { type: 'string' },
    tenants: { type: 'string' },
    // internal: one tenant-count measurement in a fresh process
    child: { type: 'string' },
    kind: { type: 'string' },
  },
})
const rounds = Number(values.rounds)
const dir = mkdtempSync(join(tmpdir(), 'psd-growth-'))
const log = (s: string) => process.stderr.write(s + '\n')
const list = (s: string | undefined, d: number[]) => s ? s.split(',').map(Number) : d

/** Interleaved timed passes: in each round every engine of every group makes one pass (order
 *  reversed every other round). Returns CPU ns per packet samples by group and engine. */
async function timeRounds(groups: Map<string, Engine[]>, count: (g: string) => number): Promise<Map<string, Map<EngineName, number[]>>> {
  const out = new Map<string, Map<EngineName, number[]>>()
  for (const [g, es] of groups) { out.set(g, new Map(es.map((e) => [e.name, []]))); for (const e of es) await e.pass() } // warm-up
  for (let r = 0; r < rounds; r++) {
    for (const [g, es] of groups) {
      for (const e of r % 2 ? [...es].reverse() : es) {
        const p = await e.pass()
        out.get(g)!.get(e.name)!.push(p.cpuNs / count(g))
      }
    }
    log(`  round ${r + 1}/${rounds}, load ${loadavg()[0].toFixed(2)}`)
  }
  return out
}

async function checked(names: EngineName[], script: string, p: Packets): Promise<Engine[]> {
  const es: Engine[] = []
  for (const n of names) es.push(await createEngine(n, script, p))
  const d = await disagreements(es.filter((e) => e.name !== 'baseline'))
  if (d.length) { for (const x of d) log('VERDICTS DIFFER: ' + x); process.exit(1) }
  return es
}

// ---------------------------------------------------------------- packet size

const SIZE_SCRIPTS: [string, string][] = [
  ['accept-all', 'accept-all'],
  ['ip-tcp', 'ip-tcp'],
  ['http-host', 'http-host'],
  ['payload-find', join(ROOT, 'bench', 'growth', 'payload-find.lua')],
]

/** A capture of `count` IPv4 TCP packets of exactly `size` bytes: HTTP POSTs with a body where
 *  there is room (1 in 8 to a blocked Host, 1 in 8 carrying the payload-find signature), 1 in 8
 *  to port 22; flows vary. */
function sizeCapture(size: number, count: number): string {
  const path = join(dir, `size-${size}.pcap`)
  const w = new CaptureWriter(path, { linktype: LINK.RAW, nano: true, snaplen: 262144 })
  const hdr = 20 + 32 // IPv4 + TCP with the timestamp option
  for (let i = 0; i < count; i++) {
    const room = size - hdr
    const host = i % 8 === 1 ? 'blocked.example' : 'www.example.org'
    let payload = Buffer.alloc(Math.max(0, room), 'a')
    const head = Buffer.from(`POST /upload/${i % 97} HTTP/1.1\r\nHost: ${host}\r\nContent-Type: application/octet-stream\r\nContent-Length: ${Math.max(0, room - 120)}\r\n\r\n`)
    if (room >= head.length) head.copy(payload)
    if (i % 8 === 2 && room >= head.length + 20) Buffer.from('\0evil-signature\0').copy(payload, room - 18)
    if (room < 0) throw new Error(`size ${size} is below the headers (${hdr})`)
    const pkt = ipv4({ src: `10.1.${i % 7}.${1 + (i % 200)}`, dst: `198.51.100.${1 + (i % 13)}`, ttl: 64, df: true },
      tcp({ sport: 40000 + (i % 1000), dport: i % 8 === 3 ? 22 : 80, flags: 'PA', seq: i, ack: 1,
        options: [{ kind: 'nop' }, { kind: 'nop' }, { kind: 'ts', val: i, ecr: 0 }], payload }))
    if (pkt.length !== size) throw new Error(`built ${pkt.length} bytes for size ${size}`)
    w.write(1_700_000_000 + Math.floor(i / 1000), (i % 1000) * 1000, pkt)
  }
  w.close()
  return path
}

async function sizeBench(): Promise<any> {
  const sizes = list(values.sizes, [64, 128, 256, 576, 1500, 4096, 9000, 16384, 32768, 65535])
  const engines: EngineName[] = ['baseline', 'native', 'psd']
  const result: any = { rounds, loadavg_start: loadavg(), sizes: {} }
  const rows: string[] = []
  for (const size of sizes) {
    const count = Math.min(10000, Math.max(256, Math.floor((16 << 20) / size)))
    const p = loadPackets(sizeCapture(size, count))
    log(`size ${size}: ${p.count} packets`)
    const groups = new Map<string, Engine[]>()
    for (const [name, script] of SIZE_SCRIPTS) groups.set(name, await checked(engines, script, p))
    const fuel = new Map<string, number>()
    for (const [name, es] of groups) fuel.set(name, (es.find((e) => e.name === 'psd') as Psd).fuelPerPacket())
    const t = await timeRounds(groups, () => p.count)
    for (const es of groups.values()) for (const e of es) await e.close()
    const r: any = { packets: p.count, scripts: {} }
    for (const [name, m] of t) {
      const psd = m.get('psd')!, nat = m.get('native')!, base = m.get('baseline')!
      r.scripts[name] = {
        psd_ns: summary(psd), native_ns: summary(nat), baseline_ns: summary(base), fuel_per_packet: fuel.get(name),
        psd_over_native: summary(paired(psd, nat)),
      }
      rows.push(`| ${size} | ${name} | ${fmtNs(median(base))} | ${fmtNs(median(psd))} [${fmtNs(summary(psd).p25)}-${fmtNs(summary(psd).p75)}] | ${fmtNs(median(nat))} | ${fmtRatio(median(paired(psd, nat)))} | ${fmtNs(fuel.get(name)!)} |`)
    }
    result.sizes[size] = r
  }
  result.loadavg_end = loadavg()
  console.log(`packet size: CPU ns per packet, median of ${rounds} rounds [quartiles]; psd/native is the paired median; load ${result.loadavg_start[0].toFixed(1)} -> ${result.loadavg_end[0].toFixed(1)}\n`)
  console.log('| IP bytes | script | no VM | psd | native lua5.4 | psd / native | fuel (instr.) |')
  console.log('|---:|---|---:|---:|---:|---:|---:|')
  console.log(rows.join('\n'))
  return result
}

// ---------------------------------------------------------------- script size

/** A script of n rules, as a chain of ifs (each evaluated in turn) or as one table lookup. The
 *  rules match nothing in the capture but the last one (TCP to port 22), so every packet runs
 *  all of them and the verdicts still have drops to compare. */
function rulesScript(n: number, form: 'chain' | 'table'): string {
  const rule = (i: number) => [`198.18.${(i >> 8) & 255}.${i & 255}`, 1000 + (i % 60000)] as const
  const lines = [`-- ${n} rules (${form}), generated by bench/growth.bench.ts`]
  if (form === 'chain') {
    lines.push('function on_packet(pkt)', '  local ip = pkt.ip', '  if ip == nil then return ACCEPT end',
      '  local dst, l4 = ip.dst, pkt.tcp or pkt.udp', '  local dport = l4 and l4.dstport or 0')
    for (let i = 0; i < n - 1; i++) { const [a, port] = rule(i); lines.push(`  if dport == ${port} and dst == '${a}' then return DROP end`) }
    lines.push("  if dport == 22 and pkt.tcp then return DROP end", '  return ACCEPT', 'end')
  } else {
    lines.push('local rules = {}')
    lines.push('local function add(port, addr) local r = rules[port]; if not r then r = {}; rules[port] = r end; r[addr] = true end')
    for (let i = 0; i < n - 1; i++) { const [a, port] = rule(i); lines.push(`add(${port}, '${a}')`) }
    lines.push('function on_packet(pkt)', '  local ip = pkt.ip', '  if ip == nil then return ACCEPT end',
      '  local tcp = pkt.tcp', '  local l4 = tcp or pkt.udp', '  local dport = l4 and l4.dstport or 0',
      '  local r = rules[dport]', '  if r and r[ip.dst] then return DROP end',
      '  if dport == 22 and tcp then return DROP end', '  return ACCEPT', 'end')
  }
  const path = join(dir, `rules-${form}-${n}.lua`)
  writeFileSync(path, lines.join('\n') + '\n')
  return path
}

async function rulesBench(): Promise<any> {
  const counts = list(values.rules, [1, 10, 100, 1000])
  const N = Number(values.packets)
  const pcap = join(dir, `mixed-${N}.pcap`)
  makeMixedCapture(pcap, N, 1)
  const p = loadPackets(pcap)
  const groups = new Map<string, Engine[]>()
  const info = new Map<string, { bytes: number; loadMs: number; memory: number; fuel: number }>()
  ;(await Psd.vm('accept-all')).close() // the wasm compiled once, before any load is timed
  for (const form of ['chain', 'table'] as const) {
    for (const n of counts) {
      const script = rulesScript(n, form)
      let loadMs = Infinity // the best of three loads: creating a VM is short and the machine noisy
      for (let k = 0; k < 3; k++) {
        const t0 = performance.now()
        const vm = await Psd.vm(script)
        loadMs = Math.min(loadMs, performance.now() - t0)
        vm.close()
      }
      const es = await checked(['native', 'psd'], script, p)
      const psd = es.find((e) => e.name === 'psd') as Psd
      info.set(`${form}/${n}`, { bytes: readFileSync(script).length, loadMs, memory: psd.memoryUsed, fuel: psd.fuelPerPacket() })
      groups.set(`${form}/${n}`, es)
    }
  }
  log(`rules: ${p.count} packets`)
  const t = await timeRounds(groups, () => p.count)
  for (const es of groups.values()) for (const e of es) await e.close()
  const result: any = { packets: p.count, rounds, loadavg_end: loadavg(), scripts: {} }
  const rows: string[] = []
  for (const [g, m] of t) {
    const psd = m.get('psd')!, nat = m.get('native')!, i = info.get(g)!
    result.scripts[g] = { ...i, psd_ns: summary(psd), native_ns: summary(nat), psd_over_native: summary(paired(psd, nat)) }
    const [form, n] = g.split('/')
    rows.push(`| ${n} | ${form} | ${fmtNs(i.bytes)} | ${i.loadMs.toFixed(1)} | ${fmtNs(i.memory)} | ${fmtNs(i.fuel)} | ${fmtNs(median(psd))} [${fmtNs(summary(psd).p25)}-${fmtNs(summary(psd).p75)}] | ${fmtNs(median(nat))} | ${fmtRatio(median(paired(psd, nat)))} |`)
  }
  console.log(`script size: ${p.count} mixed packets, CPU ns per packet, median of ${rounds} rounds [quartiles]; load at the end ${result.loadavg_end[0].toFixed(1)}\n`)
  console.log('| rules | form | script bytes | load ms (psd, best of 3) | VM bytes after a pass (with garbage) | fuel / packet | psd ns | native ns | psd / native |')
  console.log('|---:|---|---:|---:|---:|---:|---:|---:|---:|')
  console.log(rows.join('\n'))
  return result
}

// ---------------------------------------------------------------- tenants

function procStatus(): Record<string, number> {
  const s = readFileSync('/proc/self/status', 'utf8')
  const kb = (k: string) => Number(new RegExp(`^${k}:\\s+(\\d+) kB`, 'm').exec(s)?.[1] ?? NaN) * 1024
  return { rss: kb('VmRSS'), vmsize: kb('VmSize'), hwm: kb('VmHWM'), threads: Number(/^Threads:\s+(\d+)/m.exec(s)?.[1] ?? NaN) }
}

/** In a fresh process: n tenants of one kind, each fed one batch, then memory after GC. */
async function tenantsChild(n: number, kind: string): Promise<void> {
  const gc = (globalThis as any).gc as () => void
  const p = loadPackets(join(tmpdir(), process.env.PSD_GROWTH_PCAP!))
  const batch = p.batches[0]
  const script = join(ROOT, 'bench', 'compare', 'filters', 'ip-tcp.lua')
  const quiet = new Logger({ format: 'json', level: 'error' })
  // warm the process the same way for every n: modules loaded, the wasm compiled, one VM made and closed
  const warm = await Psd.vm(script); warm.runBatch(batch.bytes, batch.count, new BatchOutput(128)); warm.close()
  gc(); gc()
  const before = { ...process.memoryUsage(), ...procStatus() }
  const keep: { close(): void }[] = []
  const out = new BatchOutput(128)
  const t0 = performance.now()
  for (let i = 0; i < n; i++) {
    if (kind === 'vm') { // a bare VM, as LuaVM.create makes it for a tenant
      const vm = await Psd.vm(script)
      vm.runBatch(batch.bytes, batch.count, out)
      keep.push(vm)
    } else {
      const cfg: TenantConfig = { name: `t${i}`, script, queues: [i], fuel: DEFAULTS.fuel, memory: DEFAULTS.memory, timeoutMs: DEFAULTS.timeoutMs, onFault: 'accept', send: false, workers: 1 }
      const t = await Tenant.start(cfg, quiet, 'capture')
      await t.run(batch.bytes, batch.count, out, new Float64Array(batch.count))
      keep.push({ close: () => t.stop() })
    }
  }
  const createMs = (performance.now() - t0) / Math.max(1, n)
  gc(); gc()
  await new Promise((r) => setTimeout(r, 50))
  gc()
  const after = { ...process.memoryUsage(), ...procStatus() }
  process.stdout.write(JSON.stringify({ n, kind, createMs, before, after }) + '\n')
  for (const k of keep) k.close()
}

async function tenantsBench(): Promise<any> {
  const counts = list(values.tenants, [1, 10, 50, 100, 200])
  const pcapName = `tenants-${process.pid}.pcap`
  makeMixedCapture(join(tmpdir(), pcapName), 256, 3)
  const self = fileURLToPath(import.meta.url)
  const result: any = { points: [] }
  const rows: string[] = []
  // vm: bare LuaVMs in this thread; tenant-inline: Tenant instances with PSD_ENGINE=inline (the
  // VM in the tenant's thread); tenant: Tenant.start as psd calls it (a worker thread per tenant
  // where the build has the worker-per-tenant engine: the Threads column shows which ran)
  const kinds = (values.kind ?? 'vm,tenant-inline,tenant').split(',')
  const label: Record<string, string> = { vm: 'LuaVM, one thread', 'tenant-inline': 'Tenant, PSD_ENGINE=inline', tenant: 'Tenant (default)' }
  const slopes: string[] = []
  for (const kind of kinds) {
    let ref: any = null
    const pts: [number, number][] = []
    for (const n of [0, ...counts]) {
      const env: NodeJS.ProcessEnv = { ...process.env, PSD_GROWTH_PCAP: pcapName }
      if (kind === 'tenant-inline') env.PSD_ENGINE = 'inline'
      else delete env.PSD_ENGINE
      const r = spawnSync(process.execPath, ['--expose-gc', self, 'tenants', '--child', String(n), '--kind', kind],
        { encoding: 'utf8', env, maxBuffer: 1 << 20, timeout: 1_800_000 })
      if (r.status !== 0) { log(r.stderr); throw new Error(`tenants child ${kind} ${n} failed`) }
      const o = JSON.parse(r.stdout.trim().split('\n').pop()!)
      result.points.push(o)
      pts.push([n, o.after.rss])
      log(`tenants ${kind} ${n}: rss ${(o.after.rss / 2 ** 20).toFixed(1)} MiB, ${o.after.threads} threads`)
      if (n === 0) { ref = o.after; continue }
      // against the same process with no tenants (n = 0): everything else in them is the same
      const d = (k: string) => o.after[k] - ref[k]
      rows.push(`| ${label[kind] ?? kind} | ${n} | ${o.after.threads} | ${(o.after.rss / 2 ** 20).toFixed(1)} | ${(d('rss') / 2 ** 20).toFixed(1)} | ${fmtNs(d('rss') / n / 1024)} | ${fmtNs(d('heapUsed') / n / 1024)} | ${fmtNs(d('external') / n / 1024)} | ${(d('vmsize') / n / 2 ** 30).toFixed(2)} | ${o.createMs.toFixed(1)} |`)
    }
    // the marginal cost of one more tenant: least-squares slope of RSS over N (a process's RSS
    // wanders by a few MiB between runs, so single small-N deltas mean little)
    const mx = pts.reduce((a, p) => a + p[0], 0) / pts.length, my = pts.reduce((a, p) => a + p[1], 0) / pts.length
    const slope = pts.reduce((a, p) => a + (p[0] - mx) * (p[1] - my), 0) / pts.reduce((a, p) => a + (p[0] - mx) ** 2, 0)
    result[`rss_slope_${kind}`] = slope
    slopes.push(`${label[kind] ?? kind}: ${fmtNs(slope / 1024)} KiB RSS per tenant (least-squares slope over N = ${pts.map((p) => p[0]).join(', ')})`)
  }
  console.log('tenants: N tenants in one process (the ip-tcp script, one batch of 128 packets each), memory after GC; deltas against the same process with no tenants (N = 0)\n')
  console.log('| design measured | N | threads | RSS MiB | RSS delta MiB | RSS KiB / tenant | JS heap KiB / tenant | external KiB / tenant | virtual GiB / tenant | create ms / tenant |')
  console.log('|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|')
  console.log(rows.join('\n'))
  console.log('\n' + slopes.join('\n'))
  return result
}

// ---------------------------------------------------------------- main

if (values.child !== undefined) {
  await tenantsChild(Number(values.child), values.kind ?? 'vm')
  process.exit(0) // tenants' worker threads, if any, go with the process
} else {
  const what = positionals[0] ?? 'all'
  const source = sourceState()
  log(`source: commit ${source.commit}${source.modified.length ? `, working tree differs in ${source.modified.join(' ')}` : ''}`)
  const result: any = { node: process.version, source }
  if (what === 'size' || what === 'all') result.size = await sizeBench()
  if (what === 'rules' || what === 'all') result.rules = await rulesBench()
  if (what === 'tenants' || what === 'all') result.tenants = await tenantsBench()
  if (!['size', 'rules', 'tenants', 'all'].includes(what)) { log('usage: growth.bench.js size|rules|tenants|all'); process.exit(2) }
  if (values.json) writeFileSync(values.json, JSON.stringify(result, null, 1) + '\n')
}
