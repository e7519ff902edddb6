// Command-line parsing (node:util parseArgs) into tenant configs. Wrong usage is a UsageError
// (exit status 2); a bad value names the option.
import { parseArgs } from 'node:util'
import { DEFAULTS, ConfigError, parseCount, parseSize, parseQueues, parseFault, parseChain, parseMatch, type TenantConfig } from '../config.js'

export class UsageError extends Error {}

export const RUN_OPTIONS = {
  script: { type: 'string' },
  pcap: { type: 'string' },
  config: { type: 'string' },
  queue: { type: 'string' },
  queues: { type: 'string' },
  'queue-maxlen': { type: 'string' },
  'fail-open': { type: 'boolean' },
  function: { type: 'string' },
  fuel: { type: 'string' },
  memory: { type: 'string' },
  'timeout-ms': { type: 'string' },
  'on-fault': { type: 'string' },
  'write-accepted': { type: 'string' },
  'write-dropped': { type: 'string' },
  'write-sent': { type: 'string' },
  'allow-send': { type: 'boolean' },
  verdicts: { type: 'string' },
  metrics: { type: 'string' },
  'log-format': { type: 'string' },
  'log-level': { type: 'string' },
  socket: { type: 'string' },
  control: { type: 'string' },
  name: { type: 'string' },
  workers: { type: 'string' },
  chain: { type: 'string' },
  match: { type: 'string' },
  json: { type: 'boolean' },
  time: { type: 'string' },
  batch: { type: 'string' },
  help: { type: 'boolean', short: 'h' },
} as const

export type RunValues = ReturnType<typeof parse>['values']

export function parse(argv: string[]) {
  try {
    return parseArgs({ args: argv, options: RUN_OPTIONS, allowPositionals: true, strict: true })
  } catch (e: any) {
    throw new UsageError(e.message.replace(/^TypeError \[[A-Z_]+\]: /, ''))
  }
}

function wrap<T>(fn: () => T): T {
  try { return fn() } catch (e) {
    if (e instanceof ConfigError) throw new UsageError(e.message)
    throw e
  }
}

/** The single tenant described by --script and the budget options. */
export function tenantFromOptions(v: RunValues): TenantConfig {
  if (!v.script) throw new UsageError('--script FILE is required (or --config FILE)')
  return wrap(() => {
    if (v.queue !== undefined && v.queues !== undefined) throw new UsageError('give --queue or --queues, not both')
    const entry = v.function
    if (entry !== undefined && !/^[A-Za-z_][A-Za-z0-9_]*$/.test(entry)) throw new UsageError(`--function: "${entry}" is not a Lua function name`)
    const memory = v.memory !== undefined ? parseSize(v.memory, '--memory') : DEFAULTS.memory
    if (memory < 1 << 20 || memory > 1 << 30) throw new UsageError('--memory: must be between 1MiB and 1GiB')
    const name = v.name ?? 'default'
    if (!/^[A-Za-z0-9_.-]{1,64}$/.test(name)) throw new UsageError(`--name: expected 1-64 letters, digits, _ . or -, got "${name}"`)
    const tc: TenantConfig = {
      name,
      script: v.script!,
      queues: v.queues !== undefined ? parseQueues(v.queues, '--queues') : v.queue !== undefined ? parseQueues(v.queue, '--queue') : [DEFAULTS.queue],
      fuel: v.fuel !== undefined ? parseCount(v.fuel, '--fuel', 100, 1e12) : DEFAULTS.fuel,
      memory,
      timeoutMs: v['timeout-ms'] !== undefined ? parseCount(v['timeout-ms'], '--timeout-ms', 1, 600_000) : DEFAULTS.timeoutMs,
      onFault: v['on-fault'] !== undefined ? parseFault(v['on-fault'], '--on-fault') : DEFAULTS.onFault,
      send: v['allow-send'] === true,
      entry,
      workers: v.workers !== undefined ? parseCount(v.workers, '--workers', 1, 64) : 1,
    }
    if (v.chain !== undefined) tc.chain = parseChain(v.chain, '--chain')
    if (v.match !== undefined) tc.match = parseMatch(v.match, '--match')
    return tc
  })
}
