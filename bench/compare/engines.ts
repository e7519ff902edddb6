// The engines of the comparison (issue 8, part 1): the same filter, the same packets, four ways.
//
//   psd            the script in psd's VM (wasm/vm.ts LuaVM.runBatch over psd's batches of 128
//                  records), budgets as the CLI sets them (fuel hook, memory accounting);
//                  psd-unmetered: the same VM with metering off (LuaVM's benchmark switch)
//   native         Debian's lua5.4 running psd's own Lua layer (wasm/lua/*.lua, unchanged,
//                  through bench/compare/shim.lua) and the script, unchanged, over the same batch
//                  strings; a child process timing itself with os.clock (native.lua);
//                  native-hook: with a count hook re-armed per packet as psd re-arms its own
//   wasmoon-hl     the same shim, prelude and script in wasmoon's high-level API as a newcomer
//                  calls it: createEngine(), doString(), global.get(), then one call per packet
//                  (the record's bytes as a JS string: see WasmoonHl for why and how)
//   js             the filter written in plain JavaScript over Buffers (js-filters.ts)
//
// Every engine reports per pass: CPU time (process.cpuUsage for the engines in this process,
// os.clock in the native child), wall time, and its verdict counts; verdicts() gives every
// packet's verdict code (1 accept, 0 drop, -1 fault) so a driver can check that all agree.
import { readFileSync, writeFileSync } from 'node:fs'
import { join, dirname } from 'node:path'
import { fileURLToPath } from 'node:url'
import { spawn, execFileSync, type ChildProcessWithoutNullStreams } from 'node:child_process'
import { createInterface } from 'node:readline'
import { LuaFactory } from 'wasmoon'
import { loadBatches } from '../../src/cli/bench.js'
import { HDR } from '../../src/batch-format.js'
import { LuaVM, BatchOutput } from '../../wasm/vm.js'
import { DEFAULTS } from '../../src/config.js'
import { JS_FILTERS } from './js-filters.js'

const here = dirname(fileURLToPath(import.meta.url))
/** The repository (this file runs from dist/bench/compare/). */
export const ROOT = join(here, '..', '..', '..')
export const FILTERS = ['accept-all', 'ip-tcp', 'http-host', 'dns-block'] as const
export type FilterName = typeof FILTERS[number]
/** A comparison filter's file; a name ending in .lua is a script path already (growth benchmarks). */
export const filterPath = (name: string): string => name.endsWith('.lua') ? name : join(ROOT, 'bench', 'compare', 'filters', `${name}.lua`)
export const ENGINES = ['native', 'native-hook', 'psd', 'psd-unmetered', 'wasmoon-hl', 'js'] as const
/** Further engines, on request: psd with the fuel hook but no memory accounting (where the budgets'
 *  cost goes), the loop with no VM at all (psd bench's baseline), and wasmoon's high-level API
 *  with the packet sent as hex (the obvious binary-safe way; WasmoonHl). */
export const EXTRA_ENGINES = ['psd-fuel-only', 'baseline', 'wasmoon-hl-hex'] as const
export type EngineName = typeof ENGINES[number] | typeof EXTRA_ENGINES[number]
/** lua5.4, or what PSD_LUA names. */
export const LUA = process.env.PSD_LUA ?? 'lua5.4'

/** The prelude files in the order psd loads them (read from wasm/vm.ts, so the two never drift). */
export function preludeFiles(): string[] {
  const src = readFileSync(join(ROOT, 'wasm', 'vm.ts'), 'utf8')
  const m = /const PRELUDE = \[([^\]]*)\]/.exec(src)
  if (!m) throw new Error('wasm/vm.ts: cannot find the PRELUDE list')
  return [...m[1].matchAll(/'([^']+)'/g)].map((x) => x[1])
}

/** The commit measured, and the files of the engine (wasm/, src/) that differ from it: the
 *  benchmarks run the working tree, so a figure says what it ran. */
export function sourceState(): { commit: string; modified: string[] } {
  const git = (...a: string[]) => { try { return execFileSync('git', ['-C', ROOT, ...a], { encoding: 'utf8' }).trimEnd() } catch { return '' } }
  const modified = git('status', '--porcelain', '--', 'wasm', 'src').split('\n').filter(Boolean).map((l) => l.slice(3))
  return { commit: git('rev-parse', '--short', 'HEAD') || 'unknown', modified }
}

// ---------------------------------------------------------------- packets

export interface Packets {
  pcap: string
  count: number
  /** IP bytes in total */
  bytes: number
  /** psd's batches (src/cli/bench.ts loadBatches: 128 records a batch) */
  batches: { bytes: Uint8Array; count: number }[]
  /** each packet as a one-record batch (record header + IP bytes) */
  records: Buffer[]
  /** each packet's IP bytes */
  ip: Buffer[]
  /** the batches as one file for the native engine, written on first use */
  file?: string
}

