// Small helpers for the capture tests: temporary directories, tshark, reading whole captures.
import { mkdtempSync, rmSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { spawnSync } from 'node:child_process'
import { openCapture, CaptureError, type CaptureRecord } from '../../src/pcap/reader.js'

/** A fresh temporary directory; remove it with cleanup(). */
export function tempDir(prefix = 'psd-test-'): { dir: string; path(name: string): string; cleanup(): void } {
  const dir = mkdtempSync(join(tmpdir(), prefix))
  return { dir, path: (name) => join(dir, name), cleanup: () => rmSync(dir, { recursive: true, force: true }) }
}

let tsharkOk: boolean | undefined

/** Whether tshark can be run. */
export function hasTshark(): boolean {
  if (tsharkOk === undefined) {
    const r = spawnSync('tshark', ['--version'], { encoding: 'utf8' })
    tsharkOk = r.status === 0
  }
  return tsharkOk
}

/** Runs tshark with the arguments; returns stdout, throws with stderr on failure. */
export function tshark(args: string[]): string {
  const r = spawnSync('tshark', args, { encoding: 'utf8', maxBuffer: 256 * 1024 * 1024 })
  if (r.status !== 0) throw new Error(`tshark ${args.join(' ')} failed (${r.status}): ${r.stderr}`)
  return r.stdout
}

/** tshark -T fields output as rows of columns. */
export function tsharkFields(file: string, fields: string[], extra: string[] = []): string[][] {
  const out = tshark(['-r', file, ...extra, '-T', 'fields', '-E', 'separator=|', ...fields.flatMap((f) => ['-e', f])])
  return out.split('\n').filter((l) => l.length).map((l) => l.split('|'))
}

export interface ReadResult {
  records: (Omit<CaptureRecord, 'data'> & { data: Uint8Array | null })[]
  error: CaptureError | null
}

/** Reads a whole capture, copying each record's data; a CaptureError ends it and is returned. */
export function readAll(path: string): ReadResult {
  const records: ReadResult['records'] = []
  let error: CaptureError | null = null
  try {
    const cap = openCapture(path)
    for (let r = cap.next(); r !== null; r = cap.next()) records.push({ ...r, data: r.data ? r.data.slice() : null })
  } catch (e) {
    if (!(e instanceof CaptureError)) throw e
    error = e
  }
  return { records, error }
}
