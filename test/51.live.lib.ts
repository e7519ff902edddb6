// Helpers of the 51.live tests and bench/live-drain.ts: the real psd command in a network
// namespace (`ip netns exec NS node psd.js ...`), its JSON log lines on stderr read as they come.
import { spawn, type ChildProcess } from 'node:child_process'
import { writeFileSync } from 'node:fs'
import { join, dirname } from 'node:path'
import { fileURLToPath } from 'node:url'
import { liveUnavailable, nsRun, type Pair } from './lib/netns.js'
import { addonAvailable, loadAddon } from '../src/live/nfqueue.js'

export const ROOT = join(dirname(fileURLToPath(import.meta.url)), '..', '..')
export const PSD = join(ROOT, 'psd.js')

export const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms))

/** Why the live tests cannot run here (null: they can), checked once. */
export function liveWhy(tools: string[] = ['ip', 'iptables', 'ping', 'cc']): string | null {
  return liveUnavailable(tools)
}

export function needLive(why: string | null): void {
  if (why) throw new Error(`cannot run the live tests: ${why}`)
  if (!addonAvailable()) loadAddon() // throws the explanation
}

/** psd running in a namespace; stderr JSON lines land in `logs`. Always killed after hardMs. */
export class LivePsd {
  readonly child: ChildProcess
  readonly logs: any[] = []
  raw = ''
  stdout = ''
  closed: { code: number | null; signal: string | null } | undefined
  readonly exited: Promise<number | null>
  #buf = ''
  #waiters: (() => void)[] = []

  constructor(ns: string, args: string[], readonly hardMs = 60_000, prefix: string[] = []) {
    this.child = spawn('ip', ['netns', 'exec', ns, ...prefix, process.execPath, PSD, ...args], { stdio: ['ignore', 'pipe', 'pipe'], cwd: ROOT })
    this.child.stdout!.setEncoding('utf8').on('data', (s: string) => { this.stdout += s })
    this.child.stderr!.setEncoding('utf8').on('data', (s: string) => {
      this.raw += s
      this.#buf += s
      let i
      while ((i = this.#buf.indexOf('\n')) >= 0) {
        const line = this.#buf.slice(0, i)
        this.#buf = this.#buf.slice(i + 1)
        try { this.logs.push(JSON.parse(line)) } catch { this.logs.push({ raw: line }) }
      }
      for (const w of this.#waiters.splice(0)) w()
    })
    const kill = setTimeout(() => this.child.kill('SIGKILL'), hardMs)
    this.exited = new Promise((res) => this.child.on('close', (code, signal) => {
      clearTimeout(kill)
      this.closed = { code, signal }
      for (const w of this.#waiters.splice(0)) w()
      res(code)
    }))
  }

  /** The pid of psd itself (`ip netns exec` execs in place). */
  get pid(): number { return this.child.pid! }

  /** Waits for a log line that satisfies pred; throws with the whole log if psd ends first or time runs out. */
  async waitFor(pred: (o: any) => boolean, timeoutMs = 15_000): Promise<any> {
    const deadline = Date.now() + timeoutMs
    for (;;) {
      const hit = this.logs.find(pred)
      if (hit) return hit
      if (this.closed) throw new Error(`psd ended (${this.closed.code ?? this.closed.signal}) without the expected line; log:\n${this.raw}`)
      const left = deadline - Date.now()
      if (left <= 0) throw new Error(`timed out waiting for a psd log line; log:\n${this.raw}`)
      await new Promise<void>((res) => {
        const t = setTimeout(res, Math.min(left, 200))
        this.#waiters.push(() => { clearTimeout(t); res() })
      })
    }
  }

  ready(timeoutMs = 20_000): Promise<any> { return this.waitFor((o) => o.msg === 'ready', timeoutMs) }

  signal(sig: NodeJS.Signals): void { if (this.child.exitCode === null && !this.closed) process.kill(this.pid, sig) }

  /** SIGTERM (by default) and the exit status. */
  async stop(sig: NodeJS.Signals = 'SIGTERM', timeoutMs = 15_000): Promise<number | null> {
    this.signal(sig)
    const t = setTimeout(() => this.child.kill('SIGKILL'), timeoutMs)
    const code = await this.exited
    clearTimeout(t)
    return code
  }

  get summary(): any { return [...this.logs].reverse().find((o) => o.msg === 'summary') }
  queueStats(): any[] { return this.logs.filter((o) => o.msg === 'queue stats') }
  scriptLines(): any[] { return this.logs.filter((o) => o.source === 'script') }
}

/** Writes a script file into dir and returns its path. */
export function script(dir: string, name: string, text: string): string {
  const p = join(dir, name)
  writeFileSync(p, text)
  return p
}

/** Queue q's line of /proc/net/netfilter/nfnetlink_queue in namespace ns (numbers), or undefined when unbound. */
export async function queueLine(ns: string, q: number): Promise<number[] | undefined> {
  const text = nsRun(ns, 'cat', ['/proc/net/netfilter/nfnetlink_queue'])
  for (const line of text.split('\n')) {
    const f = line.trim().split(/\s+/).map(Number)
    if (f.length >= 8 && f[0] === q) return f
  }
  return undefined
}

/** Adds `n` more IPv4 addresses 10.200.0.(base..base+n-1) to the sender side. */
export function extraSources(p: Pair, n: number, base = 11): string[] {
  const out: string[] = []
  for (let i = 0; i < n; i++) {
    const a = `10.200.0.${base + i}`
    nsRun(p.a, 'ip', ['addr', 'add', `${a}/24`, 'dev', p.devA])
    out.push(a)
  }
  return out
}
