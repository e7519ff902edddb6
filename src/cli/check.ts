// `psd check FILE...`: loads each script as psd would (sandbox, top level, entry function,
// on_start, under the default budgets) and prints FILE:LINE: message for each that fails.
import { Tenant, LoadError } from '../engine/tenant.js'
import { Logger } from '../log.js'
import { DEFAULTS } from '../config.js'
import { UsageError, type RunValues } from './options.js'

export async function runCheck(files: string[], values: RunValues): Promise<number> {
  if (files.length === 0) throw new UsageError('check: give at least one script file')
  const quiet = new Logger({ format: 'json', level: 'error', fd: 2 })
  let bad = 0
  for (const file of files) {
    try {
      const t = await Tenant.start({
        name: 'check', script: file, queues: [0], fuel: DEFAULTS.fuel, memory: DEFAULTS.memory,
        timeoutMs: DEFAULTS.timeoutMs, onFault: 'accept', send: true, entry: values.function, workers: 1,
      }, quiet, 'real')
      t.stop()
      process.stdout.write(`${file}: ok\n`)
    } catch (e) {
      if (!(e instanceof LoadError)) throw e
      bad++
      const msg = e.message.startsWith(file) ? e.message : `${file}: ${e.message}`
      process.stderr.write(`${msg}\n`)
    }
  }
  return bad ? 1 : 0
}
