// A cheaper instruction count for the fuel budget: a patch to the Lua wasm's luaG_traceexec.
//
// Once a count hook is set, Lua 5.4 calls luaG_traceexec before every instruction: a wasm call
// per instruction, and around it the interpreter keeps spilling its registers. That was most of
// what the fuel budget cost (30 to 110 %). The patch puts a short function in its place (the
// stock one is kept, unchanged, under a new index) that returns 0, "no trap": the VM then runs on
// untrapped until it next re-reads its frame's trap flag, which stays set, at its next jump,
// call, return or call into C. There the function charges the stretch the VM ran since the
// previous trap, read from the bytecode (see fastBody), counts L->hookcount down by it, and when
// the count reaches zero hands over to Lua's own function, which runs psd's hook as before.
// Anything but a count hook alone (no hooks, line hooks) also goes to Lua's own function.
//
// The count is Lua's own to within a few percent (test/64 compares the two). Not storing the
// saved pc at every instruction is safe because nothing reads it between hooks without first
// setting it: every instruction that can raise an error or call out saves its pc itself (that is
// how Lua reports lines when no hook is set at all), and Lua's function sets it before the hook.
//
// The function is found by what it does, not by its index: the one function that calls
// luaD_hook(L, LUA_HOOKCOUNT, -1, 0, 0), whose first instructions read L->ci and L->hookmask at
// the offsets below. If wasmoon's wasm ever differs, the patch is not applied and fuel works as
// before, only slower (test/64 checks that it applies to the wasm psd ships with).

import { readLeb, leb, sleb, sections, section, rebuildModule } from './wasm-binary.js'

/** lua_State field offsets in wasmoon 1.16.0's build (wasm32): checked against the code. */
const L_CI = 20, L_HOOKCOUNT = 108, L_HOOKMASK = 112
const LUA_MASKCOUNT = 8
/** The export of the patched module's `lastCi` global: set it to 0 when a call starts. */
export const TRACE_FRAME_EXPORT = 'psd_trace_frame'
/** The export of the global that holds the address of the pair cache (0: none), and its size. */
export const TRACE_CACHE_EXPORT = 'psd_trace_cache'
const CACHE_BITS = 12
export const CACHE_ENTRIES = 1 << CACHE_BITS, CACHE_BYTES = CACHE_ENTRIES * 12
/** 2^32 / golden ratio, as an i32: Knuth's multiplicative hash */
const GOLDEN = 0x9e3779b1 | 0

const I32 = 0x7f
const op = {
  localGet: 0x20, localSet: 0x21, localTee: 0x22, i32Load: 0x28, i32Store: 0x36, i32Const: 0x41,
  i32Eqz: 0x45, i32And: 0x71, if: 0x04, end: 0x0b, return: 0x0f, call: 0x10,
}

function importedFunctions(bytes: Uint8Array, s: { body: number }): number {
  let [n, p] = readLeb(bytes, s.body), funcs = 0
  for (let i = 0; i < n; i++) {
    for (let k = 0; k < 2; k++) { const [len, q] = readLeb(bytes, p); p = q + len } // module, name
    const kind = bytes[p++]
    if (kind === 0) { funcs++; p = readLeb(bytes, p)[1] } // type index
    else if (kind === 1) { p++; const flags = bytes[p++]; p = readLeb(bytes, p)[1]; if (flags & 1) p = readLeb(bytes, p)[1] }
    else if (kind === 2) { const flags = bytes[p++]; p = readLeb(bytes, p)[1]; if (flags & 1) p = readLeb(bytes, p)[1] }
    else if (kind === 3) p += 2
    else throw new Error(`unknown import kind ${kind}`)
  }
  return funcs
}

/** luaD_hook(L, LUA_HOOKCOUNT, -1, 0, 0): i32.const 3, i32.const -1, i32.const 0, i32.const 0, call */
const COUNT_HOOK_CALL = [op.i32Const, 3, op.i32Const, 0x7f, op.i32Const, 0, op.i32Const, 0, op.call]
/** The stock function's start: ci = L->ci; mask = L->hookmask; if (!(mask & (LINE|COUNT))) */
const EXPECTED_START = [
  op.localGet, 0, op.i32Load, 2, L_CI, op.localSet, -1,
  op.localGet, 0, op.i32Load, 2, L_HOOKMASK, op.localTee, -1, op.i32Const, 12, op.i32And, op.i32Eqz,
]

function startsAsExpected(bytes: Uint8Array, p: number): boolean {
  return EXPECTED_START.every((b, i) => b < 0 || bytes[p + i] === b)
}

