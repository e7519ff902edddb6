// One tenant's Lua VM: a private wasm instance driven through the raw Lua C API.
//
// The hot path is runBatch(): the batch of packet records is copied once into the wasm heap,
// straight into the one Lua string the VM keeps for batches, and walked by the prelude's P.run
// loop; each packet reports its verdict through a host function (accept, drop, done), which
// also re-arms the fuel hook and hands P.run the next record. One lua_pcallk per batch, no
// JavaScript object ever enters the VM.
//
// Budgets live here too: fuel is a count hook (re-armed per call, made cheap by
// wasm/count-hook-patch.ts; once spent it fires at every jump, call and return so pcall cannot
// swallow it), memory is a byte cap counted by a wasm allocator on every allocation
// (wasm/loader.ts, plus the wasm memory's own maximum), time is checked by the same hook every
// HOOK_PERIOD instructions and after every ALLOC_CHECK_BYTES allocated. Library calls that work
// without allocating are charged fuel by the sandbox (H.charge). A runaway inside one C library
// call is beyond any hook: the watchdog (src/engine/watchdog.ts) terminates the worker thread
// running this VM; the VM shows it which call it is in through VmConfig.progress.
import { readFileSync } from 'node:fs'
import { fileURLToPath } from 'node:url'
import { dirname, join } from 'node:path'
import { webcrypto } from 'node:crypto'
import { loadLuaWasm, meteredAllocator, type RawExports, type MeteredAllocator } from './loader.js'
import { CACHE_BYTES, TRACE_FRAME_EXPORT, TRACE_CACHE_EXPORT } from './count-hook-patch.js'
import { fixup, checksum16 } from '../src/packet/checksum.js'
import { HDR } from '../src/batch-format.js'

const LUA_MASKCOUNT = 8
const LUA_REGISTRYINDEX = -1001000
const LUA_TNIL = 0, LUA_TBOOLEAN = 1, LUA_TNUMBER = 3, LUA_TSTRING = 4, LUA_TTABLE = 5, LUA_TFUNCTION = 6
/** The packet tables the host makes (makePacket): Lua 5.4's lua_State.top, Table and TValue in
 *  this wasm32 build (Table.alimit, Table.array, Table.metatable; a TValue is 8 bytes of value and
 *  a tag byte, 16 in all) and the tags it writes (a long string, an integer, false).
 *  probePacketLayout checks every one. */
const L_TOP = 12, TABLE_ALIMIT = 8, TABLE_ARRAY = 12, TABLE_METATABLE = 24, TVALUE = 16, TV_TAG = 8
const TAG_LNGSTR = 0x54, TAG_INT = 0x03, TAG_FALSE = 0x01, TAG_EMPTY = 0x10
const PACKET_SLOTS = 7
const LUA_ERRMEM = 4
/** Lua cuts chunk names to 60 bytes in messages: a longer script path is loaded under this token
 *  and the host puts the path back, exactly as the user gave it, in every message it reads. */
const SCRIPT_TOKEN = '<script>'
const MAX_CHUNKNAME = 55
/** Instructions between two looks at the clock while a call runs. */
const HOOK_PERIOD = 10000
/** Bytes a call may allocate between two looks at the clock: a big allocation means a big copy
 *  inside one instruction (concatenation, string.rep, gsub ...), which counting instructions misses. */
const ALLOC_CHECK_BYTES = 256 << 10
/** Longest error message kept from a script, and longest log line (bytes); the rest is cut. */
export const MAX_MESSAGE = 1024
export const MAX_LOG_LINE = 4096
/** Bytes above the script's cap that only the host's own pushes may use (never the script). */
const HOST_HEADROOM = 1 << 20
/** Wasm memory beyond the Lua cap: C stack, static data, allocator slack. */
const WASM_OVERHEAD = 6 << 20
export const MAX_BATCH_BYTES = 512 << 10
/** The wasm memory's own maximum for a VM whose script may hold `memory` bytes. The byte cap
 *  counts what Lua asks for; the allocator's headers and fragmentation come on top (half again
 *  covers a heap of the smallest Lua objects), so the byte cap, not this one, is what a script meets. */
export function wasmMemoryCap(memory: number): number {
  return memory + Math.ceil(memory / 2) + HOST_HEADROOM + MAX_BATCH_BYTES + WASM_OVERHEAD
}

/** Slots of VmConfig.progress: how a watchdog in another thread sees which call the VM is in. */
export const PROGRESS = {
  /** +1 at the start of every call (packet, lifecycle, top level) */
  calls: 0,
  /** 1 while a call runs, 0 between calls */
  inCall: 1,
  /** packets of the current batch whose result is final */
  done: 2,
  /** the script line last seen running, and the value of `calls` when it was seen */
  line: 3,
  lineCall: 4,
} as const
export const PROGRESS_SLOTS = 5

export type FaultKind = 'fuel' | 'memory' | 'time' | 'error' | 'crash' | 'verdict'
export const FAULT_KINDS: (FaultKind | null)[] = [null, 'fuel', 'memory', 'time', 'error', 'crash', 'verdict']
const F_FUEL = 1, F_MEMORY = 2, F_TIME = 3, F_ERROR = 4, F_CRASH = 5, F_VERDICT = 6

const PRELUDE = ['packet.lua', 'lib.lua', 'proto-ip.lua', 'proto-app.lua', 'proto-define.lua', 'services.lua', 'state.lua', 'sandbox.lua']
const luaDir = join(dirname(fileURLToPath(import.meta.url)), '..', '..', 'wasm', 'lua')

export interface HostServices {
  /** level: 0 debug, 1 info, 2 warn, 3 error; where: script file:line or ''. */
  log(level: number, msg: string, where: string): void
  stat(op: 0 | 1, name: string, value: number): void
  /** 'capture': time.now() is the current packet's timestamp (offline); 'real': the wall clock. */
  clock: 'capture' | 'real'
  ifname?(index: number): string | undefined
  /** Script services (defer, timer, net): see the services section of LuaVM. */
  services?: ServiceHost
}

/** What the VM needs from its host for defer, timer and net (wasm/lua/services.lua). */
export interface ServiceHost {
  /** Deferred calls that may wait at once (more are dropped) and timers that may exist at once. */
  maxDeferred: number
  maxTimers: number
  /** Capture clock only: time.now() before the first packet (the capture's first timestamp). */
  clockStart?: bigint
  /** net.send: true when sent, false over the rate limit, a string: an error raised in the script. */
  send(packet: Uint8Array, timeNs: bigint): boolean | string
  /** A deferred call or a timer callback faulted; it never touches a verdict. */
  callbackFault(what: 'defer' | 'timer', kind: FaultKind, message: string): void
  /** Counts service events: deferred_dropped, timers_refused, timers_skipped, timers_postponed ... */
  count(name: string, n: number): void
}

export interface VmConfig {
  /** The script's path as the user gave it: used in every message. */
  scriptPath: string
  source: string
  entry?: string
  fuel: number
  memory: number
  timeoutMs: number
  host: HostServices
  /** Benchmarks only: `fuel: false` runs with no hook (no fuel, no clock checks), `memory: false`
   *  with Lua's own allocator (no byte count, only the wasm memory's maximum). */
  metering?: { fuel: boolean; memory: boolean }
  /** Shared slots (PROGRESS) through which a watchdog in another thread follows the calls. */
  progress?: Int32Array
}

/** A script that does not load: the message names the file and, where known, the line. */
export class LoadError extends Error {
  constructor(message: string, readonly kind: FaultKind | 'load' = 'load') { super(message) }
}

