// The control socket: a Unix stream socket, mode 0600 (only its owner, normally root, may
// connect), speaking one JSON object per line each way. `node psd.js ctl` is its client.
//
//   -> {"cmd":"list"}                               <- {"ok":true,"tenants":[...]}
//   -> {"cmd":"stats","name":"web"}                 <- {"ok":true,"tenants":[{...}]}   (name optional)
//   -> {"cmd":"load","name":"web","file":"/abs/x.lua","queues":"2-3"}   (queues only for a new name)
//   -> {"cmd":"unload","name":"web"}
//   -> {"cmd":"reload","name":"web","file":"/abs/y.lua"}               (name and file optional)
//   <- {"ok":false,"error":"unknown tenant \"web\"","code":"unknown-tenant"}
//
// A connection may send several requests; each gets one reply line, in order.
import { createServer, createConnection, type Server, type Socket } from 'node:net'
import { chmodSync, lstatSync, unlinkSync } from 'node:fs'
import { isAbsolute } from 'node:path'
import type { Logger } from '../log.js'
import { TenantSet, OpsError } from './tenants.js'
import { LoadError } from '../engine/tenant.js'
import { ConfigError, parseQueues, type TenantConfig } from '../config.js'

export const DEFAULT_SOCKET = '/run/psd.sock'
const MAX_LINE = 64 << 10

export type Request =
  | { cmd: 'list' }
  | { cmd: 'stats'; name?: string }
  | { cmd: 'load'; name: string; file: string; queues?: string }
  | { cmd: 'unload'; name: string }
  | { cmd: 'reload'; name?: string; file?: string }

export type Reply = { ok: true; [k: string]: unknown } | { ok: false; error: string; code?: string }

function str(v: unknown, what: string, required = true): string | undefined {
  if (v === undefined && !required) return undefined
  if (typeof v !== 'string' || !v) throw new OpsError(`"${what}" must be a non-empty string`)
  return v
}

/** What the daemon supplies so `load` can make a config for a tenant it has never seen. */
export interface ControlOptions {
  set: TenantSet
  log: Logger
  /** Budgets etc. for a tenant created by `load NAME FILE --queue N` (defaults from the command line). */
  newTenant(name: string, script: string, queues: number[]): TenantConfig
  /** SIGHUP's and `ctl reload`'s way to re-read the config file; absent without --config. */
  reloadAll?(): Promise<unknown[]>
}

/** Carries out one request; never throws (errors become {ok:false}). */
export async function handle(req: unknown, o: ControlOptions): Promise<Reply> {
  try {
    if (!req || typeof req !== 'object' || Array.isArray(req)) throw new OpsError('a request is a JSON object with "cmd"')
    const r = req as Record<string, unknown>
    const set = o.set
    switch (r.cmd) {
      case 'list':
        return { ok: true, tenants: set.list() }
      case 'stats':
        return { ok: true, tenants: set.stats(str(r.name, 'name', false)) }
      case 'load': {
        const name = str(r.name, 'name')!, file = str(r.file, 'file')!
        if (!/^[A-Za-z0-9_.-]{1,64}$/.test(name)) throw new OpsError(`tenant name "${name}": expected 1-64 letters, digits, _ . or -`)
        if (!isAbsolute(file)) throw new OpsError(`"file" must be an absolute path (ctl makes it one), got "${file}"`)
        if (set.get(name)) {
          if (r.queues !== undefined) throw new OpsError(`tenant "${name}" is loaded: its queues cannot change (unload it first)`)
          const rep = await set.reload(name, { script: file })
          return rep.ok ? { ok: true, reload: rep } : { ok: false, error: rep.error!, code: 'load' }
        }
        const known = set.knownConfig(name)
        let cfg: TenantConfig
        if (r.queues !== undefined) {
          const queues = parseQueues(r.queues, 'queues')
          cfg = known ? { ...known, script: file, queues } : o.newTenant(name, file, queues)
        } else if (known) {
          cfg = { ...known, script: file }
        } else {
          throw new OpsError(`unknown tenant "${name}": give its queue to create it (ctl load ${name} FILE --queue N)`, 'unknown-tenant')
        }
        const slot = await set.load(cfg)
        return { ok: true, tenant: slot.snapshot() }
      }
      case 'unload': {
        const last = await set.unload(str(r.name, 'name')!)
        return { ok: true, tenant: last }
      }
      case 'reload': {
        const name = str(r.name, 'name', false), file = str(r.file, 'file', false)
        if (file !== undefined && !isAbsolute(file)) throw new OpsError(`"file" must be an absolute path, got "${file}"`)
        if (file !== undefined && name === undefined) throw new OpsError('reload FILE needs the tenant\'s name')
        let reports: unknown[]
        if (name !== undefined) reports = [await set.reload(name, { script: file })]
        else reports = o.reloadAll ? await o.reloadAll() : await set.reloadAll()
        const failed = reports.filter((x: any) => !x.ok)
        if (failed.length) return { ok: false, error: failed.map((x: any) => `${x.tenant}: ${x.error}`).join('\n'), code: 'load', reloads: reports } as Reply
        return { ok: true, reloads: reports }
      }
      default:
        throw new OpsError(`unknown command ${JSON.stringify(r.cmd)}: expected list, stats, load, unload or reload`)
    }
  } catch (e) {
    if (e instanceof OpsError) return { ok: false, error: e.message, code: e.code }
    if (e instanceof LoadError || e instanceof ConfigError) return { ok: false, error: e.message, code: 'load' }
    o.log.error(`control: ${(e as Error)?.stack ?? e}`)
    return { ok: false, error: `internal error: ${(e as Error)?.message ?? e}` }
  }
}

