// The psd command (API.md section 9). Exit status: 0 success, 1 load or input error, 2 usage.
import { USAGE } from './usage.js'
import { parse, tenantFromOptions, UsageError, type RunValues } from './options.js'
import { Logger } from '../log.js'
import { loadConfigFile, ConfigError, parseCount, type TenantConfig, type Config } from '../config.js'
import { LoadError } from '../engine/tenant.js'
import { CaptureError } from '../pcap/reader.js'
import { runOffline } from '../offline/run.js'
import { runLive } from '../live/run.js'
import { optimizeLuaWasmUpFront } from '../../wasm/loader.js'
import { runCheck } from './check.js'
import { runBench } from './bench.js'
import { runCtl } from './ctl.js'
import { runRules } from './rules.js'
import { openLiveOps } from '../ops/live.js'
import { parseListen } from '../ops/metrics.js'

export async function main(argv: string[]): Promise<number> {
  let values: RunValues, positionals: string[]
  try {
    ({ values, positionals } = parse(argv))
  } catch (e) {
    return usage((e as Error).message)
  }
  if (values.help) { process.stdout.write(USAGE); return 0 }
  const format = values['log-format'] ?? 'json'
  if (format !== 'json' && format !== 'text') return usage(`--log-format: expected json or text, got "${format}"`)
  const level = (values['log-level'] ?? 'info') as any
  if (!['debug', 'info', 'warn', 'error'].includes(level)) return usage(`--log-level: expected debug, info, warn or error`)
  const log = new Logger({ format, level })
  const command = positionals[0]
  try {
    if (command === 'check') return runCheck(positionals.slice(1), values)
    if (command === 'bench') {
      if (positionals.length > 1) return usage(`bench: unexpected argument "${positionals[1]}"`)
      return await runBench(values)
    }
    if (command === 'ctl') return await runCtl(positionals.slice(1), values)
    if (command === 'rules') return runRules(positionals.slice(1), values)
    if (command !== undefined) return usage(`unknown command "${command}"`)
    return await run(values, log)
  } catch (e) {
    if (e instanceof UsageError) return usage(e.message)
    if (e instanceof LoadError || e instanceof ConfigError || e instanceof CaptureError) {
      log.error(e.message)
      return 1
    }
    throw e
  }
}

function usage(msg: string): number {
  process.stderr.write(`psd: ${msg}\n\n${USAGE}`)
  return 2
}

async function run(values: RunValues, log: Logger): Promise<number> {
  let tenants: TenantConfig[]
  let config: Config | undefined
  if (values.config !== undefined) {
    if (values.script !== undefined) throw new UsageError('give --script or --config, not both')
    config = loadConfigFile(values.config)
    tenants = config.tenants
  } else {
    tenants = [tenantFromOptions(values)]
  }
  if (values.pcap !== undefined) {
    return runOffline({
      tenants,
      pcap: values.pcap,
      log,
      batchSize: values.batch !== undefined ? Number(values.batch) : undefined,
      outputs: {
        accepted: values['write-accepted'],
        dropped: values['write-dropped'],
        sent: values['write-sent'],
        verdicts: values.verdicts,
      },
    })
  }
  return runLiveMode(values, tenants, log, config)
}

/** Live: bind the tenants' queues (API.md section 9); returns when psd is told to stop. */
async function runLiveMode(values: RunValues, tenants: TenantConfig[], log: Logger, config?: Config): Promise<number> {
  for (const o of ['write-accepted', 'write-dropped', 'write-sent', 'verdicts'] as const) {
    if (values[o] !== undefined) throw new UsageError(`--${o} works offline only (with --pcap) for now`)
  }
  if (values.config !== undefined && (values.queue !== undefined || values.queues !== undefined)) {
    throw new UsageError('with --config, each tenant\'s queues come from the config file ("queue" or "queues")')
  }
  const count = (name: 'queue-maxlen' | 'batch', min: number, max: number): number | undefined => {
    const v = values[name]
    if (v === undefined) return undefined
    try { return parseCount(v, `--${name}`, min, max) } catch (e) { throw new UsageError((e as Error).message) }
  }
  optimizeLuaWasmUpFront()
  // operations (src/ops): control socket, metrics, SIGHUP reload, SIGUSR1 stats, ctl load/unload
  const metrics = values.metrics ?? config?.metrics
  if (values.metrics !== undefined) try { parseListen(values.metrics) } catch (e) { throw new UsageError(`--metrics: ${(e as Error).message}`) }
  // a tenant that `ctl load NAME FILE --queue N` creates gets the command line's budgets
  const defaults = config ? undefined : (({ name, script, queues, ...rest }: TenantConfig) => rest)(tenants[0])
  const ops = await openLiveOps({ log, configPath: values.config, metrics, control: values.control ?? config?.control, defaults })
  try {
    return await runLive({
      tenants, log, maxlen: count('queue-maxlen', 1, 65536), failOpen: values['fail-open'] === true, batch: count('batch', 1, 1024),
      startTenant: ops.startTenant, ops: ops.hooks,
    })
  } finally {
    await ops.close()
  }
}
