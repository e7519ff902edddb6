// Network-namespace testbeds for the live (NFQUEUE) tests: a pair of namespaces joined by a
// veth, with unique names so that test files can run side by side, always deleted afterwards
// (also when the process exits early). Addresses live only inside the namespaces made here.
import { spawn, spawnSync, type ChildProcess } from 'node:child_process'
import { mkdtempSync, existsSync, statSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'

export interface Pair {
  /** sender side, holds `addrA` */
  a: string
  /** receiver side, holds `addrB`; rules and consumers go here */
  b: string
  addrA: string
  addrB: string
  devA: string
  devB: string
}

const live = new Set<string>()
let hooked = false

/** Runs a command to completion (bounded by timeoutMs); throws with its output when it fails. */
export function run(cmd: string, args: string[], timeoutMs = 20_000): string {
  const r = spawnSync(cmd, args, { encoding: 'utf8', timeout: timeoutMs })
  if (r.error) throw new Error(`${cmd} ${args.join(' ')}: ${r.error.message}`)
  if (r.status !== 0) throw new Error(`${cmd} ${args.join(' ')} exited ${r.status}: ${r.stderr || r.stdout}`)
  return r.stdout
}

export function nsRun(ns: string, cmd: string, args: string[], timeoutMs = 20_000): string {
  return run('ip', ['netns', 'exec', ns, cmd, ...args], timeoutMs)
}

/** Why live tests cannot run here, or null when they can (root, and the tools present). */
export function liveUnavailable(tools: string[] = ['ip', 'iptables', 'ping', 'cc']): string | null {
  if (process.platform !== 'linux') return 'not Linux'
  if (typeof process.getuid !== 'function' || process.getuid() !== 0) return 'not root (needs network namespaces, iptables and NFQUEUE)'
  for (const t of tools) {
    const r = spawnSync('sh', ['-c', `command -v ${t}`], { encoding: 'utf8' })
    if (r.status !== 0) return `the tool ${t} is missing`
  }
  return null
}

function cleanupAll() {
  for (const ns of live) spawnSync('ip', ['netns', 'del', ns], { timeout: 10_000 })
  live.clear()
}

/** Creates a fresh pair of namespaces joined by a veth: a = 10.200.0.1, b = 10.200.0.2. */
export function createPair(tag: string): Pair {
  if (!hooked) {
    hooked = true
    process.on('exit', cleanupAll)
    for (const sig of ['SIGINT', 'SIGTERM'] as const) process.on(sig, () => { cleanupAll(); process.exit(130) })
  }
  const id = `${process.pid.toString(36)}${Math.floor(Math.random() * 36 ** 3).toString(36)}`
  const a = `psd-${tag}-${id}-a`, b = `psd-${tag}-${id}-b`
  const devA = `va${id}`.slice(0, 15), devB = `vb${id}`.slice(0, 15)
  const p: Pair = { a, b, addrA: '10.200.0.1', addrB: '10.200.0.2', devA, devB }
  run('ip', ['netns', 'add', a]); live.add(a)
  run('ip', ['netns', 'add', b]); live.add(b)
  run('ip', ['link', 'add', devA, 'netns', a, 'type', 'veth', 'peer', 'name', devB, 'netns', b])
  run('ip', ['-n', a, 'addr', 'add', `${p.addrA}/24`, 'dev', devA])
  run('ip', ['-n', b, 'addr', 'add', `${p.addrB}/24`, 'dev', devB])
  for (const ns of [a, b]) run('ip', ['-n', ns, 'link', 'set', 'lo', 'up'])
  run('ip', ['-n', a, 'link', 'set', devA, 'up'])
  run('ip', ['-n', b, 'link', 'set', devB, 'up'])
  return p
}

export function deletePair(p: Pair): void {
  for (const ns of [p.a, p.b]) {
    spawnSync('ip', ['netns', 'del', ns], { timeout: 10_000 })
    live.delete(ns)
  }
}

/** A child process whose stdout is read as JSON lines. */
export class Proc {
  readonly child: ChildProcess
  readonly lines: any[] = []
  stderr = ''
  exited: Promise<number | null>
  /** set once the process ended and its output is all read */
  closed: { code: number | null; signal: string | null } | undefined
  #waiters: Array<() => void> = []
  #buf = ''

  constructor(cmd: string, args: string[], readonly hardTimeoutMs = 30_000) {
    this.child = spawn(cmd, args, { stdio: ['ignore', 'pipe', 'pipe'] })
    this.child.stdout!.setEncoding('utf8').on('data', (s: string) => {
      this.#buf += s
      let i
      while ((i = this.#buf.indexOf('\n')) >= 0) {
        const line = this.#buf.slice(0, i)
        this.#buf = this.#buf.slice(i + 1)
        try { this.lines.push(JSON.parse(line)) } catch { this.lines.push({ text: line }) }
      }
      for (const w of this.#waiters.splice(0)) w()
    })
    this.child.stderr!.setEncoding('utf8').on('data', (s: string) => { this.stderr += s })
    const kill = setTimeout(() => this.child.kill('SIGKILL'), hardTimeoutMs)
    this.exited = new Promise((res) => this.child.on('close', (code, signal) => {
      clearTimeout(kill)
      this.closed = { code, signal }
      for (const w of this.#waiters.splice(0)) w()
      res(code)
    }))
  }

  /** Waits for a JSON line that satisfies pred (or for the process to end: then throws). */
  async waitFor(pred: (o: any) => boolean, timeoutMs = 10_000): Promise<any> {
    const deadline = Date.now() + timeoutMs
    for (;;) {
      const hit = this.lines.find(pred)
      if (hit) return hit
      if (this.closed) {
        throw new Error(`process ended (${this.closed.code ?? this.closed.signal}) without the expected line; ` +
          `stdout: ${JSON.stringify(this.lines)} stderr: ${this.stderr}`)
      }
      const left = deadline - Date.now()
      if (left <= 0) throw new Error(`timed out waiting; stdout: ${JSON.stringify(this.lines)} stderr: ${this.stderr}`)
      await new Promise<void>((res) => {
        const t = setTimeout(res, Math.min(left, 200))
        this.#waiters.push(() => { clearTimeout(t); res() })
      })
    }
  }

  kill(sig: NodeJS.Signals = 'SIGTERM') { if (this.child.exitCode === null) this.child.kill(sig) }
}

/** Compiles a C file from bench/ into a temporary directory (once per process) and returns the binary. */
const built = new Map<string, string>()
let binDir: string | undefined
export function buildC(root: string, file: string): string {
  const have = built.get(file)
  if (have) return have
  binDir ??= mkdtempSync(join(tmpdir(), 'psd-bin-'))
  const src = join(root, file)
  const out = join(binDir, file.replace(/^.*\//, '').replace(/\.c$/, ''))
  if (!existsSync(out) || statSync(out).mtimeMs < statSync(src).mtimeMs) run('cc', ['-O2', '-o', out, src], 60_000)
  built.set(file, out)
  return out
}

/**
 * A UDP receiver in namespace ns, counting datagrams and their first bytes; prints one JSON line
 * once idle for idleMs after the first datagram (or after maxMs), with the namespace's UDP
 * receive-buffer error count so that a loss at the receiver is told apart from one in the queue.
 */
export function udpReceiver(ns: string, addr: string, port: number, idleMs = 700, maxMs = 20_000): Proc {
  const js = `
    const fs = require('node:fs');
    const snmp = () => { const l = fs.readFileSync('/proc/net/snmp', 'utf8').split('\\n').filter((x) => x.startsWith('Udp:'));
      const k = l[0].split(/\\s+/), v = l[1].split(/\\s+/); return Number(v[k.indexOf('RcvbufErrors')]) };
    const before = snmp();
    const d = require('node:dgram').createSocket({ type: 'udp4', recvBufferSize: 4 << 20 });
    let total = 0; const first = {}; let t;
    const done = () => { console.log(JSON.stringify({ event: 'done', total, first, rcvbufErrors: snmp() - before })); process.exit(0) };
    d.on('message', (m) => { total++; const c = String.fromCharCode(m[0]); first[c] = (first[c] || 0) + 1;
      clearTimeout(t); t = setTimeout(done, ${idleMs}) });
    d.bind(${port}, '${addr}', () => console.log(JSON.stringify({ event: 'ready' })));
    setTimeout(done, ${maxMs});`
  return new Proc('ip', ['netns', 'exec', ns, process.execPath, '-e', js], maxMs + 5000)
}

/** iptables packet counter of the first rule in chain (table) that mentions `match`. */
export function ruleCount(ns: string, table: string, chain: string, match: string): number {
  const text = nsRun(ns, 'iptables', ['-t', table, '-L', chain, '-v', '-x', '-n'])
  for (const line of text.split('\n')) {
    if (line.includes(match)) return Number(line.trim().split(/\s+/)[0])
  }
  throw new Error(`no rule matching ${match} in ${table}/${chain}:\n${text}`)
}