/** Per-packet results of one batch; reused across batches. */
export class BatchOutput {
  verdict: Int32Array
  mark: Float64Array
  fault: Uint8Array
  fuel: Float64Array
  data: (Uint8Array | null)[]
  message: (string | null)[]
  constructor(readonly capacity: number) {
    this.verdict = new Int32Array(capacity)
    this.mark = new Float64Array(capacity)
    this.fault = new Uint8Array(capacity)
    this.fuel = new Float64Array(capacity)
    this.data = new Array(capacity).fill(null)
    this.message = new Array(capacity).fill(null)
  }
}

export class LuaVM {
  private ex!: RawExports
  private m: any
  private L = 0
  private u8!: Uint8Array
  private dv!: DataView
  private i32!: Int32Array
  // budgets
  private readonly fuel: number
  private readonly timeoutMs: number
  private readonly metered: boolean
  private readonly meterMemory: boolean
  private readonly progress: Int32Array
  private readonly watched: boolean
  private hookPtr = 0
  /** fuel of the current call not yet handed to the hook's countdown (L->hookcount) */
  private left = 0
  private callStart = 0
  private fault = 0
  private faultWhere = ''
  /** the counting allocator (wasm), null when memory is not metered */
  private meter: MeteredAllocator | null = null
  private memLimit: number
  private memPending = false
  private inCallFlag = false
  private get inCall(): boolean { return this.inCallFlag }
  /** A call may use the budget; the host's own pushes between calls get the headroom too. */
  private set inCall(v: boolean) {
    this.inCallFlag = v
    // the held batch string is the host's; the current batch counts against the script (see pushBatch)
    if (this.meter) this.meter.limit.value = (v ? this.memLimit - this.batchLen : this.memLimit + HOST_HEADROOM) + this.batchHeld
  }
  private hookCountOffset = -1
  // batch state
  /** The batch string (registry ref), its length, and the current batch's length (see pushBatch). */
  private batchRef = 0n
  private batchHeld = 0
  private batchLen = 0
  private out: BatchOutput | null = null
  private k = 0
  private count = 0
  private pos = 0
  private batch: Uint8Array | null = null
  private batchView: DataView | null = null
  private cstrs = new Map<string, number>()
  private funcs: number[] = []
  private lenPtr = 0
  private debugPtr = 0
  private errRefs: Record<string, number> = {}
  readonly scriptPath: string
  private readonly chunkName: string
  private broken = false
  private get entryName(): string { return this.cfg.entry ?? 'on_packet' }

  private constructor(private cfg: VmConfig) {
    this.scriptPath = cfg.scriptPath
    this.chunkName = Buffer.byteLength(cfg.scriptPath) <= MAX_CHUNKNAME ? cfg.scriptPath : SCRIPT_TOKEN
    this.fuel = cfg.fuel
    this.timeoutMs = cfg.timeoutMs
    this.memLimit = cfg.memory
    this.metered = cfg.metering?.fuel ?? true
    this.meterMemory = cfg.metering?.memory ?? true
    this.progress = cfg.progress ?? new Int32Array(PROGRESS_SLOTS)
    this.watched = cfg.progress !== undefined
  }

  /** Called once each packet's result in the BatchOutput is final (a worker copies it out). */
  onPacket: ((k: number) => void) | null = null

  /** Builds the VM, loads the prelude and the script, binds the entry function, runs on_start. */
  static async create(cfg: VmConfig): Promise<LuaVM> {
    const vm = new LuaVM(cfg)
    const wasm = await loadLuaWasm(wasmMemoryCap(cfg.memory))
    vm.ex = wasm.ex
    vm.m = wasm.module
    vm.init()
    return vm
  }

  get memoryUsed(): number { return this.meter ? this.meter.used.value - this.batchHeld : 0 }
  get isBroken(): boolean { return this.broken }
  /** Why this VM should be replaced by one built from the script, or null while it is fine. */
  get rebuildReason(): string | null { return this.broken ? 'the VM crashed' : this.exhausted }
  private exhausted: string | null = null
  private collectRef = 0
  /** The packet metatable (P.PKT, registry ref), and whether this build's tables are laid out as
   *  makePacket writes them (probePacketLayout); without it P.run makes each packet itself. */
  private pktRef = 0
  /** P.PKT's Table, for the metatable slot of the packets makePacket makes. */
  private pktMt = 0
  private pktLayout = false
  /** The batch string's TString (lua_topointer), for slot 1 of the packets makePacket makes. */
  private batchStr = 0

  // ---------------------------------------------------------------- setup

  private init(): void {
    const ex = this.ex
    this.traceFrame = ex[TRACE_FRAME_EXPORT]
    if (ex[TRACE_CACHE_EXPORT]) {
      const cache = ex.malloc(CACHE_BYTES)
      this.refreshViews()
      this.u8.fill(0, cache, cache + CACHE_BYTES)
      ex[TRACE_CACHE_EXPORT].value = cache
    }
    this.refreshViews()
    this.lenPtr = ex.malloc(8)
    this.debugPtr = ex.malloc(256)
    if (this.meterMemory) {
      const meter: MeteredAllocator = this.meter = meteredAllocator(ex, {
        failed: (ptr: number, nsize: number): number => this.allocFailed(ptr, nsize, meter.pendPtr.value === ptr && meter.pendSize.value === nsize),
        retried: () => { meter.pendPtr.value = -1; meter.pendSize.value = -1; this.memPending = false },
        check: () => this.checkSoon(),
      })
      meter.limit.value = this.memLimit + HOST_HEADROOM
      meter.checkEvery.value = ALLOC_CHECK_BYTES
      this.L = ex.lua_newstate(meter.index, 0)
    } else {
      this.L = ex.luaL_newstate()
    }
    if (!this.L) throw new LoadError(`${this.scriptPath}: cannot create a Lua state within ${this.cfg.memory} bytes`, 'memory')
    this.hookPtr = this.m.addFunction(this.onHook, 'vii')
    this.funcs.push(this.hookPtr)
    if (this.metered) {
      this.findHookCountOffset()
      if (this.hookCountOffset < 0) throw new Error('psd: cannot find lua_State.hookcount in this Lua build')
    }
    ex.luaL_openlibs(this.L)
    // Budget error values live in the registry so raising one never allocates.
    for (const [kind, text] of [['fuel', 'psd: fuel budget exhausted'], ['time', 'psd: time budget exhausted'],
      ['memory', 'not enough memory']] as const) {
      ex.lua_pushstring(this.L, this.cstr(text))
      this.errRefs[kind] = ex.luaL_ref(this.L, LUA_REGISTRYINDEX)
    }
    this.loadPrelude()
    this.initServices()
    this.loadScript()
  }

  /** Views of the wasm memory; a memory that grew detached the old ones (their length reads 0). */
  private refreshViews(): void {
    if (this.u8 === undefined || this.u8.length === 0) {
      const buf = this.ex.memory.buffer
      this.u8 = new Uint8Array(buf)
      this.dv = new DataView(buf)
      this.i32 = new Int32Array(buf)
    }
  }

  private cstr(s: string): number {
    let p = this.cstrs.get(s)
    if (p === undefined) {
      const b = Buffer.from(s + '\0', 'utf8')
      p = this.ex.malloc(b.length) as number
      this.refreshViews()
      this.u8.set(b, p)
      this.cstrs.set(s, p)
    }
    return p
  }

  /** Reads the string at stack index idx (no metamethods: safe on any value), cut at max bytes. */
  private str(idx: number, max = Infinity): string | null {
    const t = this.ex.lua_type(this.L, idx)
    if (t !== LUA_TSTRING && t !== LUA_TNUMBER) return null
    const p = this.ex.lua_tolstring(this.L, idx, this.lenPtr)
    this.refreshViews()
    const n = this.dv.getUint32(this.lenPtr, true)
    if (n > max) return Buffer.from(this.u8.buffer, p, max).toString('utf8') + `... (${n - max} more bytes)`
    return Buffer.from(this.u8.buffer, p, n).toString('utf8')
  }

