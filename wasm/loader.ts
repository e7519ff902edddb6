// Loads wasmoon's Lua wasm as a private instance and hands back its raw exports.
//
// Why not wasmoon's own API: its calls cost 4-50 us and several are unsafe in 1.16.0
// (see docs/architecture.md). psd uses the wasm wasmoon ships (glue.wasm: Lua built with
// emscripten) and drives its exported lua_* functions directly. It does not run wasmoon's
// JavaScript glue either: the module needs 27 small imports (setjmp/longjmp through one
// invoke_vii trampoline, heap growth, stubs for files, clocks and the environment that the
// sandbox never lets a script reach), given here. That keeps each VM's worker ~3 MiB smaller
// and its start faster, and means no JavaScript object of wasmoon's is ever near a script.
// The memory section is patched so one instance can never grow past its tenant's cap.
import { readFileSync } from 'node:fs'
import v8 from 'node:v8'
import { createRequire } from 'node:module'
import { dirname, join } from 'node:path'
import { patchCountHook } from './count-hook-patch.js'
import { readLeb, leb, sleb, sections, section, rebuildModule } from './wasm-binary.js'

export interface RawExports {
  memory: WebAssembly.Memory
  [name: string]: any
}

export interface LuaWasm {
  ex: RawExports
  /** Puts JavaScript functions into the wasm function table: hooks, allocators and C functions. */
  module: FunctionTable
}

export interface FunctionTable {
  /** `sig`: emscripten's signature letters, result first: 'vii', 'iiiii', 'ii'. Returns the table index. */
  addFunction(fn: (...args: any[]) => any, sig: string): number
  removeFunction(index: number): void
}

const PAGE = 65536
const compiled = new Map<number, WebAssembly.Module>()
let luaWasmBytes: Uint8Array | null = null

/** Rewrites the module's memory section so the memory holds at most maxPages pages. */
export function patchMemoryMax(bytes: Uint8Array, maxPages: number): Uint8Array {
  const secs = sections(bytes)
  const memory = secs.find((s) => s.id === 5)
  if (!memory) throw new Error('wasm module has no memory section')
  let p = memory.body
  const [count, afterCount] = readLeb(bytes, p); p = afterCount
  if (count !== 1) throw new Error('unexpected wasm memory section')
  const flags = bytes[p++]
  const [min, afterMin] = readLeb(bytes, p); p = afterMin
  if (flags & 1) p = readLeb(bytes, p)[1]
  const limits = [...leb(1), flags | 1, ...leb(Math.min(min, maxPages)), ...leb(maxPages)]
  return rebuildModule(bytes, secs, (s) => (s === memory ? section(5, limits, bytes.subarray(p, s.end)) : undefined))
}

function pagesFor(maxBytes: number): number {
  return Math.max(64, Math.min(32768, Math.ceil(maxBytes / PAGE)))
}

/**
 * For a daemon: V8 compiles the Lua wasm fully optimised when it is loaded (about half a second,
 * once per process: every worker shares the compiled module) instead of starting on its baseline
 * compiler and tiering up while the first packets wait. Call before the first compile.
 */
export function optimizeLuaWasmUpFront(): void {
  v8.setFlagsFromString('--no-liftoff')
  v8.setFlagsFromString('--no-wasm-lazy-compilation')
}

/** wasmoon's Lua wasm, with the count hook patch unless PSD_COUNT_HOOK=stock (for comparisons). */
function wasmoonBytes(): Uint8Array {
  if (!luaWasmBytes) {
    const main = createRequire(import.meta.url).resolve('wasmoon')
    const stock = new Uint8Array(readFileSync(join(dirname(main), 'glue.wasm')))
    const patched = process.env.PSD_COUNT_HOOK === 'stock' ? null : patchCountHook(stock)
    luaWasmBytes = patched ?? stock
  }
  return luaWasmBytes
}

/**
 * The Lua wasm compiled with its memory capped at maxBytes (cached per cap). The main thread
 * compiles it once and hands it to every worker (a WebAssembly.Module crosses threads without
 * a copy of its code), so a new worker instantiates in milliseconds.
 */
