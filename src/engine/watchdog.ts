// The watchdog: the one bound on a call that no hook can see (a pattern match, a sort, a copy
// inside one C library function). It runs in the main thread and reads each watched worker's
// progress slots (wasm/vm.ts PROGRESS): a worker that has been inside the same call for longer
// than its limit is stopped (worker.terminate(), which also ends code running inside wasm).
//
// Lua-level runaways never get this far: the VM's own hook raises the time fault at the budget
// (the VM stays), so the limit here is the budget plus a grace the hook needs to win the race.
// A call is seen at the first tick after it starts, so a stop comes between limit and limit +
// one tick after the call began; a busy main thread can only make it later, never early.
//
// Stopping a thread is for threads that burn the CPU, not for threads the machine gives no CPU:
// the watchdog also asks the kernel how long the thread actually ran during the call
// (/proc/.../schedstat, read from a call's second look on) and lets a starved call go on (up to
// STARVED_FACTOR times the limit), since a rebuilt worker, cold, would only be slower. Without
// /proc it goes by the clock alone.
import { readFileSync } from 'node:fs'
import { PROGRESS } from '../../wasm/vm.js'

/** A starved call is stopped anyway once it has run this many times its limit on the clock. */
const STARVED_FACTOR = 10

export interface Watched {
  readonly progress: Int32Array
  /** the kernel's id of the thread running the calls (0: not known yet) */
  readonly tid: number
  /** milliseconds a call may run before the worker is stopped */
  readonly limitMs: number
  /** stop the worker: the call in progress ran past its limit (ms on the clock, ms on a CPU) */
  stuck(ranMs: number, cpuMs: number): void
  // bookkeeping owned by the watchdog
  seenCalls: number
  seenAt: number
  /** when the CPU time of the current call began to be measured, and the thread's run time then (ns) */
  cpuAt: number
  cpuRun: number
}

/** Nanoseconds thread tid has run on a CPU, or -1. */
export function threadRunNs(tid: number): number {
  if (!tid) return -1
  try {
    return Number(readFileSync(`/proc/${process.pid}/task/${tid}/schedstat`, 'latin1').split(' ')[0])
  } catch {
    return -1
  }
}

/** Extra time beyond the budget before the watchdog acts (the hook's own check comes first). */
export function graceMs(timeoutMs: number): number {
  return Math.max(20, Math.ceil(timeoutMs / 5))
}

export class Watchdog {
  private watched = new Set<Watched>()
  private timer: NodeJS.Timeout | null = null
  private period = 0

  watch(w: Watched): void {
    w.seenCalls = -1
    w.seenAt = 0
    w.cpuAt = -1
    this.watched.add(w)
    const period = Math.max(1, Math.min(10, Math.floor(w.limitMs / 10)))
    if (this.timer === null || period < this.period) this.start(period)
  }

  unwatch(w: Watched): void {
    this.watched.delete(w)
    if (this.watched.size === 0 && this.timer !== null) {
      clearInterval(this.timer)
      this.timer = null
    }
  }

  private start(period: number): void {
    if (this.timer !== null) clearInterval(this.timer)
    this.period = period
    this.timer = setInterval(() => this.tick(), period)
    this.timer.unref()
  }

  /** One look at every watched worker (exported for tests). */
  tick(now = performance.now()): void {
    for (const w of this.watched) {
      const p = w.progress
      if (Atomics.load(p, PROGRESS.inCall) === 0) { w.seenCalls = -1; continue }
      const calls = Atomics.load(p, PROGRESS.calls)
      if (calls !== w.seenCalls) { w.seenCalls = calls; w.seenAt = now; w.cpuAt = -1; continue }
      const ran = now - w.seenAt
      // a call still running at its second look: from now on its CPU time is measured too
      if (w.cpuAt < 0) { w.cpuAt = now; w.cpuRun = threadRunNs(w.tid) }
      if (ran <= w.limitMs) continue
      // CPU time of the call: the part before measuring began counts as all running
      const run = w.cpuRun >= 0 ? threadRunNs(w.tid) : -1
      const cpu = run >= 0 ? (w.cpuAt - w.seenAt) + (run - w.cpuRun) / 1e6 : ran
      if (cpu > w.limitMs || ran > w.limitMs * STARVED_FACTOR) {
        this.unwatch(w)
        w.stuck(ran, cpu)
      }
    }
  }
}

/** The process's watchdog, shared by every tenant. */
export const watchdog = new Watchdog()