  /** Puts the script's path back where Lua wrote the chunk token. */
  private named(s: string): string {
    return this.chunkName === SCRIPT_TOKEN && s.includes(SCRIPT_TOKEN) ? s.replaceAll(SCRIPT_TOKEN, this.scriptPath) : s
  }

  private bytesAt(idx: number): Uint8Array {
    const p = this.ex.lua_tolstring(this.L, idx, this.lenPtr)
    this.refreshViews()
    const n = this.dv.getUint32(this.lenPtr, true)
    return this.u8.slice(p, p + n)
  }

  /** Pushes bytes as a Lua string; only from host functions, inside a call. */
  private pushBytes(b: Uint8Array): void {
    const p = this.ex.malloc(Math.max(1, b.length))
    if (!p) this.raise(this.L, F_MEMORY) // the wasm heap itself is full
    this.refreshViews()
    this.u8.set(b, p)
    this.ex.lua_pushlstring(this.L, p, b.length)
    this.ex.free(p)
  }

  /** The lua_State field hookcount, found by arming a distinctive count: lets psd read the
   *  exact instructions a call used (fuel accounting) without a hook firing per instruction. */
  private findHookCountOffset(): void {
    const probe = 0x2345671
    this.ex.lua_sethook(this.L, this.hookPtr, LUA_MASKCOUNT, probe)
    this.refreshViews()
    for (let off = 0; off < 200; off += 4) {
      if (this.dv.getInt32(this.L + off, true) === probe && this.dv.getInt32(this.L + off + 4, true) === probe) {
        this.hookCountOffset = off + 4 // basehookcount then hookcount
        break
      }
    }
    this.ex.lua_sethook(this.L, 0, 0, 0)
  }

  private hostFunction(name: string, fn: (L: number) => number): void {
    const ptr = this.m.addFunction((L: number) => {
      try { return fn(L) } catch (e) {
        if (e === Infinity) throw e // a Lua error (emscripten's longjmp) on its way to its pcall
        // A host function must never throw through wasm frames: that would leave the Lua state
        // inconsistent. Mark the VM broken so it gets rebuilt, and stop the call cleanly.
        this.broken = true
        this.fault = F_CRASH
        this.faultWhere = `host function ${name}: ${(e as Error).message}`
        this.ex.lua_sethook(this.L, this.hookPtr, LUA_MASKCOUNT, 1)
        return 0
      }
    }, 'ii')
    this.funcs.push(ptr)
    this.ex.lua_pushcclosure(this.L, ptr, 0)
    this.ex.lua_setfield(this.L, -2, this.cstr(name))
  }

  private loadPrelude(): void {
    const ex = this.ex, L = this.L
    ex.lua_settop(L, 0)
    ex.lua_createtable(L, 0, 16) // P: private to the prelude
    ex.lua_createtable(L, 0, 0)
    ex.lua_setfield(L, 1, this.cstr('lib'))
    ex.lua_createtable(L, 0, 16) // H: host functions
    this.registerHost()
    // stack: 1 = P, 2 = H
    for (const file of PRELUDE) {
      let text: string
      try { text = readFileSync(join(luaDir, file), 'utf8') } catch { continue } // optional parts
      const src = Buffer.from(text, 'utf8')
      this.loadChunk(src, `=psd/${file}`)
      ex.lua_pushvalue(L, 1)
      ex.lua_pushvalue(L, 2)
      const st = this.pcall(2, 0)
      if (st !== 0) throw new LoadError(`psd prelude ${file} failed: ${this.str(-1)}`)
    }
    ex.lua_settop(L, 1)
    if (ex.lua_getfield(L, 1, this.cstr('collect')) === LUA_TFUNCTION) this.collectRef = ex.luaL_ref(L, LUA_REGISTRYINDEX)
    else ex.lua_settop(L, 1)
    if (ex.lua_getfield(L, 1, this.cstr('PKT')) === LUA_TTABLE) {
      this.pktRef = ex.luaL_ref(L, LUA_REGISTRYINDEX)
      this.pktLayout = process.env.PSD_HOST_PACKETS !== '0' && this.probePacketLayout()
    } else ex.lua_settop(L, 1)
    ex.lua_getfield(L, 1, this.cstr('run'))
    ex.lua_rotate(L, 1, 1)
    // stack: 1 = P.run, 2 = P
  }

  /**
   * Whether makePacket may write packet slots straight into a new table's array: builds a table
   * through the C API (a long string, an integer, false, a metatable), checks that the bytes sit
   * where makePacket expects them, then has makePacket make a packet and reads it back through
   * the API. Any difference and P.run makes the packets itself.
   */
  private probePacketLayout(): boolean {
    const ex = this.ex, L = this.L, top = ex.lua_gettop(L)
    try {
      ex.lua_pushstring(L, this.cstr('psd: a long string (longer than 40 bytes) to probe the layout of tables'))
      const str = ex.lua_topointer(L, -1)
      ex.lua_createtable(L, PACKET_SLOTS, 0)
      const t = ex.lua_topointer(L, -1)
      this.refreshViews()
      if (this.dv.getUint32(this.dv.getUint32(L + L_TOP, true) - TVALUE, true) !== t) return false
      ex.lua_pushvalue(L, -2); ex.lua_rawseti(L, -2, 1n)
      ex.lua_pushinteger(L, 0x1234567n); ex.lua_rawseti(L, -2, 2n)
      ex.lua_pushboolean(L, 0); ex.lua_rawseti(L, -2, 3n)
      this.refreshViews()
      const dv = this.dv
      if (!str || !t || dv.getUint32(t + TABLE_ALIMIT, true) !== PACKET_SLOTS) return false
      const a = dv.getUint32(t + TABLE_ARRAY, true)
      if (dv.getUint32(a, true) !== str || dv.getUint8(a + TV_TAG) !== TAG_LNGSTR) return false
      if (dv.getUint32(a + TVALUE, true) !== 0x1234567 || dv.getUint32(a + TVALUE + 4, true) !== 0 || dv.getUint8(a + TVALUE + TV_TAG) !== TAG_INT) return false
      if (dv.getUint8(a + 2 * TVALUE + TV_TAG) !== TAG_FALSE) return false
      for (let i = 3; i < PACKET_SLOTS; i++) if (dv.getUint8(a + i * TVALUE + TV_TAG) !== TAG_EMPTY) return false
      // the metatable: set through the API, read where makePacket writes it
      ex.lua_rawgeti(L, LUA_REGISTRYINDEX, BigInt(this.pktRef))
      const mt = ex.lua_topointer(L, -1)
      if (dv.getUint32(t + TABLE_METATABLE, true) !== 0) return false
      ex.lua_setmetatable(L, -2)
      this.refreshViews()
      if (!mt || this.dv.getUint32(t + TABLE_METATABLE, true) !== mt) return false
      // a packet made by makePacket itself, read back through the API
      this.pktMt = mt
      this.batchStr = str
      this.makePacket(L, 7654321, 42)
      this.batchStr = 0
      const want: [number, bigint | boolean | null][] = [[1, null], [2, BigInt(7654321 + HDR)], [3, 42n], [4, false], [5, false], [6, 7654322n], [7, false]]
      for (const [i, v] of want) {
        const type = ex.lua_rawgeti(L, -1, BigInt(i))
        const ok = v === null ? type === LUA_TSTRING && ex.lua_rawequal(L, -1, -4) === 1
          : v === false ? type === LUA_TBOOLEAN && ex.lua_toboolean(L, -1) === 0
          : type === LUA_TNUMBER && ex.lua_isinteger(L, -1) === 1 && ex.lua_tointegerx(L, -1, 0) === v
        ex.lua_settop(L, -2)
        if (!ok) return false
      }
      if (ex.lua_rawlen(L, -1) !== BigInt(PACKET_SLOTS) || ex.lua_getmetatable(L, -1) !== 1) return false
      ex.lua_rawgeti(L, LUA_REGISTRYINDEX, BigInt(this.pktRef))
      if (ex.lua_rawequal(L, -1, -2) !== 1) return false
      return true
    } finally {
      ex.lua_settop(L, top)
    }
  }

