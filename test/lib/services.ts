// Helpers for the script-services tests (70.services.*): captures with chosen timestamps and
// readers of the log lines a run wrote.
import { writeFileSync } from 'node:fs'
import { join } from 'node:path'
import { pcapBytes, LINK, ipv4, udp } from './packets.js'
import { runPsd } from './psd.js'

export const T0 = 1_700_000_000

/** A raw-IP pcap (nanosecond timestamps) whose packets are at the given ms after T0. */
export function timedCapture(dir: string, name: string, at: { ms: number; data?: Uint8Array }[]): string {
  const recs = at.map((r, i) => {
    const ns = BigInt(Math.round(r.ms * 1e6))
    return {
      sec: T0 + Number(ns / 1_000_000_000n), nsec: Number(ns % 1_000_000_000n),
      data: r.data ?? ipv4({ src: '192.0.2.1', dst: '192.0.2.2' }, udp({ sport: 1000 + i, dport: 9999, payload: new Uint8Array([i + 1]) })),
    }
  })
  const path = join(dir, name)
  writeFileSync(path, pcapBytes(recs, { linktype: LINK.RAW, nano: true }))
  return path
}

/** The capture clock as time.now() gives it, for a time `ms` after T0. */
export function ns(ms: number): bigint { return BigInt(T0) * 1_000_000_000n + BigInt(Math.round(ms * 1e6)) }

/** The messages of the script's own log lines (log.*, print), in order. */
export function scriptMsgs(run: { logs: any[] }): string[] {
  return run.logs.filter((l) => l.source === 'script').map((l) => l.msg)
}

/** The counters of the "script services" line (empty when nothing happened). */
export function services(run: { logs: any[] }): Record<string, number> {
  return run.logs.find((l) => l.msg === 'script services')?.services ?? {}
}

/** Error lines of faults in deferred calls or timer callbacks. */
export function callbackFaults(run: { logs: any[] }): any[] {
  return run.logs.filter((l) => l.level === 'error' && (l.in === 'deferred call' || l.in === 'timer callback'))
}

/**
 * runPsd with a generous clock (--timeout-ms 5000) unless the test gives its own: on a busy
 * machine a 50 ms budget can run out where time is not what a test is about.
 */
export function runSvc(opts: Parameters<typeof runPsd>[0]): ReturnType<typeof runPsd> {
  const args = opts.args ?? []
  return runPsd({ ...opts, args: args.includes('--timeout-ms') ? args : [...args, '--timeout-ms', '5000'] })
}
