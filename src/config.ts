// Tenant settings from the command line or a JSON config file (API.md section 9), validated
// with errors that name the key.
import { readFileSync } from 'node:fs'

export type FaultPolicy = 'accept' | 'drop'

export interface TenantConfig {
  name: string
  script: string
  queues: number[]
  fuel: number
  memory: number
  timeoutMs: number
  onFault: FaultPolicy
  send: boolean
  entry?: string
  workers: number
  /** Per tenant, overriding --queue-maxlen / --fail-open for its queues (absent: the command line's). */
  queueMaxlen?: number
  failOpen?: boolean
  /** Where `psd rules` sends the tenant's traffic from: iptables chain and match (default INPUT, all). */
  chain?: string
  match?: string
}

export interface Config {
  tenants: TenantConfig[]
  metrics?: string
  control?: string
}

export const DEFAULTS = {
  fuel: 1_000_000,
  memory: 16 * 1024 * 1024,
  timeoutMs: 50,
  onFault: 'accept' as FaultPolicy,
  queue: 0,
}

export class ConfigError extends Error {}

const UNITS: Record<string, number> = {
  '': 1, b: 1, k: 1024, kb: 1000, kib: 1024, m: 1024 ** 2, mb: 1000 ** 2, mib: 1024 ** 2,
  g: 1024 ** 3, gb: 1000 ** 3, gib: 1024 ** 3,
}

/** "16MiB", "512KiB", "8m", 1048576 -> bytes. */
export function parseSize(v: unknown, what: string): number {
  if (typeof v === 'number' && Number.isInteger(v) && v > 0) return v
  if (typeof v === 'string') {
    const m = /^\s*(\d+(?:\.\d+)?)\s*([a-zA-Z]*)\s*$/.exec(v)
    const unit = m ? UNITS[m[2].toLowerCase()] : undefined
    if (m && unit) {
      const n = Math.round(Number(m[1]) * unit)
      if (n > 0) return n
    }
  }
  throw new ConfigError(`${what}: expected a size such as 16MiB or 8388608, got ${JSON.stringify(v)}`)
}

export function parseCount(v: unknown, what: string, min = 1, max = Number.MAX_SAFE_INTEGER): number {
  const n = typeof v === 'string' && /^\s*[\d_,]+\s*$/.test(v) ? Number(v.replace(/[_,\s]/g, '')) : v
  if (typeof n !== 'number' || !Number.isInteger(n) || n < min || n > max) {
    throw new ConfigError(`${what}: expected an integer in ${min}..${max}, got ${JSON.stringify(v)}`)
  }
  return n
}

/** "3" -> [3]; "2-5" -> [2,3,4,5]. */
export function parseQueues(v: unknown, what: string): number[] {
  if (typeof v === 'number') return [parseCount(v, what, 0, 65535)]
  if (typeof v === 'string') {
    const m = /^\s*(\d+)\s*(?:-\s*(\d+))?\s*$/.exec(v)
    if (m) {
      const a = parseCount(Number(m[1]), what, 0, 65535), b = m[2] === undefined ? a : parseCount(Number(m[2]), what, 0, 65535)
      if (b >= a && b - a < 1024) return Array.from({ length: b - a + 1 }, (_, i) => a + i)
    }
  }
  throw new ConfigError(`${what}: expected a queue number or a range A-B, got ${JSON.stringify(v)}`)
}

export function parseFault(v: unknown, what: string): FaultPolicy {
  if (v === 'accept' || v === 'drop') return v
  throw new ConfigError(`${what}: expected "accept" or "drop", got ${JSON.stringify(v)}`)
}

const TENANT_KEYS = new Set(['name', 'script', 'queue', 'queues', 'fuel', 'memory', 'timeout_ms', 'on_fault', 'send', 'function', 'workers',
  'queue_maxlen', 'fail_open', 'chain', 'match'])

/** iptables chains psd's rules may go into (built-in chains of the mangle/filter tables). */
export const CHAINS = ['PREROUTING', 'INPUT', 'FORWARD', 'OUTPUT', 'POSTROUTING']

export function parseChain(v: unknown, what: string): string {
  if (typeof v === 'string' && CHAINS.includes(v.toUpperCase())) return v.toUpperCase()
  throw new ConfigError(`${what}: expected one of ${CHAINS.join(', ')}, got ${JSON.stringify(v)}`)
}

/** iptables match arguments ("-p udp --dport 53"): printed into shell commands, so no shell syntax. */
export function parseMatch(v: unknown, what: string): string {
  if (typeof v === 'string' && /^[A-Za-z0-9 _.,:\/!+=-]*$/.test(v) && !/(^|\s)-j(\s|$)|--jump|--goto|(^|\s)-g(\s|$)/.test(v)) return v.trim().replace(/\s+/g, ' ')
  throw new ConfigError(`${what}: expected iptables match arguments such as "-p udp --dport 53" (letters, digits, spaces and - _ . , : / ! + = only, no -j), got ${JSON.stringify(v)}`)
}
const TOP_KEYS = new Set(['tenants', 'metrics', 'control'])

/** ` (did you mean "fuel"?)` for a key one or two edits away from a known one, else ''. */
function didYouMean(key: string, known: Set<string>): string {
  const dist = (a: string, b: string): number => {
    const d = Array.from({ length: a.length + 1 }, (_, i) => [i, ...Array(b.length).fill(0)])
    for (let j = 1; j <= b.length; j++) d[0][j] = j
    for (let i = 1; i <= a.length; i++) for (let j = 1; j <= b.length; j++) {
      d[i][j] = Math.min(d[i - 1][j] + 1, d[i][j - 1] + 1, d[i - 1][j - 1] + (a[i - 1] === b[j - 1] ? 0 : 1))
      if (i > 1 && j > 1 && a[i - 1] === b[j - 2] && a[i - 2] === b[j - 1]) d[i][j] = Math.min(d[i][j], d[i - 2][j - 2] + 1)
    }
    return d[a.length][b.length]
  }
  let best = '', bestD = 3
  for (const k of known) { const x = dist(key.toLowerCase(), k); if (x < bestD) { best = k; bestD = x } }
  return best ? ` (did you mean "${best}"?)` : ''
}

