// The memory a tenant's worker shares with the main thread (one SharedArrayBuffer per worker).
//
// The main thread writes a batch of records into `input` (or, when they already lie in shared
// memory of its own, as the live loop's receive buffers do, says where: C.src, C.srcOff; the
// worker was handed that buffer once, by message), their record numbers into `ns`, its size into
// ctl, and posts it by storing its command id in ctl[C.cmd] (Atomics.notify wakes the worker);
// the worker runs it and writes each packet's result into the result arrays as soon as it is
// final, so the results of the packets before a runaway survive the worker being terminated,
// then stores the id in ctl[C.done] and notifies. No message crosses for a batch unless the
// reply carries more than the channel holds (counters, overflow, an error): then ctl[C.reply]
// says a message follows. Other commands (stop, reload) are messages. The VM's
// progress slots (PROGRESS in wasm/vm.ts) sit in `ctl` too: the watchdog reads them to see which
// call a worker is in and since when, and `ctl[C.cur]` says which command that call belongs to.
import { PROGRESS_SLOTS, MAX_BATCH_BYTES } from '../../wasm/vm.js'

/** Packets per command; a bigger batch is run in pieces. */
export const CHANNEL_PACKETS = 1024
/** Edited packet bytes per command; what does not fit travels in the reply message. */
const DATA_BYTES = 1 << 20
/** Fault messages per command (each at most MAX_MESSAGE bytes plus the script path). */
const MSG_BYTES = 64 << 10

/** Int32 slots of ctl. */
export const C = {
  cur: 0,        // worker: id of the command running, CUR_IDLE between commands, CUR_CALLBACK in timers/deferred calls
  tid: 1,        // worker: its thread's id in the kernel (for the watchdog's CPU time check)
  cmd: 2,        // main: id of the last batch command posted (Atomics.notify wakes the worker)
  done: 3,       // worker: id of the last batch command finished (Atomics.notify wakes main)
  count: 4,      // main: packets of the batch posted
  bytes: 5,      // main: record bytes of the batch posted
  reply: 6,      // worker: REPLY_FAST (all in the channel) or REPLY_MESSAGE (a 'reply' message follows)
  fuel: 7,       // main: 1 while per-packet fuel is measured (read by the worker at each batch)
  progress: 8,   // PROGRESS_SLOTS slots, written by the VM
  extra: 13,     // worker: 1 when a packet of the batch done has edited bytes or a message (dataLen, msgLen)
  src: 14,       // main: where the batch's records are: 0 = `input`, else the id of a shared buffer of the caller's
  srcOff: 15,    // main: with src != 0, the byte offset of the records in that buffer
} as const
export const CUR_IDLE = 0
export const CUR_CALLBACK = -1
export const REPLY_FAST = 0
export const REPLY_MESSAGE = 1
const CTL_SLOTS = 16

export class Channel {
  readonly ctl: Int32Array
  readonly progress: Int32Array
  readonly verdict: Int32Array
  readonly mark: Float64Array
  readonly fuel: Float64Array
  readonly fault: Uint8Array
  readonly ns: Float64Array
  readonly dataOff: Int32Array
  readonly dataLen: Int32Array
  readonly msgOff: Int32Array
  readonly msgLen: Int32Array
  readonly input: Uint8Array
  readonly data: Uint8Array
  readonly msg: Uint8Array

  constructor(readonly sab: SharedArrayBuffer = new SharedArrayBuffer(Channel.bytes())) {
    const n = CHANNEL_PACKETS
    let off = 0
    const take = (bytes: number) => { const o = off; off += (bytes + 7) & ~7; return o }
    this.ctl = new Int32Array(sab, take(CTL_SLOTS * 4), CTL_SLOTS)
    this.progress = this.ctl.subarray(C.progress, C.progress + PROGRESS_SLOTS)
    this.mark = new Float64Array(sab, take(n * 8), n)
    this.fuel = new Float64Array(sab, take(n * 8), n)
    this.ns = new Float64Array(sab, take(n * 8), n)
    this.verdict = new Int32Array(sab, take(n * 4), n)
    this.dataOff = new Int32Array(sab, take(n * 4), n)
    this.dataLen = new Int32Array(sab, take(n * 4), n)
    this.msgOff = new Int32Array(sab, take(n * 4), n)
    this.msgLen = new Int32Array(sab, take(n * 4), n)
    this.fault = new Uint8Array(sab, take(n), n)
    this.input = new Uint8Array(sab, take(MAX_BATCH_BYTES), MAX_BATCH_BYTES)
    this.data = new Uint8Array(sab, take(DATA_BYTES), DATA_BYTES)
    this.msg = new Uint8Array(sab, take(MSG_BYTES), MSG_BYTES)
  }

  static bytes(): number {
    const n = CHANNEL_PACKETS, r = (b: number) => (b + 7) & ~7
    return r(CTL_SLOTS * 4) + 3 * r(n * 8) + 5 * r(n * 4) + r(n) + r(MAX_BATCH_BYTES) + r(DATA_BYTES) + r(MSG_BYTES)
  }
}

/** Atomics.waitAsync (Node 16+; not in this TypeScript lib's Atomics). */
export const waitAsync = (Atomics as unknown as {
  waitAsync(a: Int32Array, i: number, v: number, timeoutMs?: number):
    { async: false; value: 'not-equal' | 'timed-out' } | { async: true; value: Promise<'ok' | 'timed-out'> }
}).waitAsync.bind(Atomics)