export function loadPackets(pcap: string): Packets {
  const { batches, packets, singles } = loadBatches(pcap)
  const records = singles.map((s) => Buffer.from(s.bytes.buffer, s.bytes.byteOffset, s.bytes.byteLength))
  const ip = records.map((r) => r.subarray(HDR, HDR + r.readUInt32LE(4)))
  return { pcap, count: packets, bytes: ip.reduce((n, b) => n + b.length, 0), batches, records, ip }
}

/** 'PSDB', u32 batches, then per batch u32 count, u32 bytes, the batch (little-endian). */
export function packetsFile(p: Packets): string {
  if (p.file) return p.file
  const parts: Buffer[] = [Buffer.from('PSDB'), u32s(p.batches.length)]
  for (const b of p.batches) parts.push(u32s(b.count, b.bytes.length), Buffer.from(b.bytes.buffer, b.bytes.byteOffset, b.bytes.byteLength))
  p.file = p.pcap.replace(/\.pcap(ng)?$/, '') + '.psdb'
  writeFileSync(p.file, Buffer.concat(parts))
  return p.file
}

function u32s(...v: number[]): Buffer {
  const b = Buffer.alloc(4 * v.length)
  v.forEach((x, i) => b.writeUInt32LE(x, 4 * i))
  return b
}

// ---------------------------------------------------------------- engines

export interface PassResult { cpuNs: number; wallNs: number; accepted: number; dropped: number; faults: number }

export interface Engine {
  readonly name: EngineName
  readonly filter: string
  /** One timed pass over every packet. */
  pass(): Promise<PassResult>
  /** Every packet's verdict code, in order (1 accept, 0 drop, -1 fault, other codes as they are). */
  verdicts(): Promise<Int32Array>
  close(): Promise<void>
}

function cpuNow(): number { const c = process.cpuUsage(); return (c.user + c.system) * 1000 }

function tally(v: ArrayLike<number>, n: number): { accepted: number; dropped: number; faults: number } {
  let accepted = 0, dropped = 0, faults = 0
  for (let i = 0; i < n; i++) { const x = v[i]; if (x === 0) dropped++; else if (x < 0) faults++; else accepted++ }
  return { accepted, dropped, faults }
}

/** An engine that runs in this process: one pass fills `v` with every packet's verdict. */
abstract class InProcess implements Engine {
  protected v: Int32Array
  constructor(readonly name: EngineName, readonly filter: string, protected p: Packets) { this.v = new Int32Array(p.count) }
  protected abstract run(): void
  async pass(): Promise<PassResult> {
    const c0 = cpuNow(), t0 = process.hrtime.bigint()
    this.run()
    const wallNs = Number(process.hrtime.bigint() - t0), cpuNs = cpuNow() - c0
    return { cpuNs, wallNs, ...tally(this.v, this.p.count) }
  }
  async verdicts(): Promise<Int32Array> { this.run(); return this.v.slice() }
  async close(): Promise<void> {}
}

/** psd's VM, driven as `psd bench` drives it: runBatch over the batches, verdicts read back. */
export class Psd extends InProcess {
  private constructor(name: EngineName, filter: string, p: Packets, private vm: LuaVM, private out: BatchOutput) { super(name, filter, p) }
  static async create(filter: string, p: Packets, metering: 'all' | 'none' | 'fuel' = 'all'): Promise<Psd> {
    const vm = await Psd.vm(filter, metering)
    return new Psd(metering === 'all' ? 'psd' : metering === 'none' ? 'psd-unmetered' : 'psd-fuel-only', filter, p, vm, new BatchOutput(128))
  }
  /** A VM as psd builds one for the CLI (default budgets), with metering as asked. */
  static vm(filter: string, metering: 'all' | 'none' | 'fuel' = 'all'): Promise<LuaVM> {
    const script = filterPath(filter)
    return LuaVM.create({
      scriptPath: script, source: readFileSync(script, 'utf8'),
      fuel: DEFAULTS.fuel, memory: DEFAULTS.memory, timeoutMs: DEFAULTS.timeoutMs,
      host: { clock: 'capture', log: () => {}, stat: () => {} },
      // budgets off for the cost breakdown: LuaVM's benchmark switch (VmConfig.metering)
      metering: metering === 'all' ? undefined : { fuel: metering === 'fuel', memory: false },
    })
  }
  /** Instructions per packet (one extra pass with fuel measured), metered VMs only. */
  fuelPerPacket(): number {
    const { vm, out } = this
    vm.measureFuel = true
    let fuel = 0
    for (const b of this.p.batches) { vm.runBatch(b.bytes, b.count, out); for (let k = 0; k < b.count; k++) fuel += out.fuel[k] }
    vm.measureFuel = false
    return fuel / this.p.count
  }
  protected run(): void {
    const { vm, out, v } = this
    let i = 0
    for (const b of this.p.batches) {
      vm.runBatch(b.bytes, b.count, out)
      for (let k = 0; k < b.count; k++) v[i++] = out.fault[k] ? -1 : out.verdict[k]
    }
  }
  get memoryUsed(): number { return this.vm.memoryUsed }
  override async close(): Promise<void> { this.vm.close() }
}