  private loadChunk(src: Uint8Array, chunkname: string): void {
    const p = this.ex.malloc(Math.max(1, src.length))
    if (!p) throw new LoadError(`${this.scriptPath}: not enough memory to load the script (${src.length} bytes)`, 'memory')
    this.refreshViews()
    this.u8.set(src, p)
    const st = this.ex.luaL_loadbufferx(this.L, p, src.length, this.cstr(chunkname), this.cstr('t'))
    this.ex.free(p)
    if (st !== 0) {
      const msg = this.named(this.str(-1) ?? 'cannot load chunk')
      this.ex.lua_settop(this.L, 2)
      throw new LoadError(st === LUA_ERRMEM ? `${this.scriptPath}: not enough memory to load the script` : msg,
        st === LUA_ERRMEM ? 'memory' : 'load')
    }
  }

  private loadScript(): void {
    const ex = this.ex, L = this.L
    const src = Buffer.from(this.cfg.source, 'utf8')
    if (src.length >= 4 && src[0] === 0x1b) throw new LoadError(`${this.scriptPath}: binary chunks are not allowed`)
    this.loadChunk(src, '@' + this.chunkName)
    this.callProtected(0, 'top level')
    // bind the entry function
    ex.lua_getfield(L, 2, this.cstr('bind'))
    ex.lua_pushstring(L, this.cstr(this.cfg.entry ?? 'on_packet'))
    ex.lua_pushboolean(L, this.cfg.entry !== undefined && this.cfg.entry !== 'on_packet' ? 1 : 0)
    ex.lua_pushstring(L, this.cstr(this.chunkName))
    const st = this.pcall(3, 0)
    if (st !== 0) { const msg = this.str(-1); ex.lua_settop(L, 2); throw new LoadError(this.named(msg ?? `${this.scriptPath}: no entry function`)) }
    this.callLifecycle('on_start')
  }

  /** Calls the function on top of the stack (with nargs above it) under the budgets. */
  private callProtected(nargs: number, what: string): void {
    const st = this.pcall(nargs, 0)
    if (st !== 0) {
      const kind = this.faultKindOf(st)
      const msg = this.faultMessage(kind)
      this.ex.lua_settop(this.L, 2)
      throw new LoadError(`${msg} (in ${what})`, FAULT_KINDS[kind] ?? 'error')
    }
  }

  /** Runs on_start/on_stop if the script defines it; throws LoadError on a fault. */
  callLifecycle(name: 'on_start' | 'on_stop'): void {
    const ex = this.ex, L = this.L
    ex.lua_settop(L, 2)
    ex.lua_getfield(L, 2, this.cstr('call_global'))
    ex.lua_pushstring(L, this.cstr(name))
    this.callProtected(1, name)
    ex.lua_settop(L, 2)
  }

  private registerHost(): void {
    const ex = this.ex
    const host = this.cfg.host
    this.hostFunction('done', (L) => this.onDone(L))
    this.hostFunction('charge', (L) => { this.charge(ex.lua_tonumberx(L, 1, 0)); return 0 })
    this.hostFunction('accept', this.onAccept)
    this.hostFunction('drop', this.onDrop)
    this.hostFunction('log', (L) => {
      host.log(ex.lua_tonumberx(L, 1, 0), this.named(this.str(2, MAX_LOG_LINE) ?? ''), this.named(this.str(3, MAX_MESSAGE) ?? ''))
      return 0
    })
    this.hostFunction('stat', (L) => {
      host.stat(ex.lua_tonumberx(L, 1, 0) as 0 | 1, this.str(2) ?? '', ex.lua_tonumberx(L, 3, 0))
      return 0
    })
    this.hostFunction('now', (L) => {
      ex.lua_pushinteger(L, this.clockNs())
      return 1
    })
    this.hostFunction('mono', (L) => {
      ex.lua_pushinteger(L, this.monoNs())
      return 1
    })
    const rnd = new Uint32Array(1)
    this.hostFunction('random_u32', (L) => {
      webcrypto.getRandomValues(rnd)
      ex.lua_pushinteger(L, BigInt(rnd[0]))
      return 1
    })
    this.hostFunction('random_bytes', (L) => {
      const n = Math.max(0, Math.min(65536, ex.lua_tonumberx(L, 1, 0) | 0))
      const b = new Uint8Array(n)
      for (let i = 0; i < n; i += 65536) webcrypto.getRandomValues(b.subarray(i, Math.min(n, i + 65536)))
      this.pushBytes(b)
      return 1
    })
    this.hostFunction('fixup', (L) => {
      const b = this.bytesAt(1)
      fixup(b)
      this.pushBytes(b)
      return 1
    })
    this.hostFunction('checksum', (L) => {
      const b = this.bytesAt(1)
      ex.lua_pushinteger(L, BigInt(checksum16(b, 0, b.length)))
      return 1
    })
    this.hostFunction('ifname', (L) => {
      const name = host.ifname?.(ex.lua_tonumberx(L, 1, 0))
      if (name === undefined) ex.lua_pushnil(L)
      else ex.lua_pushstring(L, this.cstr(name))
      return 1
    })
    this.registerServices()
    this.registerState()
  }

  /** The offline clock is the current packet's capture timestamp. */
  private clockNs(): bigint {
    if (this.cfg.host.clock === 'capture') {
      if (this.clockOverride !== null) return this.clockOverride
      const b = this.batchView
      if (b && this.pos + 28 <= b.byteLength) {
        return BigInt(b.getUint32(this.pos + 20, true)) * 1_000_000_000n + BigInt(b.getUint32(this.pos + 24, true))
      }
      return this.lastClock
    }
    return realNs()
  }
  private lastClock = 0n

  /** time.mono(): offline the capture clock, never going back; live a monotonic clock. */
  private monoNs(): bigint {
    if (this.cfg.host.clock !== 'capture') return process.hrtime.bigint()
    const now = this.clockNs()
    if (now > this.monoLast) this.monoLast = now
    return this.monoLast
  }
  private monoLast = 0n

  // ---------------------------------------------------------------- budgets
  //
  // Fuel: `left` plus the hook's countdown (L->hookcount) is what the call has left. The hook
  // runs when the countdown reaches 0, looks at memory, fuel and the clock, and hands the next
  // HOOK_PERIOD instructions to the countdown. Once a budget is spent it raises, and re-arms
  // itself to run at every instruction: a pcall can unwind the error but never run on.

  private arm(): void {
    this.fault = 0
    this.memPending = false
    this.progress[PROGRESS.calls]++
    if (!this.metered) return
    this.callStart = performance.now()
    this.left = this.fuel - Math.min(HOOK_PERIOD, this.fuel)
    this.ex.lua_sethook(this.L, this.hookPtr, LUA_MASKCOUNT, Math.min(HOOK_PERIOD, this.fuel))
    // the patched count hook starts counting afresh (wasm/count-hook-patch.ts)
    if (this.traceFrame) this.traceFrame.value = 0
  }
  private traceFrame: WebAssembly.Global | undefined