export async function compileLuaWasm(maxBytes: number): Promise<WebAssembly.Module> {
  const maxPages = pagesFor(maxBytes)
  let mod = compiled.get(maxPages)
  if (!mod) {
    // Node does not count a pending WebAssembly.compile as a reason to stay alive: hold it
    const hold = setInterval(() => {}, 1 << 30)
    try {
      mod = await WebAssembly.compile(patchMemoryMax(wasmoonBytes(), maxPages) as Uint8Array<ArrayBuffer>)
    } finally {
      clearInterval(hold)
    }
    compiled.set(maxPages, mod)
  }
  return mod
}

/** Gives this thread a module compiled elsewhere for that cap (see compileLuaWasm). */
export function provideLuaWasm(maxBytes: number, mod: WebAssembly.Module): void {
  compiled.set(pagesFor(maxBytes), mod)
}

/** Creates a fresh wasm instance whose linear memory can never exceed maxBytes. */
export async function loadLuaWasm(maxBytes: number): Promise<LuaWasm> {
  const mod = await compileLuaWasm(maxBytes)
  const maxMemory = pagesFor(maxBytes) * PAGE
  let ex!: RawExports
  const u32 = () => new Uint32Array(ex.memory.buffer)
  const ENOSYS = 52, ESPIPE = 70
  const stderr = (b: Uint8Array) => { try { process.stderr.write(Buffer.from(b)) } catch { /* nowhere to write */ } }
  const env = {
    // setjmp/longjmp: Lua's protected calls go through invoke_vii; a longjmp is a thrown Infinity
    invoke_vii(index: number, a1: number, a2: number): void {
      const sp = ex.stackSave()
      try {
        table.get(index)(a1, a2)
      } catch (e) {
        ex.stackRestore(sp)
        if (e !== Infinity) throw e
        ex.setThrew(1, 0)
      }
    },
    _emscripten_throw_longjmp(): never { throw Infinity },
    abort(): never { throw new WebAssembly.RuntimeError('Lua wasm: abort()') },
    exit(code: number): never { throw new WebAssembly.RuntimeError(`Lua wasm: exit(${code})`) },
    emscripten_resize_heap(requested: number): number {
      requested >>>= 0
      const mem = ex.memory, old = mem.buffer.byteLength
      if (requested > maxMemory) return 0
      // grow by a fifth at a time (or what is asked), never past the cap
      const target = Math.min(maxMemory, Math.max(requested, old + Math.ceil(old / 5)))
      for (const size of [target, requested]) {
        try { mem.grow(Math.ceil((size - mem.buffer.byteLength) / PAGE)); return 1 } catch { /* try smaller */ }
      }
      return 0
    },
    emscripten_date_now: () => Date.now(),
    _emscripten_get_now_is_monotonic: () => 1,
    // os.date/os.time, io, os.execute: none is reachable from a script (sandbox.lua)
    strftime: () => 0, _mktime_js: () => 0, _localtime_js: () => {}, _gmtime_js: () => {}, _tzset_js: () => {},
    system: () => -1,
    __syscall_openat: () => -ENOSYS, __syscall_fcntl64: () => -ENOSYS, __syscall_ioctl: () => -ENOSYS,
    __syscall_dup3: () => -ENOSYS, __syscall_unlinkat: () => -ENOSYS, __syscall_rmdir: () => -ENOSYS,
    __syscall_renameat: () => -ENOSYS, __syscall_readlinkat: () => -ENOSYS,
  }
  const wasi = {
    // Lua writes to stderr only on a panic (just before abort()); stdout goes nowhere
    fd_write(fd: number, iov: number, iovcnt: number, pnum: number): number {
      const m = u32(), bytes = new Uint8Array(ex.memory.buffer)
      let n = 0
      for (let i = 0; i < iovcnt; i++) {
        const p = m[(iov >> 2) + i * 2], len = m[(iov >> 2) + i * 2 + 1]
        if (fd === 2 && len) stderr(bytes.subarray(p, p + len))
        n += len
      }
      m[pnum >> 2] = n
      return 0
    },
    fd_read(_fd: number, _iov: number, _iovcnt: number, pnum: number): number { u32()[pnum >> 2] = 0; return 0 },
    fd_close: () => 0,
    fd_seek: () => ESPIPE,
    environ_sizes_get(pcount: number, psize: number): number { const m = u32(); m[pcount >> 2] = 0; m[psize >> 2] = 0; return 0 },
    environ_get: () => 0,
  }
  const instance = new WebAssembly.Instance(mod, { env, wasi_snapshot_preview1: wasi })
  ex = instance.exports as RawExports
  const table = ex.__indirect_function_table as WebAssembly.Table
  ex.emscripten_stack_init()
  ex.__wasm_call_ctors()
  return { ex, module: functionTable(table) }
}

