// NFQUEUE, the live packet source: a typed wrapper over the native addon (native/, built by
// `npm install` into build/Release/psd_nfqueue.node).
//
// One NfQueue is one bound queue number in the current network namespace. The loop is:
//   q.onReadable(() => { let n; while ((n = q.receive(buf)) > 0) { ...; q.verdicts(batch) } })
// receive() writes packet records (src/batch-format.ts) into buf, with no JS object per packet;
// verdicts() sends a batch of decisions back in as few syscalls as the kernel allows.
// Every received packet must get exactly one verdict (or settleAll()/close({settle})).
import { createRequire } from 'node:module'
import { existsSync, readFileSync } from 'node:fs'
import { dirname, join } from 'node:path'
import { fileURLToPath } from 'node:url'

/** The kernel's verdict codes (linux/netfilter.h). */
export const NF_DROP = 0
export const NF_ACCEPT = 1
export const NF_QUEUE = 3
export const NF_REPEAT = 4
/** Verdict that hands the packet to queue n. */
export function NF_QUEUE_NR(n: number): number {
  if (!Number.isInteger(n) || n < 0 || n > 65535) throw new RangeError(`queue number ${n} is not 0..65535`)
  return ((n << 16) | NF_QUEUE) >>> 0
}
/** In a Uint32Array of marks: leave the packet's mark as it is. (In a Float64Array: -1.) */
export const MARK_UNCHANGED = 0xffffffff

export interface NfQueueOptions {
  /** Queue number, 0..65535. Queues are per network namespace. Default 0. */
  queue?: number
  /** Packets the kernel may hold waiting for a verdict, 1..65536. Default 4096. */
  maxlen?: number
  /** Bytes of each packet copied to us, 1..65535 (the kernel clamps to 65531). Default all. */
  copyRange?: number
  /** Kernel accepts packets instead of dropping them when the queue is full. Default false. */
  failOpen?: boolean
  /** Take GSO super-packets whole (up to 64 KiB, checksum maybe partial). Default false. */
  gso?: boolean
  /** Ask for the socket owner's uid/gid (record fields uid, gid). Default false. */
  uidGid?: boolean
  /** Ask for conntrack attributes (not carried in records yet). Default false. */
  conntrack?: boolean
  /** Socket receive buffer in bytes; default sized to hold maxlen packets. */
  rcvbuf?: number
  /** Most messages one receive syscall (recvmmsg) takes. Default 64. */
  batch?: number
  /** Set NETLINK_NO_ENOBUFS (default true): socket overruns are counted by the kernel only. */
  noEnobufs?: boolean
}

export interface VerdictBatch {
  /** Number of verdicts to send (entries 0..count-1 of each array). */
  count: number
  /** Packet ids, as received (record field id). */
  ids: Uint32Array
  /** NF_ACCEPT, NF_DROP, NF_REPEAT or NF_QUEUE_NR(n), one per packet. */
  codes: Uint32Array
  /** New marks; MARK_UNCHANGED (Uint32Array) or any value outside 0..2^32-1 (Float64Array) keeps the mark. */
  marks?: Uint32Array | Float64Array | null
  /** Replacement packets: packet i becomes data[offsets[i] .. offsets[i]+lengths[i]) when lengths[i] > 0. */
  payload?: { data: Uint8Array; offsets: Uint32Array; lengths: Uint32Array } | null
}

/** Counters kept by the addon for one queue (since open). */
export interface QueueStats {
  packets: number
  recvCalls: number
  enobufs: number
  eintr: number
  truncated: number
  verdicts: number
  verdictMsgs: number
  batchMsgs: number
  sendCalls: number
  sendErrors: number
  nlErrors: number
  lastNlError: number
  rcvbuf: number
  outstanding: number
}

/** One line of /proc/net/netfilter/nfnetlink_queue (this network namespace). */
export interface KernelQueueCounters {
  queue: number
  /** Netlink port id of the socket bound to the queue. */
  portid: number
  /** Packets waiting for a verdict now. */
  waiting: number
  copyMode: number
  copyRange: number
  /** Dropped because the queue was full (maxlen). */
  queueDropped: number
  /** Dropped because the socket buffer was full (netlink delivery failed). */
  userDropped: number
  /** Last packet id given out. */
  idSequence: number
}

export class NfQueueError extends Error {
  readonly code: string
  readonly errno: number
  readonly queue: number | undefined
  constructor(message: string, code: string, errno: number, queue?: number) {
    super(message)
    this.name = 'NfQueueError'
    this.code = code
    this.errno = errno
    this.queue = queue
  }
}

interface NativeQueue {
  receive(buf: Uint8Array, max: number, info: Uint32Array, ids?: Float64Array): number
  verdicts(count: number, ids: Uint32Array, codes: Uint32Array, marks: Uint32Array | Float64Array | null,
    data: Uint8Array | null, offsets: Uint32Array | null, lengths: Uint32Array | null): number
  verdictRecords(records: Uint8Array, count: number, verdict: Int32Array, mark: Float64Array, fault: Uint8Array,
    faultCode: number, res: Float64Array): number
  settleAll(code: number): void
  startPoll(cb: (status: number) => void): void
  stopPoll(): void
  close(): void
  stats(): QueueStats
  readonly fd: number
  readonly portid: number
  readonly queue: number
  readonly outstanding: number
  readonly pending: boolean
  readonly maxRecord: number
}
interface Addon { Queue: new (o: NfQueueOptions) => NativeQueue }