  private countdown(): number {
    this.refreshViews()
    return this.dv.getInt32(this.L + this.hookCountOffset, true)
  }

  private setCountdown(n: number): void {
    this.refreshViews()
    this.i32[(this.L + this.hookCountOffset) >> 2] = n
  }

  /** Instructions (and charged library work) used by the current call so far. */
  private fuelUsed(): number {
    if (!this.metered) return 0
    return this.fuel - this.left - this.countdown()
  }

  /** Makes the hook run at the very next instruction, keeping the countdown's fuel in `left`. */
  private checkSoon(): void {
    if (!this.inCall || !this.metered) return
    const rem = this.countdown()
    if (rem > 1) { this.left += rem - 1; this.setCountdown(1) }
  }

  /**
   * Charges fuel for work a library function is about to do in C, where no instruction is
   * counted (sandbox.lua calls this through H.charge before big sorts, moves, searches ...).
   * Raises the fuel fault at once when the call cannot pay.
   */
  private charge(n: number): void {
    if (!this.metered || !this.inCall || !(n > 0)) return
    if (this.watched && n >= HOOK_PERIOD) this.noteLine(this.L)
    const rem = this.countdown()
    const total = this.left + rem - n
    if (total <= 0) { this.left = 0; this.raise(this.L, F_FUEL) }
    if (rem > n) this.setCountdown(rem - n)
    else { this.left = total - 1; this.setCountdown(1) }
  }

  private raise(L: number, kind: number): void {
    this.fault = kind
    if (!this.faultWhere) this.faultWhere = this.scriptLine(L)
    this.ex.lua_sethook(L, this.hookPtr, LUA_MASKCOUNT, 1)
    const ref = kind === F_FUEL ? this.errRefs.fuel : kind === F_TIME ? this.errRefs.time : this.errRefs.memory
    this.ex.lua_rawgeti(L, LUA_REGISTRYINDEX, BigInt(ref))
    this.ex.lua_error(L)
  }

  private onHook = (L: number): void => {
    if (this.fault) { this.raise(L, this.fault); return }
    // An allocation failed since the last instruction and Lua's emergency collection did not
    // rescue it: the memory budget is spent. The script may have caught the error; not this.
    if (this.memPending) { this.raise(L, F_MEMORY); return }
    if (this.left <= 0) { this.raise(L, F_FUEL); return }
    // A packet's clock starts at its call's first hook (at most HOOK_PERIOD instructions in):
    // one clock read per packet saved, for a bound a few microseconds late.
    const now = performance.now()
    if (this.callStart === 0) this.callStart = now
    else if (now - this.callStart > this.timeoutMs) { this.raise(L, F_TIME); return }
    this.noteLine(L)
    const n = Math.min(HOOK_PERIOD, this.left)
    this.left -= n
    this.ex.lua_sethook(L, this.hookPtr, LUA_MASKCOUNT, n)
  }
  private verdictFaults = 0

  private allocFailed(ptr: number, nsize: number, retry: boolean): number {
    if (!this.inCall) return 0
    // The stack can be walked for the line only while it is whole: a new block, not a reallocation
    // (the stack's own reallocation holds its pointers as offsets meanwhile).
    if (!this.faultWhere && ptr === 0) {
      const line = this.scriptLineNumber(this.L)
      if (line > 0) this.faultWhere = `${this.scriptPath}:${line}`
    }
    // Lua runs a full collection and tries once more (the same ptr and size): the hook decides
    // at the next instruction whether that rescued it.
    if (!retry) { this.meter!.pendPtr.value = ptr; this.meter!.pendSize.value = nsize }
    this.memPending = true
    if (!this.fault) this.checkSoon()
    return 0
  }

  /** The innermost script line of the running call, or 0. */
  private scriptLineNumber(L: number): number {
    const ex = this.ex, ar = this.debugPtr
    for (let level = 0; level < 30; level++) {
      if (!ex.lua_getstack(L, level, ar)) break
      if (!ex.lua_getinfo(L, this.cstr('Sl'), ar)) continue
      this.refreshViews()
      const source = this.dv.getUint32(ar + 16, true)
      if (this.u8[source] !== 0x40 /* '@' */) continue
      return this.dv.getInt32(ar + 24, true)
    }
    return 0
  }

  /** file:line of the innermost script frame, for fault messages. */
  private scriptLine(L: number): string {
    const line = this.scriptLineNumber(L)
    return line > 0 ? `${this.scriptPath}:${line}` : this.scriptPath
  }

  /** Shows the watchdog where the call is, so a call it has to stop can be reported by line. */
  private noteLine(L: number): void {
    const line = this.scriptLineNumber(L)
    if (line > 0) {
      this.progress[PROGRESS.line] = line
      this.progress[PROGRESS.lineCall] = this.progress[PROGRESS.calls]
    }
  }

  /** Message handler of every call: notes where an error was raised (the stack is still there). */
  private onError = (L: number): number => {
    try {
      if (!this.errWhere) this.errWhere = this.scriptLine(L)
    } catch { /* never throw through wasm */ }
    return 1 // the error value, unchanged
  }
  private errWhere = ''
  private msghPtr = 0

  private pcall(nargs: number, nres: number): number {
    const ex = this.ex, L = this.L
    this.arm()
    this.faultWhere = ''
    this.errWhere = ''
    if (this.meter) { this.meter.pendPtr.value = -1; this.meter.pendSize.value = -1 }
    if (!this.msghPtr) { this.msghPtr = this.m.addFunction(this.onError, 'ii'); this.funcs.push(this.msghPtr) }
    const fn = ex.lua_gettop(L) - nargs
    ex.lua_pushcclosure(L, this.msghPtr, 0)
    ex.lua_rotate(L, fn, 1) // the handler goes below the function
    this.inCall = true
    this.progress[PROGRESS.inCall] = 1
    let st: number
    try {
      st = this.ex.lua_pcallk(this.L, nargs, nres, fn, 0, 0)
    } catch (e) {
      // Only a Lua error is allowed to unwind wasm frames; anything else leaves the state unsound.
      this.broken = true
      this.fault = F_CRASH
      this.faultWhere = (e as Error)?.message ?? String(e)
      st = -1
    } finally {
      this.inCall = false
      this.progress[PROGRESS.inCall] = 0
      if (!this.broken) {
        if (this.metered) ex.lua_sethook(L, 0, 0, 0)
        ex.lua_rotate(L, fn, -1) // the handler to the top, and off
        ex.lua_settop(L, -2)
      }
    }
    if (this.broken && st === 0) st = -1
    if (st !== 0 && !this.broken && (this.fault === F_MEMORY || st === LUA_ERRMEM)) this.afterMemoryFault()
    return st
  }

  /**
   * A call ran out of memory: collect what it left (the next call must not fail on that
   * garbage), and if the budget stays nearly full of what the script keeps, this VM cannot go
   * on; it is to be rebuilt from the script.
   */
  private afterMemoryFault(): void {
    const ex = this.ex, L = this.L
    if (!this.collectRef || !this.meterMemory) return
    ex.lua_rawgeti(L, LUA_REGISTRYINDEX, BigInt(this.collectRef))
    try {
      if (ex.lua_pcallk(L, 0, 0, 0, 0, 0) !== 0) ex.lua_settop(L, -2)
    } catch (e) {
      this.broken = true
      this.faultWhere = `collecting after a memory fault: ${(e as Error)?.message ?? e}`
      return
    }
    const free = this.memLimit - this.memoryUsed
    if (free < Math.max(256 << 10, this.memLimit / 20)) {
      this.exhausted = `the memory budget stayed full after a full collection (${this.memoryUsed} of ${this.memLimit} bytes held by the script)`
    }
  }