// ---- JavaScript functions in the wasm function table (what emscripten's addFunction does)

const TYPE: Record<string, number> = { i: 0x7f, j: 0x7e, f: 0x7d, d: 0x7c }
const wrappers = new Map<string, WebAssembly.Module>()

/** A module that imports a JavaScript function of signature sig and exports it as a wasm function. */
function wrapperModule(sig: string): WebAssembly.Module {
  let m = wrappers.get(sig)
  if (!m) {
    const params = [...sig.slice(1)].map((c) => TYPE[c])
    const results = sig[0] === 'v' ? [] : [TYPE[sig[0]]]
    if (params.includes(undefined as any) || results.includes(undefined as any)) throw new Error(`bad signature ${sig}`)
    const type = [0x60, params.length, ...params, results.length, ...results]
    const section = (id: number, body: number[]) => [id, ...leb(body.length), ...body]
    const bytes = [
      0x00, 0x61, 0x73, 0x6d, 0x01, 0x00, 0x00, 0x00,
      ...section(1, [1, ...type]),
      ...section(2, [1, 1, 0x65, 1, 0x66, 0x00, 0]), // import "e" "f" func type 0
      ...section(7, [1, 1, 0x66, 0x00, 0]), // export "f" func 0
    ]
    m = new WebAssembly.Module(Uint8Array.from(bytes))
    wrappers.set(sig, m)
  }
  return m
}

function functionTable(table: WebAssembly.Table): FunctionTable {
  const free: number[] = []
  return {
    addFunction(fn, sig) {
      const f = new WebAssembly.Instance(wrapperModule(sig), { e: { f: fn } }).exports.f
      const index = free.length ? free.pop()! : table.grow(1)
      table.set(index, f)
      return index
    },
    removeFunction(index) {
      table.set(index, null)
      free.push(index)
    },
  }
}

// ---- The memory budget's allocator, in wasm
//
// Lua calls its allocator on every allocation, so it must be cheap: a JavaScript allocator
// costs two crossings between wasm and JavaScript per call. This one is a few wasm instructions
// calling the instance's own realloc/free directly; it counts every byte in `used` and refuses
// what would pass `limit`. Only the rare events call JavaScript: a refusal (`failed`), the
// retry after Lua's emergency collection succeeding (`retried`), and every CHECK bytes
// allocated (`check`: time to look at the clock).

export interface MeteredAllocator {
  /** the table index to give lua_newstate */
  index: number
  used: WebAssembly.Global
  limit: WebAssembly.Global
  /** the (ptr, size) of the last refused allocation, or -1: Lua retries it after collecting */
  pendPtr: WebAssembly.Global
  pendSize: WebAssembly.Global
  /** bytes allocated between two check() calls */
  checkEvery: WebAssembly.Global
}

export interface AllocatorEvents {
  /** an allocation was refused (over the limit, or the heap is full); returns 0 */
  failed(ptr: number, nsize: number): number
  /** the refused allocation succeeded when Lua retried it */
  retried(): void
  /** checkEvery more bytes were allocated */
  check(): void
}

let allocatorModule: WebAssembly.Module | null = null

