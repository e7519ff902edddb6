// Script services on the host side (API.md section 6: defer, timer, net): the tenant's bounds,
// the permission and rate limit of net.send, the counters, the logging of callback faults, and
// the live timer pump. The callbacks themselves live in the VM (wasm/lua/services.lua) and run
// through LuaVM.runDeferred/runTimers, each under its own budgets.
//
// Bounds per tenant (defaults in SERVICE_DEFAULTS):
//   deferred calls waiting      1024   defer() returns false when full (the new call is dropped)
//   timers existing at once      256   timer.after/every raise "too many timers"
//   net.send                    1000/s, bursts of 200   over it net.send returns false
// Every refusal is counted (ServiceCounters) and logged without flooding.
import { fixup } from '../packet/checksum.js'
import type { ServiceHost, FaultKind } from '../../wasm/vm.js'
import type { TenantConfig } from '../config.js'
import type { Logger } from '../log.js'

/** The mark (SO_MARK) on every packet psd sends, so rules can keep them out of psd's queues:
 *  iptables -A OUTPUT -m mark ! --mark 0x5053 -j NFQUEUE --queue-num 0 */
export const SEND_MARK = 0x5053

export interface ServiceLimits {
  /** Deferred calls that may wait at once. */
  maxDeferred: number
  /** Timers that may exist at once. */
  maxTimers: number
  /** net.send: packets per second (token bucket rate) ... */
  sendRate: number
  /** ... and the burst the bucket holds. */
  sendBurst: number
}

export const SERVICE_DEFAULTS: ServiceLimits = { maxDeferred: 1024, maxTimers: 256, sendRate: 1000, sendBurst: 200 }

export const SEND_NOT_ALLOWED = 'net.send: this tenant may not send (allow it with --allow-send or "send": true)'

/** Where net.send's packets go: a raw socket live, a pcap file offline. */
export interface PacketSender {
  /** Takes one IPv4/IPv6 packet with lengths and checksums already right; timeNs is the
   *  tenant's clock (offline: the capture time). Must not throw; failures are its own to count. */
  send(packet: Uint8Array, timeNs: bigint): void
  close(): void
}

export interface ServiceCounters {
  deferred_run: number
  deferred_dropped: number
  deferred_faults: number
  timers_fired: number
  timers_refused: number
  timers_skipped: number
  timers_postponed: number
  timer_faults: number
  sent: number
  send_limited: number
  send_refused: number
  send_invalid: number
}

function zeroCounters(): ServiceCounters {
  return {
    deferred_run: 0, deferred_dropped: 0, deferred_faults: 0, timers_fired: 0, timers_refused: 0,
    timers_skipped: 0, timers_postponed: 0, timer_faults: 0, sent: 0, send_limited: 0, send_refused: 0, send_invalid: 0,
  }
}

/** A token bucket on an integer-ns clock (offline the capture clock, so runs are deterministic). */
export class TokenBucket {
  private tokens: number
  private last: bigint | null = null
  constructor(readonly rate: number, readonly burst: number) { this.tokens = burst }

  take(now: bigint): boolean {
    if (this.last === null) this.last = now
    else if (now > this.last) {
      this.tokens = Math.min(this.burst, this.tokens + Number(now - this.last) * this.rate / 1e9)
      this.last = now
    }
    if (this.tokens >= 1) { this.tokens -= 1; return true }
    return false
  }
}

/** Why these bytes cannot be sent, or null: an IPv4 or IPv6 packet with a whole header, at most 65535 bytes. */
export function unsendable(b: Uint8Array): string | null {
  if (b.length === 0) return 'net.send: empty packet'
  const v = b[0] >> 4
  if (v === 4) {
    const ihl = (b[0] & 15) * 4
    if (b.length < 20 || ihl < 20 || ihl > b.length) return `net.send: not a whole IPv4 header (${b.length} bytes, header length ${ihl})`
  } else if (v === 6) {
    if (b.length < 40) return `net.send: not a whole IPv6 header (${b.length} bytes)`
  } else {
    return `net.send: not an IPv4 or IPv6 packet (version ${v})`
  }
  if (b.length > 65535) return `net.send: packet of ${b.length} bytes (at most 65535)`
  return null
}

/** Logs the first 100 of a kind of event one by one, then one in 1000 with the count left out. */
class Quiet {
  private seen = 0
  private left = 0
  constructor(private log: Logger) {}
  report(level: 'warn' | 'error', msg: string, fields: Record<string, unknown>): void {
    this.seen++
    if (this.seen <= 100 || this.seen % 1000 === 0) {
      this.log.log(level, msg, { ...fields, suppressed: this.left || undefined })
      this.left = 0
    } else {
      this.left++
    }
  }
}

