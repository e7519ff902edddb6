// Loads wasmoon's Lua wasm as a private instance and hands back its raw exports.
//
// Why not wasmoon's own API: its calls cost 4-50 us and several are unsafe in 1.16.0
// (see docs/architecture.md). We keep wasmoon for what it is good at, building and
// instantiating its emscripten module, then drive the exported lua_* functions directly.
// The memory section is patched so one instance can never grow past its tenant's cap.
import { LuaFactory } from 'wasmoon'
import { readFileSync } from 'node:fs'
import { createRequire } from 'node:module'
import { dirname, join } from 'node:path'

export interface RawExports {
  memory: WebAssembly.Memory
  [name: string]: any
}

export interface LuaWasm {
  ex: RawExports
  /** The emscripten Module: addFunction/removeFunction for hooks, allocators and C functions. */
  module: any
}

const PAGE = 65536
const compiled = new Map<number, WebAssembly.Module>()
let originalBytes: Uint8Array | null = null
let chain: Promise<unknown> = Promise.resolve()

function readLeb(buf: Uint8Array, pos: number): [number, number] {
  let result = 0, shift = 0, b: number
  do {
    b = buf[pos++]
    result += (b & 0x7f) * 2 ** shift
    shift += 7
  } while (b & 0x80)
  return [result, pos]
}

function leb(n: number): number[] {
  const out: number[] = []
  do {
    let b = n & 0x7f
    n = Math.floor(n / 128)
    if (n) b |= 0x80
    out.push(b)
  } while (n)
  return out
}

/** Rewrites the module's memory section so the memory holds at most maxPages pages. */
export function patchMemoryMax(bytes: Uint8Array, maxPages: number): Uint8Array {
  let pos = 8
  while (pos < bytes.length) {
    const id = bytes[pos]
    const [size, body] = readLeb(bytes, pos + 1)
    if (id === 5) {
      let p = body
      const [count, afterCount] = readLeb(bytes, p); p = afterCount
      if (count !== 1) throw new Error('unexpected wasm memory section')
      const flags = bytes[p++]
      const [min, afterMin] = readLeb(bytes, p); p = afterMin
      if (flags & 1) p = readLeb(bytes, p)[1]
      const newMin = Math.min(min, maxPages)
      const section = [...leb(1), flags | 1, ...leb(newMin), ...leb(maxPages), ...bytes.subarray(p, body + size)]
      const head = [5, ...leb(section.length)]
      const out = new Uint8Array(pos + head.length + section.length + (bytes.length - body - size))
      out.set(bytes.subarray(0, pos), 0)
      out.set(head, pos)
      out.set(section, pos + head.length)
      out.set(bytes.subarray(body + size), pos + head.length + section.length)
      return out
    }
    pos = body + size
  }
  throw new Error('wasm module has no memory section')
}

function pagesFor(maxBytes: number): number {
  return Math.max(64, Math.min(32768, Math.ceil(maxBytes / PAGE)))
}

function wasmoonBytes(): Uint8Array {
  if (!originalBytes) {
    const main = createRequire(import.meta.url).resolve('wasmoon')
    originalBytes = new Uint8Array(readFileSync(join(dirname(main), 'glue.wasm')))
  }
  return originalBytes
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
    mod = await WebAssembly.compile(patchMemoryMax(wasmoonBytes(), maxPages) as Uint8Array<ArrayBuffer>)
    compiled.set(maxPages, mod)
  }
  return mod
}

/** Gives this thread a module compiled elsewhere for that cap (see compileLuaWasm). */
export function provideLuaWasm(maxBytes: number, mod: WebAssembly.Module): void {
  compiled.set(pagesFor(maxBytes), mod)
}

/**
 * Creates a fresh wasm instance whose linear memory can never exceed maxBytes.
 * Instances are created one at a time because the capture swaps WebAssembly.instantiate.
 */
export function loadLuaWasm(maxBytes: number): Promise<LuaWasm> {
  const run = chain.then(() => instantiate(maxBytes))
  chain = run.catch(() => undefined)
  return run
}

async function instantiate(maxBytes: number): Promise<LuaWasm> {
  const maxPages = pagesFor(maxBytes)
  const original = WebAssembly.instantiate
  let ex: RawExports | undefined
  ;(WebAssembly as any).instantiate = async (source: any, imports: any) => {
    if (!originalBytes) originalBytes = new Uint8Array(source)
    let mod = compiled.get(maxPages)
    if (!mod) {
      mod = await WebAssembly.compile(patchMemoryMax(originalBytes, maxPages) as Uint8Array<ArrayBuffer>)
      compiled.set(maxPages, mod)
    }
    const instance = await original(mod, imports)
    ex = instance.exports as RawExports
    return { instance, module: mod }
  }
  try {
    const factory = new LuaFactory()
    const lw: any = await factory.getLuaModule()
    if (!ex) throw new Error('wasmoon did not instantiate its wasm')
    return { ex, module: lw.module }
  } finally {
    ;(WebAssembly as any).instantiate = original
  }
}