  private faultKindOf(status: number): number {
    if (this.fault) return this.fault
    if (status === LUA_ERRMEM) return F_MEMORY
    return F_ERROR
  }

  private faultMessage(kind: number): string {
    const where = this.faultWhere
    switch (kind) {
      case F_FUEL: return `${this.scriptPath}: fuel budget exhausted (${this.fuel} instructions) at ${where}`
      case F_TIME: return `${this.scriptPath}: time budget exhausted (${this.timeoutMs} ms) at ${where}`
      case F_MEMORY: {
        // no line from the failed allocation (a stack or table growing): the last one the hook saw
        const p = this.progress
        const at = where || (p[PROGRESS.lineCall] === p[PROGRESS.calls] && p[PROGRESS.line] > 0 ? `${this.scriptPath}:${p[PROGRESS.line]}` : '')
        return `${this.scriptPath}: memory budget exhausted (${this.memLimit} bytes)${at ? ' at ' + at : ''}`
      }
      case F_CRASH: return `${this.scriptPath}: VM crashed: ${where}`
      default: {
        if (this.broken) return `${this.scriptPath}: VM crashed: ${where}`
        const t = this.ex.lua_type(this.L, -1)
        const s = this.str(-1, MAX_MESSAGE)
        const at = this.errWhere && this.errWhere !== this.scriptPath ? this.errWhere : ''
        if (s !== null) {
          // a message without the script's position (error(msg, 0), a library's argument check)
          // gets the line the error was raised on
          const m = this.named(s)
          return at && !m.startsWith(this.scriptPath + ':') ? `${m} (at ${at})` : m
        }
        const names = ['nil', 'boolean', 'userdata', 'number', 'string', 'table', 'function', 'userdata', 'thread']
        return `${this.scriptPath}: error object is a ${names[t] ?? 'non-string'} value${at ? ' at ' + at : ''}`
      }
    }
  }

  // ---------------------------------------------------------------- packets

  /** The general report of a packet's result: any verdict code, a mark, edited bytes. */
  private onDone(L: number): number {
    const ex = this.ex, out = this.out!, k = this.k
    const code = ex.lua_tonumberx(L, 1, 0)
    if (code < 0) {
      out.verdict[k] = code
      out.fault[k] = F_VERDICT
      out.message[k] = `${this.scriptPath}: ${this.str(4) ?? 'bad verdict'} from ${this.entryName}`
      this.verdictFaults++
    } else {
      out.verdict[k] = code
      if (ex.lua_type(L, 2) === LUA_TNUMBER) out.mark[k] = ex.lua_tonumberx(L, 2, 0)
      if (ex.lua_type(L, 3) === LUA_TSTRING) out.data[k] = this.bytesAt(3)
    }
    return this.nextPacket(L)
  }

  /** The fast reports: a plain ACCEPT or DROP, no mark, no edit (the common case). */
  private onAccept = (L: number): number => { this.out!.verdict[this.k] = 1; return this.nextPacket(L) }
  private onDrop = (L: number): number => { this.out!.verdict[this.k] = 0; return this.nextPacket(L) }

  /** Moves to the next packet of the batch with fresh fuel and clock. Returns to P.run the next
   *  packet (makePacket), or, when this build's tables cannot be written in place, nil, where the
   *  next record starts (1-based) and its length; nothing after the last packet. */
  private nextPacket(L: number): number {
    if (this.measureFuel) this.out!.fuel[this.k] = this.fuelUsed()
    this.packetFinal(this.k++)
    this.progress[PROGRESS.calls]++
    const bv = this.batchView!
    const pos = this.pos += bv.getUint32(this.pos, true)
    if (this.metered) {
      // the hook stays installed for the whole batch: a new countdown is all a packet needs
      const n = Math.min(HOOK_PERIOD, this.fuel)
      this.left = this.fuel - n
      this.callStart = 0
      this.setCountdown(n)
    }
    if (this.k >= this.count) return 0
    const len = bv.getUint32(pos + 4, true)
    if (this.pktLayout) return this.makePacket(L, pos, len)
    // where the next record is, for P.run to make the packet (floats, as runBatch pushes them)
    this.ex.lua_pushnil(L)
    this.ex.lua_pushnumber(L, pos + 1)
    this.ex.lua_pushnumber(L, len)
    return 3
  }

  /**
   * Pushes the packet for the record at pos (0-based), as P.run would make it: a table of
   * PACKET_SLOTS array slots and the packet metatable, written in place (the layout was checked
   * by probePacketLayout). The two objects written into it need no barrier of the collector's:
   * the batch string and PKT are both held by the registry, so the collector marks them in every
   * cycle whatever colour the new table has by then (lua_createtable may run a collection step
   * that already marks it, as it sits on the stack); and PKT has no __gc, so lua_setmetatable
   * would have nothing more to do either.
   * This spares P.run the table constructor's instructions and a call of setmetatable per
   * packet, and the host two calls into the wasm (one lua_createtable instead of two pushes).
   * The table is allocated here, after the previous packet's result is final: an allocation
   * that fails faults this packet, as it did in P.run.
   */
  private makePacket(L: number, pos: number, len: number): number {
    this.ex.lua_createtable(L, PACKET_SLOTS, 0)
    this.refreshViews()
    // i32 words: the Table is the value of the TValue below L->top; a TValue is 4 words, its tag
    // in the third (with padding that nothing reads)
    const m = this.i32
    const t = m[(m[(L + L_TOP) >> 2] - TVALUE) >> 2]
    m[(t + TABLE_METATABLE) >> 2] = this.pktMt
    const a = m[(t + TABLE_ARRAY) >> 2] >> 2
    m[a] = this.batchStr; m[a + 1] = 0; m[a + 2] = TAG_LNGSTR // [1] bytes
    m[a + 4] = pos + HDR; m[a + 5] = 0; m[a + 6] = TAG_INT    // [2] base (1-based record + HDR - 1)
    m[a + 8] = len; m[a + 9] = 0; m[a + 10] = TAG_INT         // [3] len
    m[a + 14] = TAG_FALSE                                     // [4] edited
    m[a + 18] = TAG_FALSE                                     // [5] layers
    m[a + 20] = pos + 1; m[a + 21] = 0; m[a + 22] = TAG_INT   // [6] hdr (1-based)
    m[a + 26] = TAG_FALSE                                     // [7] mark
    return 1
  }

  private packetFinal(k: number): void {
    this.progress[PROGRESS.done] = k + 1
    if (this.onPacket !== null) this.onPacket(k)
  }

  /** Record the instructions each packet used in BatchOutput.fuel (benchmarks, metrics). */
  measureFuel = false