/** Reads and validates a config file. Script paths are taken relative to the config file's folder. */
export function loadConfigFile(path: string, resolveScript: (p: string) => string = (p) => p): Config {
  let raw: unknown
  let text: string
  try { text = readFileSync(path, 'utf8') } catch (e: any) { throw new ConfigError(`${path}: cannot read config: ${e.code ?? e.message}`) }
  try { raw = JSON.parse(text) } catch (e: any) { throw new ConfigError(`${path}: not valid JSON: ${e.message}`) }
  return parseConfig(raw, path, resolveScript)
}

export function parseConfig(raw: unknown, path: string, resolveScript: (p: string) => string = (p) => p): Config {
  if (!raw || typeof raw !== 'object' || Array.isArray(raw)) throw new ConfigError(`${path}: the config must be a JSON object`)
  const o = raw as Record<string, unknown>
  for (const k of Object.keys(o)) if (!TOP_KEYS.has(k)) throw new ConfigError(`${path}: unknown key "${k}"${didYouMean(k, TOP_KEYS)}`)
  if (!Array.isArray(o.tenants) || o.tenants.length === 0) throw new ConfigError(`${path}: "tenants" must be a non-empty list`)
  const names = new Set<string>()
  const tenants = o.tenants.map((t, i) => {
    const where = `${path}: tenants[${i}]`
    if (!t || typeof t !== 'object' || Array.isArray(t)) throw new ConfigError(`${where}: must be an object`)
    const r = t as Record<string, unknown>
    for (const k of Object.keys(r)) if (!TENANT_KEYS.has(k)) throw new ConfigError(`${where}: unknown key "${k}"${didYouMean(k, TENANT_KEYS)}`)
    if (typeof r.name !== 'string' || !/^[A-Za-z0-9_.-]{1,64}$/.test(r.name)) throw new ConfigError(`${where}.name: expected 1-64 letters, digits, _ . or -`)
    if (names.has(r.name)) throw new ConfigError(`${where}.name: "${r.name}" is used twice`)
    names.add(r.name)
    if (typeof r.script !== 'string' || !r.script) throw new ConfigError(`${where}.script: expected a file path`)
    if (r.queue !== undefined && r.queues !== undefined) throw new ConfigError(`${where}: give "queue" or "queues", not both`)
    if (r.send !== undefined && typeof r.send !== 'boolean') throw new ConfigError(`${where}.send: expected true or false`)
    if (r.function !== undefined && (typeof r.function !== 'string' || !/^[A-Za-z_][A-Za-z0-9_]*$/.test(r.function))) throw new ConfigError(`${where}.function: expected a Lua function name`)
    const tc: TenantConfig = {
      name: r.name,
      script: resolveScript(r.script),
      queues: r.queues !== undefined ? parseQueues(r.queues, `${where}.queues`) : r.queue !== undefined ? parseQueues(r.queue, `${where}.queue`) : [i === 0 ? DEFAULTS.queue : DEFAULTS.queue + i],
      fuel: r.fuel !== undefined ? parseCount(r.fuel, `${where}.fuel`, 100, 1e12) : DEFAULTS.fuel,
      memory: r.memory !== undefined ? parseSize(r.memory, `${where}.memory`) : DEFAULTS.memory,
      timeoutMs: r.timeout_ms !== undefined ? parseCount(r.timeout_ms, `${where}.timeout_ms`, 1, 600_000) : DEFAULTS.timeoutMs,
      onFault: r.on_fault !== undefined ? parseFault(r.on_fault, `${where}.on_fault`) : DEFAULTS.onFault,
      send: r.send === true,
      entry: r.function as string | undefined,
      workers: r.workers !== undefined ? parseCount(r.workers, `${where}.workers`, 1, 64) : 1,
    }
    if (r.queue_maxlen !== undefined) tc.queueMaxlen = parseCount(r.queue_maxlen, `${where}.queue_maxlen`, 1, 65536)
    if (r.fail_open !== undefined) {
      if (typeof r.fail_open !== 'boolean') throw new ConfigError(`${where}.fail_open: expected true or false`)
      tc.failOpen = r.fail_open
    }
    if (r.chain !== undefined) tc.chain = parseChain(r.chain, `${where}.chain`)
    if (r.match !== undefined) tc.match = parseMatch(r.match, `${where}.match`)
    if (tc.memory < 1 << 20 || tc.memory > 1 << 30) throw new ConfigError(`${where}.memory: must be between 1MiB and 1GiB`)
    return tc
  })
  const seen = new Map<number, string>()
  for (const t of tenants) for (const q of t.queues) {
    if (seen.has(q)) throw new ConfigError(`${path}: queue ${q} is given to both "${seen.get(q)}" and "${t.name}"`)
    seen.set(q, t.name)
  }
  if (o.metrics !== undefined && (typeof o.metrics !== 'string' || !/^[^\s:]*:\d+$/.test(o.metrics))) throw new ConfigError(`${path}: "metrics": expected HOST:PORT`)
  if (o.control !== undefined && (typeof o.control !== 'string' || !o.control)) throw new ConfigError(`${path}: "control": expected a socket path`)
  return { tenants, metrics: o.metrics as string | undefined, control: o.control as string | undefined }
}