/** psd bench's baseline: the same loop over the batches with no VM (verdicts set, read back). */
export class NoVm extends InProcess {
  private out = new BatchOutput(128)
  constructor(filter: string, p: Packets) { super('baseline', filter, p) }
  protected run(): void {
    const { out, v } = this
    let i = 0
    for (const b of this.p.batches) {
      out.verdict.fill(1, 0, b.count); out.mark.fill(-1, 0, b.count); out.fault.fill(0, 0, b.count)
      for (let k = 0; k < b.count; k++) v[i++] = out.fault[k] ? -1 : out.verdict[k]
    }
  }
}

/** The filter in plain JavaScript (js-filters.ts), one call per packet over Buffer views. */
export class Js extends InProcess {
  private f
  constructor(filter: string, p: Packets) {
    super('js', filter, p)
    const f = JS_FILTERS[filter]
    if (!f) throw new Error(`no JavaScript version of filter ${filter}`)
    this.f = f
  }
  protected run(): void {
    const { f, v } = this, ip = this.p.ip
    for (let i = 0; i < ip.length; i++) v[i] = f(ip[i])
  }
}

/**
 * The same Lua (shim.lua + psd's prelude + the script) through wasmoon's high-level API, one
 * call per packet, as a newcomer would call it: `const run = lua.global.get(...)`, `run(x)`.
 *
 * The packet has to cross as something the high-level API can carry. A JS string is pushed
 * with lua_pushstring as UTF-8: cut at the first NUL and every byte >= 0x80 re-encoded. A
 * Uint8Array arrives as a proxy whose every index is a JS call (measured: ~2.6 ms for a
 * 450-byte packet copied into a Lua string). Hex decoded in Lua (gsub over a table) costs
 * ~60 us. The cheapest found, used here: the record as a latin1 string with NUL sent as
 * U+0100; Lua maps U+0100 back to NUL with one gsub and turns the code points into bytes with
 * string.char(utf8.codepoint(s, 1, -1)): two C calls, no Lua loop over the bytes.
 */
export class WasmoonHl extends InProcess {
  private constructor(filter: string, p: Packets, private call: (s: string) => unknown, private encode: (b: Buffer) => string, hex: boolean) {
    super(hex ? 'wasmoon-hl-hex' : 'wasmoon-hl', filter, p)
  }
  static async create(filter: string, p: Packets, opts: { hex?: boolean } = {}): Promise<WasmoonHl> {
    const lua = await new LuaFactory().createEngine()
    await lua.doString(readFileSync(join(ROOT, 'bench', 'compare', 'shim.lua'), 'utf8'))
    await lua.doString(`
      function psd_setup_hl(hex, script_source, script_name, ...)
        local prelude, n = {}, select('#', ...)
        for i = 1, n, 2 do prelude[#prelude + 1] = { (select(i, ...)), (select(i + 1, ...)) } end
        local record = psd_setup(prelude, script_source, script_name, {}).record
        local char, codepoint, gsub, format = string.char, utf8.codepoint, string.gsub, string.format
        if hex then
          local bytes = {}
          for i = 0, 255 do bytes[format('%02x', i)] = char(i) end
          return function(s) return record((gsub(s, '%x%x', bytes))) end
        end
        return function(s) return record(char(codepoint(gsub(s, '\\196\\128', '\\0'), 1, -1))) end
      end`)
    const setup = lua.global.get('psd_setup_hl') as (hex: boolean, ...a: string[]) => (s: string) => unknown
    const script = filterPath(filter)
    const prelude = preludeFiles().flatMap((f) => [f, readFileSync(join(ROOT, 'wasm', 'lua', f), 'utf8')])
    const call = setup(opts.hex === true, readFileSync(script, 'utf8'), script, ...prelude)
    if (typeof call !== 'function') throw new Error('wasmoon: psd_setup_hl did not return a function')
    return new WasmoonHl(filter, p, call, opts.hex ? (b) => b.toString('hex') : encode, opts.hex === true)
  }
  protected run(): void {
    const { call, v, encode } = this, recs = this.p.records
    for (let i = 0; i < recs.length; i++) v[i] = Number(call(encode(recs[i])) ?? -1)
  }
}

