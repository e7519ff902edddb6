// `node psd.js ctl [--socket PATH] [--json] COMMAND`: talks to a running psd over its control
// socket (src/ops/control.ts). Exit status 0 when psd did it, 1 when psd refused or cannot be
// reached (the message says why), 2 on wrong usage.
import { resolve } from 'node:path'
import { request, DEFAULT_SOCKET, type Request, type Reply } from '../ops/control.js'
import { UsageError, type RunValues } from './options.js'

export const CTL_USAGE = `usage: node psd.js ctl [--socket PATH] [--json] COMMAND
  list                      the tenants, their queues, script version and packet counts
  stats [NAME]              counters, faults, reloads and script stats (of every tenant without NAME)
  load NAME FILE [--queue N | --queues A-B]
                            load FILE as tenant NAME (a loaded NAME: replace its script, as reload)
  unload NAME               stop the tenant and release its queues
  reload [NAME [FILE]]      reload NAME (or every tenant) from its script file, or from FILE
The socket is --socket, else $PSD_SOCKET, else ${DEFAULT_SOCKET}.
`

export function ctlRequest(args: string[], v: RunValues): Request {
  const [cmd, ...rest] = args
  const arity = (min: number, max: number) => {
    if (rest.length < min || rest.length > max) throw new UsageError(`ctl ${cmd}: expected ${min === max ? min : `${min} to ${max}`} argument${max === 1 ? '' : 's'}, got ${rest.length}`)
  }
  switch (cmd) {
    case 'list': arity(0, 0); return { cmd }
    case 'stats': arity(0, 1); return rest[0] !== undefined ? { cmd, name: rest[0] } : { cmd }
    case 'load': {
      arity(2, 2)
      if (v.queue !== undefined && v.queues !== undefined) throw new UsageError('give --queue or --queues, not both')
      const queues = v.queues ?? v.queue
      return { cmd, name: rest[0], file: resolve(rest[1]), ...(queues !== undefined ? { queues } : {}) }
    }
    case 'unload': arity(1, 1); return { cmd, name: rest[0] }
    case 'reload': {
      arity(0, 2)
      const r: Request = { cmd }
      if (rest[0] !== undefined) r.name = rest[0]
      if (rest[1] !== undefined) r.file = resolve(rest[1])
      return r
    }
    case undefined: throw new UsageError('ctl: a command is needed')
    default: throw new UsageError(`ctl: unknown command "${cmd}"`)
  }
}

export async function runCtl(args: string[], v: RunValues): Promise<number> {
  let req: Request
  try {
    req = ctlRequest(args, v)
  } catch (e) {
    if (!(e instanceof UsageError)) throw e
    process.stderr.write(`psd ${e.message}\n\n${CTL_USAGE}`)
    return 2
  }
  const socket = v.socket ?? process.env.PSD_SOCKET ?? DEFAULT_SOCKET
  let reply: Reply
  try {
    reply = await request(socket, req)
  } catch (e) {
    process.stderr.write(`psd ctl: ${(e as Error).message}\n`)
    return 1
  }
  if (v.json) {
    process.stdout.write(JSON.stringify(reply) + '\n')
    return reply.ok ? 0 : 1
  }
  if (!reply.ok) {
    process.stderr.write(`psd ctl: ${reply.error}\n`)
    return 1
  }
  process.stdout.write(show(req, reply))
  return 0
}

function show(req: Request, r: Record<string, any>): string {
  switch (req.cmd) {
    case 'list': {
      const rows = [['NAME', 'QUEUES', 'GEN', 'PACKETS', 'FAULTS', 'SCRIPT']]
      for (const t of r.tenants) rows.push([t.name, queues(t.queues), String(t.generation), String(t.packets), String(t.faults), t.script])
      return table(rows)
    }
    case 'stats':
      return r.tenants.map((t: any) => block(t)).join('\n')
    case 'load':
      if (r.reload) return `reloaded ${r.reload.tenant} from ${r.reload.script} (generation ${r.reload.generation}, packets held ${r.reload.switch_ms} ms)\n`
      return `loaded ${r.tenant.name} from ${r.tenant.script} on queue ${queues(r.tenant.queues)}\n`
    case 'unload':
      return `unloaded ${r.tenant.name} after ${r.tenant.packets} packets\n`
    case 'reload':
      return r.reloads.map((x: any) => `reloaded ${x.tenant} from ${x.script} (generation ${x.generation}, packets held ${x.switch_ms} ms)\n`).join('')
  }
}

function queues(q: number[]): string {
  if (q.length > 1 && q[q.length - 1] - q[0] === q.length - 1) return `${q[0]}-${q[q.length - 1]}`
  return q.join(',')
}

function table(rows: string[][]): string {
  const w = rows[0].map((_, i) => Math.max(...rows.map((r) => r[i].length)))
  return rows.map((r) => r.map((c, i) => (i === r.length - 1 ? c : c.padEnd(w[i]))).join('  ')).join('\n') + '\n'
}

function block(t: Record<string, any>, indent = ''): string {
  let s = ''
  for (const [k, v] of Object.entries(t)) {
    if (v !== null && typeof v === 'object' && !Array.isArray(v)) {
      if (Object.keys(v).length === 0) { s += `${indent}${k}: {}\n`; continue }
      s += `${indent}${k}:\n${block(v, indent + '  ')}`
    } else {
      s += `${indent}${k}: ${Array.isArray(v) ? v.join(',') : v}\n`
    }
  }
  return s
}