function allocatorBytes(): Uint8Array {
  const I32 = 0x7f
  const sec = (id: number, body: number[]) => [id, ...leb(body.length), ...body]
  const str = (s: string) => [s.length, ...[...s].map((c) => c.charCodeAt(0))]
  const types = [4,
    0x60, 2, I32, I32, 1, I32, // 0: (ptr, size) -> ptr       realloc, failed
    0x60, 1, I32, 0, // 1: (ptr)                               free
    0x60, 4, I32, I32, I32, I32, 1, I32, // 2: lua_Alloc
    0x60, 0, 0, // 3: ()                                       retried, check
  ]
  const imports = [5,
    ...str('m'), ...str('realloc'), 0, 0,
    ...str('m'), ...str('free'), 0, 1,
    ...str('js'), ...str('failed'), 0, 0,
    ...str('js'), ...str('check'), 0, 3,
    ...str('js'), ...str('retried'), 0, 3,
  ]
  // globals: 0 used, 1 limit, 2 since, 3 pendPtr, 4 pendSize, 5 checkEvery
  const g = (init: number) => [I32, 1, 0x41, ...sleb(init), 0x0b]
  const globals = [6, ...g(0), ...g(0), ...g(0), ...g(-1), ...g(-1), ...g(256 << 10)]
  const exports = [6,
    ...str('alloc'), 0, 5,
    ...str('used'), 3, 0, ...str('limit'), 3, 1, ...str('pendPtr'), 3, 3, ...str('pendSize'), 3, 4, ...str('checkEvery'), 3, 5,
  ]
  // params: 0 ud, 1 ptr, 2 osize, 3 nsize; locals: 4 delta, 5 p
  const lg = (i: number) => [0x20, i], ls = (i: number) => [0x21, i], lt = (i: number) => [0x22, i]
  const gg = (i: number) => [0x23, i], gs = (i: number) => [0x24, i]
  const IF = [0x04, 0x40], END = 0x0b, RET = 0x0f, call = (f: number) => [0x10, f]
  const c0 = [0x41, 0]
  const body = [
    1, 2, I32, // two i32 locals
    // free: used -= osize
    ...lg(3), 0x45, ...IF,
    ...lg(1), ...IF, ...gg(0), ...lg(2), 0x6b, ...gs(0), ...lg(1), ...call(1), END,
    ...c0, RET, END,
    // delta = nsize - (ptr ? osize : 0)
    ...lg(3), ...lg(2), ...c0, ...lg(1), 0x1b, 0x6b, ...ls(4),
    // over the limit: refused
    ...lg(4), ...c0, 0x4a, ...IF,
    ...gg(0), ...lg(4), 0x6a, ...gg(1), 0x4a, ...IF, ...lg(1), ...lg(3), ...call(2), RET, END,
    END,
    // p = realloc(ptr, nsize); a full heap: refused
    ...lg(1), ...lg(3), ...call(0), ...lt(5), 0x45, ...IF, ...lg(1), ...lg(3), ...call(2), RET, END,
    ...gg(0), ...lg(4), 0x6a, ...gs(0),
    // the retry of a refused allocation went through
    ...gg(3), ...lg(1), 0x46, ...gg(4), ...lg(3), 0x46, 0x71, ...IF, ...call(4), END,
    // every checkEvery bytes allocated: a look at the clock
    ...lg(4), ...c0, 0x4a, ...IF,
    ...gg(2), ...lg(4), 0x6a, ...lt(4), ...gs(2),
    ...lg(4), ...gg(5), 0x4a, ...IF, ...c0, ...gs(2), ...call(3), END,
    END,
    ...lg(5), END,
  ]
  return Uint8Array.from([
    0x00, 0x61, 0x73, 0x6d, 0x01, 0x00, 0x00, 0x00,
    ...sec(1, types), ...sec(2, imports), ...sec(3, [1, 2]), ...sec(6, globals), ...sec(7, exports),
    ...sec(10, [1, ...leb(body.length), ...body]),
  ])
}

/** The counting allocator for one instance (see above), put into its function table. */
export function meteredAllocator(ex: RawExports, events: AllocatorEvents): MeteredAllocator {
  allocatorModule ??= new WebAssembly.Module(allocatorBytes() as Uint8Array<ArrayBuffer>)
  const inst = new WebAssembly.Instance(allocatorModule, {
    m: { realloc: ex.realloc, free: ex.free },
    js: { failed: events.failed, retried: events.retried, check: events.check },
  })
  const e = inst.exports as any
  const table = ex.__indirect_function_table as WebAssembly.Table
  const index = table.grow(1)
  table.set(index, e.alloc)
  return { index, used: e.used, limit: e.limit, pendPtr: e.pendPtr, pendSize: e.pendSize, checkEvery: e.checkEvery }
}
