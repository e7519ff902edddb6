// The few pieces of the WebAssembly binary format psd needs to read and patch wasmoon's Lua
// module (wasm/loader.ts, wasm/count-hook-patch.ts) and to write the small modules it builds by
// hand: LEB128 integers, and a module's sections.

/** Reads an unsigned LEB128 at pos: [value, position after it]. */
export function readLeb(buf: Uint8Array, pos: number): [number, number] {
  let result = 0, shift = 0, b: number
  do {
    b = buf[pos++]
    result += (b & 0x7f) * 2 ** shift
    shift += 7
  } while (b & 0x80)
  return [result, pos]
}

/** Encodes an unsigned LEB128. */
export function leb(n: number): number[] {
  const out: number[] = []
  do {
    let b = n & 0x7f
    n = Math.floor(n / 128)
    if (n) b |= 0x80
    out.push(b)
  } while (n)
  return out
}

/** Encodes a signed LEB128 (an i32.const immediate). */
export function sleb(n: number): number[] {
  const out: number[] = []
  for (;;) {
    const b = n & 0x7f
    n >>= 7
    if ((n === 0 && !(b & 0x40)) || (n === -1 && (b & 0x40))) { out.push(b); return out }
    out.push(b | 0x80)
  }
}

/** One section of a module: its id, where it starts (at the id byte), its body, and its end. */
export interface Section { id: number; start: number; body: number; end: number }

/** The sections of a module, in order. */
export function sections(bytes: Uint8Array): Section[] {
  const out: Section[] = []
  let pos = 8
  while (pos < bytes.length) {
    const [size, body] = readLeb(bytes, pos + 1)
    out.push({ id: bytes[pos], start: pos, body, end: body + size })
    pos = body + size
  }
  return out
}

/** A section's bytes: its id, its size, then the body's parts. */
export function section(id: number, ...parts: ArrayLike<number>[]): Uint8Array[] {
  const size = parts.reduce((a, x) => a + x.length, 0)
  return [Uint8Array.from([id, ...leb(size)]), ...parts.map((x) => (x instanceof Uint8Array ? x : Uint8Array.from(x)))]
}

/** The module again, with the sections `replace` gives new bytes for (the others as they were). */
export function rebuildModule(bytes: Uint8Array, secs: Section[], replace: (s: Section) => Uint8Array[] | undefined): Uint8Array {
  const parts: Uint8Array[] = [bytes.subarray(0, 8)]
  for (const s of secs) parts.push(...(replace(s) ?? [bytes.subarray(s.start, s.end)]))
  const out = new Uint8Array(parts.reduce((a, x) => a + x.length, 0))
  let at = 0
  for (const x of parts) { out.set(x, at); at += x.length }
  return out
}