export interface ServicesOptions {
  /** Where sent packets go; without one, allowed sends are counted and discarded (offline without --write-sent). */
  sender?: PacketSender
  limits?: Partial<ServiceLimits>
}

/** The host side of one tenant's services; shared by every VM the tenant builds (rebuilds too). */
export class TenantServices {
  readonly counters: ServiceCounters = zeroCounters()
  readonly limits: ServiceLimits
  private bucket: TokenBucket
  private faults: Quiet
  /** one limiter per kind of refusal, so a flood of one never hides another */
  private refusals = new Map<string, Quiet>()

  /** onFault: a callback's fault, for the tenant's fault counters (psd_faults_total). */
  constructor(private cfg: TenantConfig, private log: Logger, private opts: ServicesOptions = {},
    private onFault: (kind: FaultKind) => void = () => {}) {
    this.limits = { ...SERVICE_DEFAULTS, ...opts.limits }
    this.bucket = new TokenBucket(this.limits.sendRate, this.limits.sendBurst)
    this.faults = new Quiet(log)
  }

  /** What a VM of this tenant gets as HostServices.services. */
  host(clockStart?: bigint): ServiceHost {
    return {
      maxDeferred: this.limits.maxDeferred,
      maxTimers: this.limits.maxTimers,
      clockStart,
      send: (b, t) => this.send(b, t),
      callbackFault: (what, kind, message) => {
        if (what === 'defer') this.counters.deferred_faults++
        else this.counters.timer_faults++
        this.onFault(kind)
        this.faults.report('error', message, { fault: kind, in: what === 'defer' ? 'deferred call' : 'timer callback' })
      },
      count: (name, n) => {
        if (name in this.counters) (this.counters as any)[name] += n
        if (name === 'deferred_dropped') this.refusal(name, `defer: the queue is full (${this.limits.maxDeferred} calls); the new call was dropped`)
        else if (name === 'timers_postponed') this.refusal(name, 'timers: too many callbacks due at once; the rest were postponed')
      },
    }
  }

  /** net.send from the script: permission, a sendable packet, the rate limit, then fix-up and the sender. */
  send(b: Uint8Array, timeNs: bigint): boolean | string {
    if (!this.cfg.send) { this.counters.send_refused++; return SEND_NOT_ALLOWED }
    const bad = unsendable(b)
    if (bad) { this.counters.send_invalid++; return bad }
    if (!this.bucket.take(timeNs)) {
      this.counters.send_limited++
      this.refusal('send_limited', `net.send: over the rate limit (${this.limits.sendRate}/s, bursts of ${this.limits.sendBurst}); the packet was not sent`)
      return false
    }
    fixup(b)
    this.counters.sent++
    this.opts.sender?.send(b, timeNs)
    return true
  }

  private refusal(event: string, msg: string): void {
    let q = this.refusals.get(event)
    if (!q) this.refusals.set(event, q = new Quiet(this.log))
    q.report('warn', msg, { event })
  }

  /** The counters that are not zero (for the end-of-run log line). */
  nonZero(): Partial<ServiceCounters> {
    const o: Partial<ServiceCounters> = {}
    for (const [k, v] of Object.entries(this.counters)) if (v) (o as any)[k] = v
    return o
  }

  close(): void {
    this.opts.sender?.close()
  }
}

/**
 * Live: runs a tenant's timers on time while no packets arrive. arm() after every batch and
 * every round (with the VM's nextTimerDue on process.hrtime.bigint()); the timeout is unref'd,
 * so it never keeps a stopping process alive.
 */
export class TimerPump {
  private handle: ReturnType<typeof setTimeout> | null = null
  private armedFor: bigint | null = null
  constructor(private tick: () => void) {}

  arm(due: bigint | null): void {
    if (this.handle !== null && due === this.armedFor) return
    this.disarm()
    if (due === null) return
    const ms = Math.max(0, Math.ceil(Number(due - process.hrtime.bigint()) / 1e6))
    this.armedFor = due
    this.handle = setTimeout(() => { this.handle = null; this.armedFor = null; this.tick() }, Math.min(ms, 0x7fffffff))
    this.handle.unref?.()
  }

  disarm(): void {
    if (this.handle !== null) clearTimeout(this.handle)
    this.handle = null
    this.armedFor = null
  }
}