  /**
   * Runs the script over `count` records of `batch` (src/batch-format.ts). Every packet gets
   * exactly one entry in `out`: its verdict, or a fault with a message (fault verdicts are the
   * caller's policy). Returns how many packets faulted.
   */
  runBatch(batch: Uint8Array, count: number, out: BatchOutput): number {
    if (batch.length > MAX_BATCH_BYTES) throw new Error(`batch of ${batch.length} bytes exceeds ${MAX_BATCH_BYTES}`)
    const ex = this.ex, L = this.L
    this.batch = batch
    this.batchView = new DataView(batch.buffer, batch.byteOffset, batch.byteLength)
    this.out = out
    this.count = count
    this.k = 0
    this.pos = 0
    this.verdictFaults = 0
    out.mark.fill(-1, 0, count)
    out.fault.fill(0, 0, count)
    out.data.fill(null, 0, count)
    out.message.fill(null, 0, count)
    this.progress[PROGRESS.done] = 0
    let faults = 0
    // slot 3 = the batch string for the whole batch (restarts after a fault reuse it)
    ex.lua_settop(L, 2)
    try {
      this.pushBatch(batch) // outside any pcall: a failure here aborts
    } catch (e) {
      this.broken = true
      this.faultWhere = `cannot push the batch: ${(e as Error)?.message ?? e}`
    }
    while (this.k < count) {
      if (this.broken) { // the rest of the batch cannot run: fault verdicts
        const why = `${this.scriptPath}: VM crashed${this.faultWhere ? ': ' + this.faultWhere : ''}`
        for (let k = this.k; k < count; k++) this.faultPacket(out, k, F_CRASH, why)
        faults += count - this.k
        this.k = count
        break
      }
      ex.lua_pushvalue(L, 1)
      ex.lua_pushvalue(L, 3)
      ex.lua_pushnumber(L, count)
      // as floats: a BigInt per push costs more than the conversion in P.run
      ex.lua_pushnumber(L, this.pos + 1)
      ex.lua_pushnumber(L, this.k + 1)
      ex.lua_pushnumber(L, this.batchView.getUint32(this.pos + 4, true))
      const st = this.pcall(5, 0)
      if (st === 0) {
        if (this.k >= count) break
        // offline: P.run stopped before a packet that a timer is due ahead of
        this.timersBeforePacket()
        continue
      }
      // packet k faulted: record it, then go on from the next packet
      const kind = this.faultKindOf(st)
      this.faultPacket(out, this.k, kind, this.faultMessage(kind))
      faults++
      ex.lua_settop(L, 3)
      this.k++
      if (this.k < count) this.pos += this.batchView.getUint32(this.pos, true)
    }
    ex.lua_settop(L, 2)
    this.batchLen = 0
    if (this.cfg.host.clock === 'capture' && count > 0) {
      const last = this.lastRecordPos(count)
      this.lastClock = BigInt(this.batchView.getUint32(last + 20, true)) * 1_000_000_000n + BigInt(this.batchView.getUint32(last + 24, true))
    }
    this.batch = null
    this.batchView = null
    this.out = null
    return faults + this.verdictFaults
  }

  /**
   * Pushes the batch as a Lua string. The VM keeps one batch string and the host writes each
   * batch into it in place: a fresh string per batch cost an allocation, a second copy of the
   * batch, and garbage that made the collector work (about 0.1 us a packet). Lua never looks at
   * a long string's bytes behind the host's back (it hashes one only when it becomes a table key),
   * and no packet of the previous batch is alive any more (a packet dies with its call). A script
   * reaches the string only by rawget on a packet's slots, which gives it its own packet data;
   * a copy it keeps that way shows later batches. The string's tail past the batch is earlier
   * batches' bytes (or zeros): the loop reads records by position and length only.
   * Memory: the string is the host's (not counted against the script), the current batch is
   * counted during the batch's calls, as a string of its own was.
   */
  private pushBatch(batch: Uint8Array): void {
    const ex = this.ex, L = this.L
    if (batch.length > this.batchHeld) {
      // longer than any batch before: a new string (the old one becomes garbage)
      const size = Math.min(MAX_BATCH_BYTES, Math.max(batch.length, 2 * this.batchHeld, 16 << 10))
      const p = ex.malloc(size)
      if (!p) throw new Error(`cannot allocate ${size} bytes for the batch`)
      try {
        this.refreshViews()
        this.u8.fill(0, p, p + size)
        ex.lua_pushlstring(L, p, size)
      } finally {
        ex.free(p)
      }
      if (this.batchRef) ex.luaL_unref(L, LUA_REGISTRYINDEX, Number(this.batchRef))
      this.batchRef = BigInt(ex.luaL_ref(L, LUA_REGISTRYINDEX))
      this.batchHeld = size
    }
    ex.lua_rawgeti(L, LUA_REGISTRYINDEX, this.batchRef)
    const p = ex.lua_tolstring(L, -1, 0)
    this.batchStr = ex.lua_topointer(L, -1)
    this.refreshViews()
    this.u8.set(batch, p)
    this.batchLen = batch.length
  }

  private lastRecordPos(count: number): number {
    let p = 0
    for (let i = 1; i < count; i++) p += this.batchView!.getUint32(p, true)
    return p
  }

  private faultPacket(out: BatchOutput, k: number, kind: number, message: string): void {
    out.verdict[k] = -1
    out.fault[k] = kind
    out.mark[k] = -1
    out.data[k] = null
    out.message[k] = message
    out.fuel[k] = this.fuel
    this.packetFinal(k)
  }

  // ---------------------------------------------------------------- services
  //
  // defer, timer and net (wasm/lua/services.lua). The deferred calls and the timers live in the
  // VM; the host keeps only their counts and the earliest due time, so it can tell without a
  // call whether anything is to run. Each deferred call and each timer firing is a call of its
  // own under fresh budgets (pcall re-arms them, so a budget spent by one callback never leaks
  // into the next): a fault there goes to ServiceHost.callbackFault, never to a packet.

  private deferQueued = 0
  private timerCount = 0
  private nextDue: bigint | null = null
  private clockOverride: bigint | null = null
  private get svc(): ServiceHost { return this.cfg.host.services ?? NO_SERVICES }

  private registerServices(): void {
    const ex = this.ex
    this.hostFunction('defer_push', (L) => {
      const ok = this.deferQueued < this.svc.maxDeferred
      if (ok) this.deferQueued++
      else this.svc.count('deferred_dropped', 1)
      ex.lua_pushboolean(L, ok ? 1 : 0)
      return 1
    })
    this.hostFunction('timer_add', (L) => {
      const ok = this.timerCount < this.svc.maxTimers
      if (ok) this.timerCount++
      else this.svc.count('timers_refused', 1)
      ex.lua_pushboolean(L, ok ? 1 : 0)
      return 1
    })
    this.hostFunction('timer_del', () => { this.timerCount--; return 0 })
    this.hostFunction('timer_max', (L) => { ex.lua_pushinteger(L, BigInt(this.svc.maxTimers)); return 1 })
    this.hostFunction('timer_due', (L) => {
      this.nextDue = ex.lua_type(L, 1) === LUA_TNUMBER ? BigInt(ex.lua_tointegerx(L, 1, 0)) : null
      return 0
    })
    this.hostFunction('tclock', (L) => { ex.lua_pushinteger(L, this.timerClock()); return 1 })
    this.hostFunction('svc_count', (L) => { this.svc.count(this.str(1) ?? '', ex.lua_tonumberx(L, 2, 0)); return 0 })
    this.hostFunction('send', (L) => {
      const r = this.svc.send(this.bytesAt(1), this.timerClock())
      if (typeof r === 'string') this.pushBytes(Buffer.from(r, 'utf8'))
      else ex.lua_pushboolean(L, r ? 1 : 0)
      return 1
    })
  }

  private initServices(): void {
    const ex = this.ex, L = this.L
    this.lastClock = this.cfg.host.services?.clockStart ?? 0n
    ex.lua_getfield(L, 2, this.cstr('services_init'))
    if (ex.lua_type(L, -1) !== LUA_TFUNCTION) { ex.lua_settop(L, 2); return }
    const capture = this.cfg.host.clock === 'capture'
    ex.lua_pushboolean(L, capture ? 1 : 0)
    ex.lua_pushinteger(L, BigInt(capture ? CATCHUP_CAPTURE : CATCHUP_LIVE))
    const st = this.pcall(2, 0)
    if (st !== 0) throw new LoadError(`psd prelude services.lua failed: ${this.str(-1)}`)
    ex.lua_settop(L, 2)
  }