let addon: Addon | undefined
let addonError: Error | undefined

/** Where the built addon is looked for: $PSD_NFQUEUE_ADDON, else build/{Release,Debug} at the repo root. */
export function addonPath(): string | undefined {
  if (process.env.PSD_NFQUEUE_ADDON) return process.env.PSD_NFQUEUE_ADDON
  let dir = dirname(fileURLToPath(import.meta.url))
  for (let i = 0; i < 5; i++, dir = dirname(dir)) {
    for (const kind of ['Release', 'Debug']) {
      const p = join(dir, 'build', kind, 'psd_nfqueue.node')
      if (existsSync(p)) return p
    }
  }
  return undefined
}

/** Loads the addon once; throws an NfQueueError saying how to build it when it is missing. */
export function loadAddon(): Addon {
  if (addon) return addon
  if (addonError) throw addonError
  const p = addonPath()
  try {
    if (!p) throw new Error('build/Release/psd_nfqueue.node not found')
    addon = createRequire(import.meta.url)(p) as Addon
    return addon
  } catch (e) {
    addonError = new NfQueueError(
      `the NFQUEUE addon is not available (${(e as Error).message}); build it with \`npm install\` ` +
        '(node-gyp; set npm_config_nodedir=/usr if it tries to download Node headers)',
      'EADDON', 0)
    throw addonError
  }
}

export function addonAvailable(): boolean {
  try {
    loadAddon()
    return true
  } catch {
    return false
  }
}

function wrapError(e: unknown, queue?: number): Error {
  if (!(e instanceof Error)) return new Error(String(e))
  const code = (e as { code?: unknown }).code
  const errno = (e as { errno?: unknown }).errno
  if (typeof code !== 'string' || typeof errno !== 'number') return e
  return new NfQueueError(e.message, code, errno, queue)
}

/** Parses the text of /proc/net/netfilter/nfnetlink_queue. */
export function parseKernelCounters(text: string): KernelQueueCounters[] {
  const out: KernelQueueCounters[] = []
  for (const line of text.split('\n')) {
    const f = line.trim().split(/\s+/).map(Number)
    if (f.length < 8 || f.some((x) => !Number.isFinite(x))) continue
    out.push({ queue: f[0], portid: f[1], waiting: f[2], copyMode: f[3], copyRange: f[4],
      queueDropped: f[5], userDropped: f[6], idSequence: f[7] })
  }
  return out
}

/** The kernel's counters of every bound queue in this process's network namespace. */
export function readKernelCounters(): KernelQueueCounters[] {
  try {
    return parseKernelCounters(readFileSync('/proc/net/netfilter/nfnetlink_queue', 'utf8'))
  } catch {
    return []
  }
}

/**
 * Slots of verdictRecords' counts (a Float64Array of RV_SLOTS): codes sent by kind, records with
 * a fault, GSO and checksum-not-ready records, codes the kernel would not take (sent as the fault
 * code), then (id, code) of the first RV_SHOWN of those.
 */
export const RV = { accepted: 0, dropped: 1, other: 2, faults: 3, gso: 4, csumPartial: 5, invalid: 6, shown: 7 } as const
export const RV_SHOWN = 4
export const RV_SLOTS = RV.shown + 2 * RV_SHOWN

export class NfQueue {
  readonly queue: number
  readonly options: Readonly<NfQueueOptions>
  #q: NativeQueue | undefined
  #info = new Uint32Array(3)

  private constructor(q: NativeQueue, options: NfQueueOptions) {
    this.#q = q
    this.queue = q.queue
    this.options = Object.freeze({ ...options })
  }

  /** Binds the queue (root or CAP_NET_ADMIN in the namespace). Throws NfQueueError. */
  static open(options: NfQueueOptions = {}): NfQueue {
    const { Queue } = loadAddon()
    const queue = options.queue ?? 0
    try {
      return new NfQueue(new Queue({ ...options, queue }), options)
    } catch (e) {
      const err = wrapError(e, queue)
      if (err instanceof NfQueueError && err.code === 'EPERM') {
        // Say which of the two it is when we can tell.
        const holder = readKernelCounters().find((k) => k.queue === queue)
        const more = holder ? `; it is bound to netlink port id ${holder.portid}`
          : typeof process.getuid === 'function' && process.getuid() !== 0 ? '; you are not root' : ''
        throw new NfQueueError(err.message + more, err.code, err.errno, queue)
      }
      throw err
    }
  }

  #native(): NativeQueue {
    if (!this.#q) throw new NfQueueError(`queue ${this.queue} is closed`, 'EBADF', 9, this.queue)
    return this.#q
  }

