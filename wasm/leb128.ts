// LEB128, the variable-length integers of the WebAssembly binary format: what psd needs to read
// and patch wasmoon's Lua module (wasm/loader.ts, wasm/count-hook-patch.ts) and to write the
// small modules it builds by hand.

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
