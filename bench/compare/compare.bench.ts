// The same filter in psd, native Lua 5.4, wasmoon's high-level API and plain JavaScript, on the
// same packets, interleaved (issue 8, part 1). See docs/benchmarks.md for the method and figures.
//
//   npm run build && node dist/bench/compare/compare.bench.js [--packets 20000] [--seed 1]
//       [--iterations 9] [--warmup 2] [--filters a,b] [--engines a,b] [--json FILE]
//
// 1. A deterministic mixed capture (test/lib/packets.ts makeMixedCapture) is read into psd's
//    batches; every engine gets exactly these packets (engines.ts).
// 2. Every engine's verdict for every packet is compared before any timing; one difference and
//    the run stops (exit 1).
// 3. Warm-up passes, then `iterations` rounds; in each, every engine makes one timed pass over all
//    packets, filter by filter, in the order native, psd, native-hook, psd-unmetered, js,
//    wasmoon-hl (reversed every other round), so the pairs compared run seconds apart.
// 4. Reported: CPU ns per packet (median and quartiles over the rounds) and ratios of pairs,
//    both of medians and paired (the median of the per-round ratios).
import { existsSync, writeFileSync, readFileSync } from 'node:fs'
import { join } from 'node:path'
import { tmpdir, loadavg, cpus } from 'node:os'
import { parseArgs } from 'node:util'
import { execFileSync } from 'node:child_process'
import { makeMixedCapture } from '../../test/lib/packets.js'
import { FILTERS, ENGINES, EXTRA_ENGINES, LUA, sourceState, loadPackets, createEngine, disagreements, type Engine, type EngineName } from './engines.js'
import { summary, paired, median, fmtNs, fmtRatio } from './stats.js'

const { values } = parseArgs({
  options: {
    packets: { type: 'string', default: '20000' },
    seed: { type: 'string', default: '1' },
    iterations: { type: 'string', default: '9' },
    warmup: { type: 'string', default: '2' },
    filters: { type: 'string' },
    engines: { type: 'string' },
    json: { type: 'string' },
  },
})
const N = Number(values.packets), seed = Number(values.seed)
const iterations = Number(values.iterations), warmup = Number(values.warmup)
const filters = values.filters ? values.filters.split(',') : [...FILTERS]
const engineNames = (values.engines ? values.engines.split(',') : [...ENGINES]) as EngineName[]
const known: string[] = [...ENGINES, ...EXTRA_ENGINES]
for (const e of engineNames) if (!known.includes(e)) throw new Error(`unknown engine ${e}; engines: ${known.join(', ')}`)
/** The order of a round: the pairs compared most (native/psd) side by side. */
const ORDER: EngineName[] = ['native', 'psd', 'native-hook', 'psd-unmetered', 'psd-fuel-only', 'js', 'wasmoon-hl', 'wasmoon-hl-hex', 'baseline']
const order = ORDER.filter((e) => engineNames.includes(e))

const pcap = join(tmpdir(), `psd-compare-${N}-s${seed}.pcap`)
if (!existsSync(pcap)) makeMixedCapture(pcap, N, seed)
const packets = loadPackets(pcap)
const load0 = loadavg()
const luaVersion = (() => { try { return execFileSync(LUA, ['-v'], { encoding: 'utf8' }).trim() } catch { return `${LUA}: not found` } })()
const wasmoonVersion = JSON.parse(readFileSync(new URL('../../../node_modules/wasmoon/package.json', import.meta.url), 'utf8')).version
const source = sourceState()
log(`source: commit ${source.commit}${source.modified.length ? `, working tree differs in ${source.modified.join(' ')}` : ''}`)
log(`capture ${pcap}: ${packets.count} IP packets, ${packets.bytes} bytes (mean ${Math.round(packets.bytes / packets.count)} B)`)
log(`node ${process.version}, ${luaVersion}, wasmoon ${wasmoonVersion}, ${cpus().length} CPUs (${cpus()[0]?.model}), load ${load0.map((x) => x.toFixed(2)).join(' ')}`)

function log(s: string): void { process.stderr.write(s + '\n') }

// ---- engines, verdicts checked before anything is timed
const engines = new Map<string, Map<EngineName, Engine>>()
const expected = new Map<string, { accepted: number; dropped: number }>()
for (const f of filters) {
  const m = new Map<EngineName, Engine>()
  for (const e of order) m.set(e, await createEngine(e, f, packets))
  const diffs = await disagreements([...m.values()])
  if (diffs.length) { for (const d of diffs) log('VERDICTS DIFFER: ' + d); process.exit(1) }
  engines.set(f, m)
}
log(`verdicts: all ${order.length} engines agree on every packet for ${filters.join(', ')}`)

// ---- warm-up
for (const [f, m] of engines) {
  for (const e of m.values()) {
    for (let i = 0; i < (e.name.startsWith('wasmoon-hl') ? Math.min(1, warmup) : warmup); i++) {
      const r = await e.pass()
      if (i === 0) expected.set(f, { accepted: r.accepted, dropped: r.dropped })
    }
  }
}