/** A record's bytes as a string wasmoon's lua_pushstring carries whole (see WasmoonHl). */
export function encode(b: Buffer): string { return b.toString('latin1').replaceAll('\0', '\u0100') }

/** Debian's lua5.4 in a child process (native.lua): one Lua state per filter and variant. */
export class Native implements Engine {
  private lines: AsyncIterableIterator<string>
  private constructor(readonly name: EngineName, readonly filter: string, private child: ChildProcessWithoutNullStreams, private count: number) {
    this.lines = createInterface({ input: child.stdout })[Symbol.asyncIterator]()
  }
  static async create(filter: string, p: Packets, hook = false): Promise<Native> {
    const child = spawn(LUA, [join(ROOT, 'bench', 'compare', 'native.lua'), ROOT, filterPath(filter), packetsFile(p),
      hook ? 'hook' : 'plain', ...preludeFiles()], { stdio: ['pipe', 'pipe', 'pipe'] })
    let stderr = ''
    child.stderr.on('data', (d) => { stderr += d })
    const failed = new Promise<never>((_, reject) => child.on('error', (e) => reject(new Error(`${LUA}: ${e.message}`))))
    const n = new Native(hook ? 'native-hook' : 'native', filter, child, p.count)
    const first = await Promise.race([n.lines.next(), failed])
    if (first.done || !first.value.startsWith('ready')) {
      await new Promise((r) => child.once('close', r))
      throw new Error(`${LUA} native.lua (${filter}) did not start: ${first.value ?? ''} ${stderr.trim()}`)
    }
    const m = /packets=(\d+)/.exec(first.value)
    if (!m || +m[1] !== p.count) throw new Error(`native.lua read ${m?.[1]} packets, expected ${p.count}`)
    return n
  }
  private async ask(cmd: string): Promise<string> {
    this.child.stdin.write(cmd + '\n')
    const r = await this.lines.next()
    if (r.done) throw new Error(`native.lua (${this.filter}) exited`)
    if (!r.value.startsWith('ok ')) throw new Error(`native.lua (${this.filter}): ${r.value}`)
    return r.value.slice(3)
  }
  async pass(): Promise<PassResult> {
    const t0 = process.hrtime.bigint()
    const line = await this.ask('pass')
    const wallNs = Number(process.hrtime.bigint() - t0)
    const f = Object.fromEntries(line.split(' ').map((kv) => kv.split('='))) as Record<string, string>
    return { cpuNs: Number(f.cpu) * 1e9, wallNs, accepted: +f.accepted, dropped: +f.dropped, faults: +f.faults }
  }
  async verdicts(): Promise<Int32Array> {
    const v = Int32Array.from((await this.ask('verdicts')).split(','), Number)
    if (v.length !== this.count) throw new Error(`native.lua gave ${v.length} verdicts for ${this.count} packets`)
    return v
  }
  async close(): Promise<void> {
    if (this.child.exitCode !== null) return
    const closed = new Promise((r) => this.child.once('close', r))
    this.child.stdin.end('quit\n')
    await closed
  }
}

export async function createEngine(name: EngineName, filter: string, p: Packets): Promise<Engine> {
  switch (name) {
    case 'psd': return Psd.create(filter, p, 'all')
    case 'psd-unmetered': return Psd.create(filter, p, 'none')
    case 'psd-fuel-only': return Psd.create(filter, p, 'fuel')
    case 'baseline': return new NoVm(filter, p)
    case 'native': return Native.create(filter, p, false)
    case 'native-hook': return Native.create(filter, p, true)
    case 'wasmoon-hl': return WasmoonHl.create(filter, p)
    case 'wasmoon-hl-hex': return WasmoonHl.create(filter, p, { hex: true })
    case 'js': return new Js(filter, p)
  }
}

/** Verdicts of every engine for one filter; the first disagreement per engine, or none. */
export async function disagreements(engines: Engine[]): Promise<string[]> {
  const all: { e: Engine; v: Int32Array }[] = []
  for (const e of engines) all.push({ e, v: await e.verdicts() })
  const [ref, ...rest] = all
  const out: string[] = []
  for (const { e, v } of rest) {
    if (v.length !== ref.v.length) { out.push(`${e.name}: ${v.length} verdicts, ${ref.e.name}: ${ref.v.length}`); continue }
    let diff = 0, first = -1
    for (let i = 0; i < v.length; i++) if (v[i] !== ref.v[i]) { diff++; if (first < 0) first = i }
    if (diff) out.push(`${e.filter}: ${e.name} differs from ${ref.e.name} on ${diff} packets, first packet #${first + 1}: ${v[first]} vs ${ref.v[first]}`)
  }
  return out
}
