// Runs the psd command as a user would (a child process) and reads what it wrote.
import { spawnSync, type SpawnSyncReturns } from 'node:child_process'
import { mkdtempSync, writeFileSync, readFileSync, existsSync, rmSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join, dirname } from 'node:path'
import { fileURLToPath } from 'node:url'

export const ROOT = join(dirname(fileURLToPath(import.meta.url)), '..', '..', '..')
export const PSD = join(ROOT, 'psd.js')

export function tempDir(prefix = 'psd-test-'): string {
  return mkdtempSync(join(tmpdir(), prefix))
}

export interface VerdictLine {
  n: number
  verdict: 'accept' | 'drop' | 'repeat' | 'queue'
  mark: number
  modified: boolean
  fault: string | null
  skipped?: boolean
}

export interface PsdRun {
  status: number | null
  stdout: string
  stderr: string
  /** stderr lines parsed as JSON (non-JSON lines are kept as { raw }) */
  logs: any[]
  verdicts: VerdictLine[]
  summary: any
  dir: string
}

/** Writes `script` (Lua text) and runs psd on `pcap` (a path) with extra args. */
export function runPsd(opts: { script?: string; scriptPath?: string; pcap?: string; args?: string[]; dir?: string; timeoutMs?: number }): PsdRun {
  const dir = opts.dir ?? tempDir()
  const args: string[] = []
  if (opts.script !== undefined) {
    const p = opts.scriptPath ?? join(dir, 'script.lua')
    writeFileSync(p, opts.script)
    args.push('--script', p)
  } else if (opts.scriptPath) {
    args.push('--script', opts.scriptPath)
  }
  if (opts.pcap) args.push('--pcap', opts.pcap)
  const verdictsPath = join(dir, 'verdicts.jsonl')
  rmSync(verdictsPath, { force: true })
  if (opts.pcap && !(opts.args ?? []).includes('--verdicts')) args.push('--verdicts', verdictsPath)
  args.push(...(opts.args ?? []))
  return psd(args, { dir, timeoutMs: opts.timeoutMs, verdictsPath })
}

export function psd(args: string[], o: { dir?: string; timeoutMs?: number; verdictsPath?: string; cwd?: string; env?: Record<string, string> } = {}): PsdRun {
  const r: SpawnSyncReturns<string> = spawnSync(process.execPath, [PSD, ...args], {
    encoding: 'utf8', timeout: o.timeoutMs ?? 120_000, cwd: o.cwd ?? ROOT, maxBuffer: 64 << 20,
    env: o.env ? { ...process.env, ...o.env } : process.env,
  })
  const logs = (r.stderr || '').split('\n').filter(Boolean).map((l) => { try { return JSON.parse(l) } catch { return { raw: l } } })
  const verdicts = o.verdictsPath && existsSync(o.verdictsPath)
    ? readFileSync(o.verdictsPath, 'utf8').split('\n').filter(Boolean).map((l) => JSON.parse(l))
    : []
  const summaries = logs.filter((l) => l.msg === 'summary')
  return { status: r.status, stdout: r.stdout, stderr: r.stderr, logs, verdicts, summary: summaries[summaries.length - 1], dir: o.dir ?? '' }
}

/** Writes a raw-IP pcap (link type 101) of the given IP packets, one second apart. */
export function writeRawPcap(path: string, packets: Uint8Array[], start = 1_700_000_000): string {
  const head = Buffer.alloc(24)
  head.writeUInt32LE(0xa1b23c4d, 0); head.writeUInt16LE(2, 4); head.writeUInt16LE(4, 6)
  head.writeUInt32LE(262144, 16); head.writeUInt32LE(101, 20)
  const parts: Buffer[] = [head]
  packets.forEach((p, i) => {
    const h = Buffer.alloc(16)
    h.writeUInt32LE(start + i, 0); h.writeUInt32LE(i * 1000, 4); h.writeUInt32LE(p.length, 8); h.writeUInt32LE(p.length, 12)
    parts.push(h, Buffer.from(p))
  })
  writeFileSync(path, Buffer.concat(parts))
  return path
}

/** Reads a pcap written by psd: records with their timestamps, lengths and bytes. */
export function readPcap(path: string): { sec: number; nsec: number; origlen: number; data: Buffer }[] {
  const b = readFileSync(path)
  const nano = b.readUInt32LE(0) === 0xa1b23c4d
  const out = []
  for (let p = 24; p + 16 <= b.length;) {
    const sec = b.readUInt32LE(p), frac = b.readUInt32LE(p + 4), cap = b.readUInt32LE(p + 8), orig = b.readUInt32LE(p + 12)
    out.push({ sec, nsec: nano ? frac : frac * 1000, origlen: orig, data: b.subarray(p + 16, p + 16 + cap) })
    p += 16 + cap
  }
  return out
}
