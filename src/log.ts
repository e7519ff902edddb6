// Log lines on stderr: one JSON object a line (default) or plain text for people.
// Written synchronously so lines keep their order and the summary is always the last line.
import { writeSync } from 'node:fs'

export type Level = 'debug' | 'info' | 'warn' | 'error'
export const LEVELS: Level[] = ['debug', 'info', 'warn', 'error']
const RANK: Record<Level, number> = { debug: 0, info: 1, warn: 2, error: 3 }

export interface LogOptions { format: 'json' | 'text'; level?: Level; fd?: number }

export class Logger {
  private minRank: number
  constructor(private opts: LogOptions, private base: Record<string, unknown> = {}) {
    this.minRank = RANK[opts.level ?? 'info']
  }

  /** A logger whose lines carry these fields too (tenant, script). */
  child(fields: Record<string, unknown>): Logger {
    return new Logger(this.opts, { ...this.base, ...fields })
  }

  log(level: Level, msg: string, fields: Record<string, unknown> = {}): void {
    if (RANK[level] < this.minRank) return
    const rec: Record<string, unknown> = { level, time: new Date().toISOString(), tenant: null, ...this.base, msg, ...fields }
    let line: string
    if (this.opts.format === 'json') {
      line = JSON.stringify(rec)
    } else {
      const extra = Object.entries(rec)
        .filter(([k, v]) => !['level', 'time', 'msg', 'tenant'].includes(k) && v !== undefined && v !== null)
        .map(([k, v]) => `${k}=${typeof v === 'string' ? v : JSON.stringify(v)}`)
      line = `${rec.time} ${level.toUpperCase().padEnd(5)} ${rec.tenant ? `[${rec.tenant}] ` : ''}${msg}${extra.length ? ' ' + extra.join(' ') : ''}`
    }
    writeLine(this.opts.fd ?? 2, line + '\n')
  }

  debug(msg: string, f?: Record<string, unknown>): void { this.log('debug', msg, f) }
  info(msg: string, f?: Record<string, unknown>): void { this.log('info', msg, f) }
  warn(msg: string, f?: Record<string, unknown>): void { this.log('warn', msg, f) }
  error(msg: string, f?: Record<string, unknown>): void { this.log('error', msg, f) }
}

function writeLine(fd: number, s: string): void {
  const b = Buffer.from(s)
  let off = 0
  while (off < b.length) {
    try { off += writeSync(fd, b, off) } catch (e: any) {
      if (e.code === 'EAGAIN') continue // non-blocking pipe: retry
      return
    }
  }
}