function indexOf(bytes: Uint8Array, pattern: number[], from: number, to: number): number {
  outer: for (let i = from; i + pattern.length <= to; i++) {
    for (let k = 0; k < pattern.length; k++) if (bytes[i + k] !== pattern[k]) continue outer
    return i
  }
  return -1
}

// Lua 5.4 opcodes the scan needs (lopcodes.h)
const OP_MMBIN = 46, OP_MMBINK = 48, OP_JMP = 56, OP_EQ = 57, OP_TESTSET = 67, OP_CALL = 68, OP_TAILCALL = 69, OP_RETURN1 = 72
const OP_FORLOOP = 73, OP_TFORPREP = 75, OP_TFORLOOP = 77
/** sJ's bias (lopcodes.h: OFFSET_sJ) and the positions of sJ and Bx in an instruction */
const OFFSET_SJ = (1 << 24) - 1, POS_SJ = 7, POS_BX = 15
/** Longest stretch of code one trap charges: a bound, in case the scan does not find its end. */
const MAX_SCAN = 1 << 16
const CI_SAVEDPC = 16

/**
 * The new luaG_traceexec(L, pc). Globals: `last` (the pc of the previous trap), `lastCi` (its
 * call frame; psd sets it to 0 when a call starts) and `cache` (the address of the pair cache,
 * CACHE_ENTRIES entries of {from, to, charge}; psd allocates it before any Lua runs).
 *
 * Between two traps the VM runs straight on from `last`: a taken jump, a call, a return, or
 * an instruction that re-reads the trap flag (a call into C, an instruction that may have
 * called a metamethod) ends the stretch. What it ran is found by reading the bytecode from
 * `last` the way the VM does, and cached per pair of traps: a script has no `load`, so its code
 * never changes under the cache.
 */