// ---- timed rounds
type Samples = { cpu: number[]; wall: number[] }
const samples = new Map<string, Samples>()
const key = (f: string, e: EngineName) => `${f}/${e}`
for (let it = 0; it < iterations; it++) {
  const round = it % 2 ? [...order].reverse() : order
  for (const [f, m] of engines) {
    for (const name of round) {
      const r = await m.get(name)!.pass()
      const x = expected.get(f)!
      if (r.accepted !== x.accepted || r.dropped !== x.dropped || r.faults) {
        log(`${f}/${name}: a timed pass gave ${r.accepted} accepted, ${r.dropped} dropped, ${r.faults} faults; expected ${x.accepted}/${x.dropped}/0`)
        process.exit(1)
      }
      let s = samples.get(key(f, name))
      if (!s) samples.set(key(f, name), s = { cpu: [], wall: [] })
      s.cpu.push(r.cpuNs / packets.count)
      s.wall.push(r.wallNs / packets.count)
    }
  }
  log(`round ${it + 1}/${iterations} done, load ${loadavg()[0].toFixed(2)}`)
}
for (const m of engines.values()) for (const e of m.values()) await e.close()
const load1 = loadavg()

// ---- report
const RATIOS: [EngineName, EngineName, string][] = [
  ['psd', 'native', 'psd / native Lua (target <= 2)'],
  ['psd-unmetered', 'native', 'psd unmetered / native Lua: the cost of WebAssembly'],
  ['psd', 'native-hook', 'psd / native Lua with a fuel hook: like for like'],
  ['psd', 'psd-unmetered', 'psd / psd unmetered: the cost of the budgets'],
  ['psd-fuel-only', 'psd-unmetered', 'psd fuel only / psd unmetered: the fuel hook'],
  ['wasmoon-hl', 'psd-unmetered', 'wasmoon high-level / psd unmetered (the same work)'],
  ['wasmoon-hl', 'psd', 'wasmoon high-level / psd (target >= 10)'],
  ['wasmoon-hl-hex', 'psd', 'wasmoon high-level, packet as hex / psd'],
  ['psd', 'js', 'psd / plain JS: the cost of the sandbox, all in'],
  ['native', 'js', 'native Lua / plain JS'],
]
const result: any = {
  capture: pcap, packets: packets.count, mean_bytes: Math.round(packets.bytes / packets.count), seed, iterations, warmup,
  source, node: process.version, lua: luaVersion, wasmoon: wasmoonVersion, cpus: cpus().length, loadavg: { start: load0, end: load1 },
  filters: {} as Record<string, any>,
}
const out: string[] = []
out.push(`${packets.count} packets (mean ${result.mean_bytes} B), ${iterations} rounds; CPU ns per packet, median [quartiles]; load ${load0[0].toFixed(1)} -> ${load1[0].toFixed(1)}`)
out.push('')
out.push(`| filter | ${order.join(' | ')} |`)
out.push(`|---|${order.map(() => '---:').join('|')}|`)
for (const f of filters) {
  const row = order.map((e) => { const s = summary(samples.get(key(f, e))!.cpu); return `${fmtNs(s.median)} [${fmtNs(s.p25)}-${fmtNs(s.p75)}]` })
  out.push(`| ${f} | ${row.join(' | ')} |`)
}
out.push('')
out.push(`| ratio | ${filters.join(' | ')} |`)
out.push(`|---|${filters.map(() => '---:').join('|')}|`)
for (const [a, b, what] of RATIOS) {
  if (!order.includes(a) || !order.includes(b)) continue
  const cells = filters.map((f) => {
    const sa = samples.get(key(f, a))!.cpu, sb = samples.get(key(f, b))!.cpu
    const pr = summary(paired(sa, sb))
    return `${fmtRatio(median(sa) / median(sb))} (${fmtRatio(pr.median)}; ${fmtRatio(pr.p25)}-${fmtRatio(pr.p75)})`
  })
  out.push(`| ${what} | ${cells.join(' | ')} |`)
}
out.push('')
out.push('ratio cells: of medians (paired median; paired quartiles)')
for (const f of filters) {
  const fr: any = { expected: expected.get(f), engines: {}, ratios: {} }
  for (const e of order) {
    const s = samples.get(key(f, e))!
    fr.engines[e] = { cpu_ns: summary(s.cpu), wall_ns: summary(s.wall), cpu_samples: s.cpu.map(Math.round), wall_samples: s.wall.map(Math.round) }
  }
  for (const [a, b] of RATIOS) {
    if (!order.includes(a) || !order.includes(b)) continue
    const sa = samples.get(key(f, a))!.cpu, sb = samples.get(key(f, b))!.cpu
    fr.ratios[`${a}/${b}`] = { of_medians: median(sa) / median(sb), paired: summary(paired(sa, sb)) }
  }
  result.filters[f] = fr
}
console.log(out.join('\n'))
if (values.json) writeFileSync(values.json, JSON.stringify(result, null, 1) + '\n')