  /** Deferred calls waiting to run. */
  get deferredPending(): number { return this.deferQueued }
  /** Timers that exist (one-shot timers not yet fired, periodic ones not cancelled). */
  get timersActive(): number { return this.timerCount }
  /** The earliest timer's due time on timerClock(), or null when there is none. */
  get nextTimerDue(): bigint | null { return this.nextDue }
  /** The clock timers run on: offline the capture clock, live process.hrtime.bigint(). */
  timerClock(): bigint { return this.cfg.host.clock === 'capture' ? this.clockNs() : process.hrtime.bigint() }

  /**
   * Runs up to `max` deferred calls (default: those queued now, not the ones they queue in
   * turn), oldest first, each under its own budgets. Call between batches. Returns how many ran.
   */
  runDeferred(max = this.deferQueued): number {
    if (this.out !== null || this.inCall) throw new Error('LuaVM.runDeferred: not between batches')
    const ex = this.ex, L = this.L
    const top = ex.lua_gettop(L)
    let ran = 0
    for (let n = Math.min(max, this.deferQueued); n > 0 && this.deferQueued > 0 && !this.broken; n--) {
      this.deferQueued--
      ex.lua_getfield(L, 2, this.cstr('defer_run'))
      const st = this.pcall(0, 0)
      ran++
      if (st !== 0) this.callbackFaulted('defer', st)
      ex.lua_settop(L, top)
    }
    if (ran) this.svc.count('deferred_run', ran)
    return ran
  }

  /** Fires the timers due at `now` (timerClock()), earliest first. Call between batches. */
  runTimers(now: bigint = this.timerClock()): number {
    if (this.out !== null || this.inCall) throw new Error('LuaVM.runTimers: not between batches')
    return this.fireTimers(now)
  }

  /** Offline: P.run stopped before the packet at this.pos because a timer is due at its time. */
  private timersBeforePacket(): void {
    const v = this.batchView!
    const now = BigInt(v.getUint32(this.pos + 20, true)) * 1_000_000_000n + BigInt(v.getUint32(this.pos + 24, true))
    this.fireTimers(now)
    if (!this.broken && this.nextDue !== null && this.nextDue <= now) {
      // Not even P.timer_postpone could run (memory budget): stop cutting batches until the
      // timers change, or this packet would never run.
      const ex = this.ex, L = this.L, top = ex.lua_gettop(L)
      ex.lua_getfield(L, 2, this.cstr('set_due'))
      ex.lua_pushnil(L)
      this.pcall(1, 0)
      ex.lua_settop(L, top)
      this.svc.count('timers_postponed', 1)
    }
  }

  private fireTimers(now: bigint): number {
    const ex = this.ex, L = this.L
    const top = ex.lua_gettop(L)
    const capture = this.cfg.host.clock === 'capture'
    const bound = capture ? ROUND_FIRINGS_CAPTURE : ROUND_FIRINGS_LIVE
    let fired = 0
    while (this.nextDue !== null && this.nextDue <= now && !this.broken) {
      if (fired >= bound) {
        // A round must end: whatever is still due waits until after now.
        this.svc.count('timers_postponed', 1)
        ex.lua_getfield(L, 2, this.cstr('timer_postpone'))
        ex.lua_pushinteger(L, now)
        this.pcall(1, 0)
        ex.lua_settop(L, top)
        break
      }
      const due = this.nextDue
      if (capture) this.clockOverride = due // time.now() in the callback is its due time
      ex.lua_getfield(L, 2, this.cstr('timer_fire'))
      ex.lua_pushinteger(L, now)
      const st = this.pcall(1, 0)
      fired++
      if (st !== 0) this.callbackFaulted('timer', st)
      ex.lua_settop(L, top)
      if (capture && due > this.lastClock) this.lastClock = due
    }
    this.clockOverride = null
    if (fired) this.svc.count('timers_fired', fired)
    return fired
  }

  private callbackFaulted(what: 'defer' | 'timer', status: number): void {
    const kind = this.faultKindOf(status)
    this.svc.callbackFault(what, FAULT_KINDS[kind] ?? 'error', this.faultMessage(kind))
  }

  // ---------------------------------------------------------------- reload state
  //
  // The handoff of API.md section 8 (wasm/lua/state.lua): on_stop's result is written out inside
  // the old VM, the bytes cross to the new VM, are read back there and given to on_reload. Both
  // halves run as one call each under the tenant's budgets.

  private stateIn: Uint8Array | null = null

  private registerState(): void {
    this.hostFunction('state_in', (L) => {
      if (this.stateIn === null) this.ex.lua_pushnil(L)
      else this.pushBytes(this.stateIn)
      return 1
    })
  }

  /**
   * Calls on_stop and returns what it returned as bytes (null when there is no on_stop or it
   * returned nil). The VM stays usable: a reload that fails afterwards keeps it running.
   * Throws LoadError when on_stop faults or returns what cannot be handed over.
   */
  stopWithState(): Uint8Array | null {
    const ex = this.ex, L = this.L
    ex.lua_settop(L, 2)
    ex.lua_getfield(L, 2, this.cstr('state_stop'))
    this.callWithResult('on_stop')
    const state = ex.lua_type(L, -1) === LUA_TSTRING ? this.bytesAt(-1) : null
    ex.lua_settop(L, 2)
    return state
  }

  /** Calls on_reload(old_state) with the bytes from the old VM's stopWithState(). Throws LoadError. */
  startWithState(state: Uint8Array | null): void {
    const ex = this.ex, L = this.L
    ex.lua_settop(L, 2)
    ex.lua_getfield(L, 2, this.cstr('state_reload'))
    this.stateIn = state
    try { this.callWithResult('on_reload') } finally { this.stateIn = null }
    ex.lua_settop(L, 2)
  }

  private callWithResult(what: string): void {
    const st = this.pcall(0, 1)
    if (st !== 0) {
      const kind = this.faultKindOf(st)
      let msg = this.faultMessage(kind)
      if (kind === F_ERROR && !msg.startsWith(this.scriptPath)) msg = `${this.scriptPath}: ${msg}`
      this.ex.lua_settop(this.L, 2)
      throw new LoadError(`${msg} (in ${what})`, FAULT_KINDS[kind] ?? 'error')
    }
  }

  close(): void {
    if (!this.L) return
    try {
      if (!this.broken) this.ex.lua_close(this.L)
    } catch { /* the instance is dropped anyway */ }
    for (const f of this.funcs) { try { this.m.removeFunction(f) } catch { /* ignore */ } }
    this.L = 0
  }
}

// ---- services: bounds that are the VM's own, the fallback host, the real clock

/** Firings in a row a late periodic timer makes before it skips ahead to its next due time:
 *  offline it catches up (the capture's clock jumps over quiet periods), live it does not. */
const CATCHUP_CAPTURE = 1000
const CATCHUP_LIVE = 1
/** Timer callbacks in one round; what is still due then waits until just after the round's time. */
const ROUND_FIRINGS_CAPTURE = 10000
const ROUND_FIRINGS_LIVE = 1000

/** A VM whose host gives no services (tests, benchmarks): bounded queues, no sending. */
const NO_SERVICES: ServiceHost = {
  maxDeferred: 1024,
  maxTimers: 256,
  send: () => 'net.send: this tenant may not send (allow it with --allow-send or "send": true)',
  callbackFault: () => {},
  count: () => {},
}

/** Wall-clock ns since the epoch: a monotonic clock, re-aligned with the wall clock when they
 *  drift apart by more than 2 ms (checked at most once a second). */
let realBase = 0n, realSync = -(10n ** 18n)
function realNs(): bigint {
  const h = process.hrtime.bigint()
  if (h - realSync > 1_000_000_000n) {
    const b = BigInt(Date.now()) * 1_000_000n - h
    const d = b - realBase
    if (d > 2_000_000n || d < -2_000_000n) realBase = b
    realSync = h
  }
  return realBase + h
}