function fastBody(orig: number, gLast: number, gLastCi: number, gCache: number): number[] {
  const L = 0, PC = 1, CI = 2, CHARGE = 3, P = 4, N = 5, INS = 6, OPC = 7, CNT = 8, PREV = 9, SLOT = 10
  const TGT = 11, EXACT = 12, BEST = 13, KEY = 14
  const get = (i: number) => [op.localGet, i], set = (i: number) => [op.localSet, i], tee = (i: number) => [op.localTee, i]
  const gget = (i: number) => [0x23, ...leb(i)], gset = (i: number) => [0x24, ...leb(i)]
  const c = (n: number) => [op.i32Const, ...sleb(n)]
  const load = (off: number) => [op.i32Load, 2, ...leb(off)], store = (off: number) => [op.i32Store, 2, ...leb(off)]
  const IF = [op.if, 0x40], END = op.end
  const add = 0x6a, sub = 0x6b, mul = 0x6c, shl = 0x74, shrS = 0x75, shrU = 0x76, and = 0x71, or = 0x72, eqz = 0x45
  const eq = 0x46, ne = 0x47, leS = 0x4c, gtS = 0x4a, leU = 0x4d, gtU = 0x4b, geU = 0x4f, select = 0x1b
  const block = [0x02, 0x40], loop = [0x03, 0x40], br = (d: number) => [0x0c, d], brIf = (d: number) => [0x0d, d]
  const callOrig = [...get(L), ...get(PC), op.call, ...leb(orig)]
  const isTest = (local: number) => [...get(local), ...c(OP_EQ), sub, ...c(OP_TESTSET - OP_EQ), leU]
  const code = [
    ...block, // $count: the charge is known
    ...block, // $lookup: the stretch's end (TGT) and its cache key (KEY) are known
    // The same frame: the stretch ended just before pc (the instruction before it, or a jump
    // to it, or a return or tail call).
    ...get(L), ...load(L_CI), ...tee(CI), ...gget(gLastCi), eq, ...IF,
    ...get(PC), ...tee(TGT), ...set(KEY), ...br(1),
    END,
    // A new frame (a call, a return): the old frame's stretch ended at its saved pc (its CALL or
    // RETURN saved it), exactly; the key's low bit tells this mode apart. Charge 1 when the
    // old frame is not known (the call's first trap).
    ...c(1), ...set(CHARGE),
    ...gget(gLastCi), ...set(P), ...get(CI), ...gset(gLastCi),
    ...get(P), eqz, ...brIf(1),
    ...get(P), ...load(CI_SAVEDPC), ...tee(TGT), ...gget(gLast), sub, ...c(2), shrS,
    ...c(1), sub, ...c(MAX_SCAN), geU, ...brIf(1), // not within (last, last + MAX_SCAN]
    ...get(TGT), ...c(1), or, ...set(KEY),
    END, // $lookup
    // the cache: a multiplicative hash of the pair (its top CACHE_BITS bits)
    ...gget(gCache), ...gget(gLast), ...c(GOLDEN), mul, ...get(KEY), add, ...c(GOLDEN), mul, ...c(32 - CACHE_BITS), shrU,
    ...c(12), mul, add, ...tee(SLOT),
    ...load(0), ...gget(gLast), eq, ...get(SLOT), ...load(4), ...get(KEY), eq, and, ...IF,
    ...get(SLOT), ...load(8), ...set(CHARGE), ...br(1),
    END,
    // Not known yet. Anything but a count hook alone goes to Lua's own function.
    ...get(L), ...load(L_HOOKMASK), ...c(LUA_MASKCOUNT), ne, ...IF, ...callOrig, op.return, END,
    ...get(KEY), ...c(1), and, ...set(EXACT),
    // The scan, from `last` on, the way the VM ran: up to the first instruction after which
    // the VM always traps (a call, a return, a jump that is not a test's). The stretch ended at
    // the last of the places that lead to pc: the instruction just before it, or a jump to it.
    // A test's jump may have been skipped, so the last such place is the one to believe: a
    // script never gets code for free; at worst it pays for some it skipped.
    ...gget(gLast), ...set(P), ...c(0), ...set(N), ...c(0), ...set(PREV), ...c(0), ...set(BEST),
    ...block, ...loop,
    ...get(P), ...load(0), ...tee(INS), ...c(0x7f), and, ...set(OPC),
    // not counted, as Lua does not count what it runs without fetching it: MMBIN after an
    // arithmetic instruction that did not need it, the JMP of a test, TFORLOOP after TFORCALL
    ...get(N), ...c(1), add,
    ...get(OPC), ...c(OP_MMBIN), sub, ...c(OP_MMBINK - OP_MMBIN), leU,
    ...get(OPC), ...c(OP_JMP), eq, ...isTest(PREV), and, or,
    ...get(OPC), ...c(OP_TFORLOOP), eq, or,
    sub, ...set(N),
    // the instruction before the trap's pc, unless it cannot fall through to it (a return, a
    // tail call, a JMP that is not a test's); exact mode knows it is the one
    ...get(P), ...c(4), add, ...get(TGT), eq,
    ...get(EXACT),
    ...get(OPC), ...c(OP_TAILCALL), sub, ...c(OP_RETURN1 - OP_TAILCALL), gtU,
    ...get(OPC), ...c(OP_JMP), ne, ...isTest(PREV), or, and, or, and,
    ...IF, ...get(N), ...set(BEST), ...get(EXACT), ...brIf(2), END,
    ...get(EXACT), eqz, ...IF,
    // a jump to it: JMP (pc + 1 + sJ), FORLOOP and TFORLOOP (pc + 1 - Bx)
    ...get(OPC), ...c(OP_JMP), eq, ...IF,
    ...get(P), ...c(4), add, ...get(INS), ...c(POS_SJ), shrU, ...c(OFFSET_SJ), sub, ...c(2), shl, add, ...get(TGT), eq, ...IF, ...get(N), ...set(BEST), END,
    END,
    ...get(OPC), ...c(OP_FORLOOP), eq, ...get(OPC), ...c(OP_TFORLOOP), eq, or, ...IF,
    ...get(P), ...c(4), add, ...get(INS), ...c(POS_BX), shrU, ...c(2), shl, sub, ...get(TGT), eq, ...IF, ...get(N), ...set(BEST), END,
    END,
    END,
    // where the VM always traps: CALL, TAILCALL, the returns, and a JMP that is not a test's
    ...get(OPC), ...c(OP_CALL), sub, ...c(OP_RETURN1 - OP_CALL), leU, ...brIf(1),
    ...get(OPC), ...c(OP_JMP), eq, ...isTest(PREV), eqz, and, ...brIf(1),
    ...get(N), ...c(MAX_SCAN), geU, ...brIf(1),
    ...get(OPC), ...set(PREV),
    // TFORPREP goes on at its TFORCALL without a trap
    ...get(OPC), ...c(OP_TFORPREP), eq, ...IF,
    ...get(P), ...get(INS), ...c(POS_BX), shrU, ...c(2), shl, add, ...set(P),
    END,
    ...get(P), ...c(4), add, ...set(P),
    ...br(0),
    END, END,
    // no place led to pc: all the code up to where the stretch must have ended; at least 1
    ...get(BEST), ...get(N), ...get(BEST), select, ...tee(P), ...c(1), ...get(P), ...c(1), geU, select, ...set(CHARGE),
    ...gget(gCache), ...IF,
    ...get(SLOT), ...gget(gLast), ...store(0), ...get(SLOT), ...get(KEY), ...store(4), ...get(SLOT), ...get(CHARGE), ...store(8),
    END,
    // The scan itself is paid for, this once: at least one unit per 16 instructions read. A
    // script that keeps evicting pairs whose scans run far past their end (more than the cache
    // holds) could otherwise make the VM read code for free.
    ...get(N), ...c(4), shrU, ...tee(P), ...get(CHARGE), ...get(P), ...get(CHARGE), gtU, select, ...set(CHARGE),
    END, // $count
    ...get(PC), ...gset(gLast),
    // count down; at zero Lua's function runs the hook (which arms the next period: the part of
    // the charge the countdown could not take comes off it)
    ...get(L), ...load(L_HOOKCOUNT), ...get(CHARGE), sub, ...tee(CNT), ...c(0), leS, ...IF,
    ...get(L), ...c(1), ...store(L_HOOKCOUNT),
    ...callOrig, ...set(CHARGE),
    ...get(L), ...get(L), ...load(L_HOOKCOUNT), ...get(CNT), add, ...tee(CNT), ...c(1), ...get(CNT), ...c(1), gtS, select, ...store(L_HOOKCOUNT),
    ...get(CHARGE), op.return,
    END,
    ...get(L), ...get(CNT), ...store(L_HOOKCOUNT),
    // trap off: the VM traps again at its next jump, call or return (it reloads the frame's
    // trap flag there, which stays set)
    ...c(0), END,
  ]
  const body = [1, 13, I32, ...code] // thirteen i32 locals after the two parameters
  return [...leb(body.length), ...body]
}