  get closed(): boolean { return this.#q === undefined }
  /** The netlink socket's file descriptor. */
  get fd(): number { return this.#native().fd }
  /** The socket's netlink port id (the portid column of the kernel counters). */
  get portid(): number { return this.#native().portid }
  /** Packets received and not yet given a verdict. */
  get outstanding(): number { return this.#native().outstanding }
  /** Messages already read from the socket but not yet delivered (the last buffer was full). */
  get pending(): boolean { return this.#native().pending }
  /** Bytes the largest possible record needs; a receive buffer must hold at least that. */
  get maxRecord(): number { return this.#native().maxRecord }
  /** Bytes written by the last receive(). */
  get lastBytes(): number { return this.#info[1] }

  /**
   * Calls cb when the socket has packets (libuv poll, level-triggered). cb should receive()
   * until it returns 0. null stops polling. While polling, the queue keeps the event loop alive.
   * A poll error goes to onError, or is thrown (an uncaught exception) without one.
   */
  onReadable(cb: (() => void) | null, onError?: (e: NfQueueError) => void): void {
    const q = this.#native()
    if (!cb) return q.stopPoll()
    q.startPoll((status: number) => {
      if (status < 0) {
        const e = new NfQueueError(`queue ${this.queue}: poll error ${status}`, 'EPOLL', -status, this.queue)
        if (onError) return onError(e)
        throw e
      }
      cb()
    })
  }

  /**
   * Receives up to maxPackets packets without blocking and writes them as records from buf[0]
   * on. Returns the number of records (0: nothing waiting); lastBytes gives the bytes used.
   * With `ids` (at least maxPackets numbers), record k's packet id goes to ids[k] too.
   */
  receive(buf: Uint8Array, maxPackets = 64, ids?: Float64Array): number {
    try {
      return this.#native().receive(buf, maxPackets, this.#info, ids)
    } catch (e) {
      throw wrapError(e, this.queue)
    }
  }

  /**
   * Sends verdicts. Plain accepts (NF_ACCEPT, mark unchanged, no payload) are folded into
   * NFQNL_MSG_VERDICT_BATCH messages of up to 64 when that is valid: the kernel accepts every waiting packet with an id
   * <= the batch's id, so the addon uses it only up to the first packet it delivered that has no
   * verdict yet; everything else is one NFQNL_MSG_VERDICT each, all in as few sendmsg calls as the
   * sizes allow. A replacement payload replaces the whole packet: never send one for a record with
   * len < origlen (a copy range cut it), or the kernel cuts the packet to that length. The kernel
   * takes the new bytes as they are (checksums included).
   * Throws NfQueueError if the kernel could not take them (they stay outstanding).
   */
  verdicts(b: VerdictBatch): void {
    const p = b.payload
    try {
      this.#native().verdicts(b.count, b.ids, b.codes, b.marks ?? null, p ? p.data : null, p ? p.offsets : null,
        p ? p.lengths : null)
    } catch (e) {
      throw wrapError(e, this.queue)
    }
  }

  /**
   * The verdicts of `count` records as receive() wrote them into `records`, none with a new
   * payload: the ids and flags are read from the records, and record k gets verdict[k] with
   * mark[k] (-1: unchanged); sent as verdicts() sends them. A code the kernel would not take
   * (anything but NF_ACCEPT, NF_DROP, NF_REPEAT, NF_QUEUE_NR(n)) is sent as faultCode with the
   * mark unchanged. Writes what it sent into counts (RV slots; fault[k] != 0 counts a fault),
   * also when it throws NfQueueError as verdicts() does.
   */
  verdictRecords(records: Uint8Array, count: number, verdict: Int32Array, mark: Float64Array, fault: Uint8Array,
    faultCode: number, counts: Float64Array): void {
    try {
      this.#native().verdictRecords(records, count, verdict, mark, fault, faultCode, counts)
    } catch (e) {
      throw wrapError(e, this.queue)
    }
  }

  /** Gives every packet still waiting (received or not yet) one verdict, in one message. */
  settleAll(code: number = NF_ACCEPT): void {
    try {
      this.#native().settleAll(code)
    } catch (e) {
      throw wrapError(e, this.queue)
    }
  }

  /** The addon's counters for this queue. */
  stats(): QueueStats {
    return this.#native().stats()
  }

  /** The kernel's counters for this queue (undefined once closed or if the kernel lists none). */
  kernelCounters(): KernelQueueCounters | undefined {
    if (!this.#q) return undefined
    const portid = this.#q.portid
    return readKernelCounters().find((k) => k.queue === this.queue && k.portid === portid)
  }

  /**
   * Stops polling and closes the socket; the kernel unbinds the queue. Packets still waiting
   * are dropped by the kernel unless settle gives them a verdict first (e.g. NF_ACCEPT).
   */
  close(opts: { settle?: number } = {}): void {
    const q = this.#q
    if (!q) return
    try {
      if (opts.settle !== undefined) q.settleAll(opts.settle)
    } finally {
      this.#q = undefined
      q.close()
    }
  }
}