/**
 * Listens on `path` with mode 0600. A stale socket file (nobody answers) is replaced; a live
 * one (another psd) or a file that is not a socket is an error.
 */
export async function serveControl(path: string, o: ControlOptions): Promise<Server> {
  await clearStale(path)
  const server = createServer((sock) => serveConnection(sock, o))
  const old = process.umask(0o177) // the socket is created 0600: no window in which others may connect
  try {
    await new Promise<void>((resolve, reject) => {
      server.once('error', reject)
      server.listen(path, () => { server.off('error', reject); resolve() })
    })
  } finally {
    process.umask(old)
  }
  chmodSync(path, 0o600)
  server.unref()
  server.on('close', () => { try { if (lstatSync(path).isSocket()) unlinkSync(path) } catch { /* gone */ } })
  return server
}

async function clearStale(path: string): Promise<void> {
  let st
  try { st = lstatSync(path) } catch { return }
  if (!st.isSocket()) throw new Error(`control socket ${path}: exists and is not a socket`)
  const alive = await new Promise<boolean>((resolve) => {
    const c = createConnection(path)
    c.once('connect', () => { c.destroy(); resolve(true) })
    c.once('error', () => resolve(false))
  })
  if (alive) throw new Error(`control socket ${path}: another psd is listening there`)
  unlinkSync(path)
}

function serveConnection(sock: Socket, o: ControlOptions): void {
  let buf = ''
  let chain = Promise.resolve()
  sock.setEncoding('utf8')
  sock.on('error', () => { /* the client went away */ })
  sock.on('data', (s: string) => {
    buf += s
    if (buf.length > MAX_LINE && !buf.includes('\n')) {
      sock.end(JSON.stringify({ ok: false, error: `request longer than ${MAX_LINE} bytes` }) + '\n')
      buf = ''
      return
    }
    let i
    while ((i = buf.indexOf('\n')) >= 0) {
      const line = buf.slice(0, i).trim()
      buf = buf.slice(i + 1)
      if (!line) continue
      chain = chain.then(async () => {
        let reply: Reply
        try { reply = await handle(JSON.parse(line), o) } catch { reply = { ok: false, error: 'a request is one JSON object on one line', code: 'bad-request' } }
        if (!sock.destroyed) sock.write(JSON.stringify(reply) + '\n')
      })
    }
  })
}

/** Client: sends one request, resolves with the reply. Errors name the socket and why. */
export function request(path: string, req: Request, timeoutMs = 30_000): Promise<Reply> {
  return new Promise((resolve, reject) => {
    const sock = createConnection(path)
    let buf = ''
    const timer = setTimeout(() => { sock.destroy(); reject(new Error(`${path}: no reply within ${timeoutMs} ms`)) }, timeoutMs)
    sock.setEncoding('utf8')
    sock.on('connect', () => sock.write(JSON.stringify(req) + '\n'))
    sock.on('data', (s: string) => {
      buf += s
      const i = buf.indexOf('\n')
      if (i < 0) return
      clearTimeout(timer)
      sock.end()
      try { resolve(JSON.parse(buf.slice(0, i))) } catch { reject(new Error(`${path}: the reply is not JSON`)) }
    })
    sock.on('error', (e: NodeJS.ErrnoException) => {
      clearTimeout(timer)
      const why = e.code === 'EACCES' || e.code === 'EPERM' ? `permission denied (the socket is mode 0600: run ctl as the user psd runs as, normally root)`
        : e.code === 'ENOENT' ? 'no such socket (is psd running? is --socket right?)'
        : e.code === 'ECONNREFUSED' ? 'connection refused (psd is not running; the socket file is stale)'
        : e.message
      const err = new Error(`${path}: ${why}`) as Error & { code?: string }
      err.code = e.code
      reject(err)
    })
    sock.on('end', () => { if (!buf.includes('\n')) { clearTimeout(timer); reject(new Error(`${path}: psd closed the connection without a reply`)) } })
  })
}