/**
 * Returns the module with luaG_traceexec's count path made cheap (see above), or null when the
 * module is not the build this was written for.
 */
export function patchCountHook(bytes: Uint8Array): Uint8Array | null {
  const secs = sections(bytes)
  const sec = (id: number) => secs.find((s) => s.id === id)
  const imports = sec(2), funcs = sec(3), code = sec(10)
  if (!funcs || !code) return null
  const nImported = imports ? importedFunctions(bytes, imports) : 0

  // the bodies of the code section
  let [count, p] = readLeb(bytes, code.body)
  const bodies: { start: number; end: number; code: number }[] = [] // start: at the size; code: after it
  for (let i = 0; i < count; i++) {
    const [size, q] = readLeb(bytes, p)
    bodies.push({ start: p, end: q + size, code: q })
    p = q + size
  }
  const hits = bodies.filter((b) => indexOf(bytes, COUNT_HOOK_CALL, b.code, b.end) >= 0)
  if (hits.length !== 1) return null
  const target = hits[0], local = bodies.indexOf(target)
  // after the locals declaration: count, then (n, type) pairs
  let [nDecl, q] = readLeb(bytes, target.code)
  for (let i = 0; i < nDecl; i++) q = readLeb(bytes, q)[1] + 1
  if (!startsAsExpected(bytes, q)) return null

  // its type, from the function section
  let [fcount, fp] = readLeb(bytes, funcs.body)
  if (fcount !== count) return null
  const types: number[] = []
  for (let i = 0; i < fcount; i++) { const [t, r] = readLeb(bytes, fp); types.push(t); fp = r }
  const origIndex = nImported + count // the stock function, appended

  // two new globals, `last` and `lastCi`, the second exported so psd can reset it per call
  const globals = sec(6), exports = sec(7)
  if (!globals || !exports) return null
  const [gcount, gp] = readLeb(bytes, globals.body)
  const gLast = gcount, gLastCi = gcount + 1, gCache = gcount + 2
  const zeroGlobal = [I32, 1, op.i32Const, 0, op.end]
  const newGlobals = [...leb(gcount + 3), ...bytes.subarray(gp, globals.end), ...Array(3).fill(zeroGlobal).flat()]
  const [ecount, ep] = readLeb(bytes, exports.body)
  const exportGlobal = (name: string, index: number) => [name.length, ...[...name].map((ch) => ch.charCodeAt(0)), 3, ...leb(index)]
  const newExports = [...leb(ecount + 2), ...bytes.subarray(ep, exports.end),
    ...exportGlobal(TRACE_FRAME_EXPORT, gLastCi), ...exportGlobal(TRACE_CACHE_EXPORT, gCache)]

  const newFuncs = [...leb(fcount + 1), ...types.flatMap((t) => leb(t)), ...leb(types[local])]
  const parts: ArrayLike<number>[] = [leb(count + 1)]
  for (const b of bodies) parts.push(b === target ? fastBody(origIndex, gLast, gLastCi, gCache) : bytes.subarray(b.start, b.end))
  parts.push(bytes.subarray(target.start, target.end)) // the stock body, unchanged, as a new function

  const replaced = new Map([
    [funcs, section(3, newFuncs)], [globals, section(6, newGlobals)], [exports, section(7, newExports)], [code, section(10, ...parts)],
  ])
  return rebuildModule(bytes, secs, (s) => replaced.get(s))
}
