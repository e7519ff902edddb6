#!/usr/bin/env node
// Runs every compiled uvu suite (dist/test/*.test.js) in its own process, in order, and ends
// with the plain line "N passed, N failed" that CI reads. A suite file that crashes counts as
// one failure, so a broken file can never look like a passing run.
import { spawnSync } from 'node:child_process'
import { readdirSync, existsSync } from 'node:fs'
import { join, dirname } from 'node:path'
import { fileURLToPath } from 'node:url'

const root = join(dirname(fileURLToPath(import.meta.url)), '..')
const dir = join(root, 'dist', 'test')
const filter = process.argv[2] ? new RegExp(process.argv[2]) : null
const files = existsSync(dir)
  ? readdirSync(dir).filter((f) => f.endsWith('.test.js') && (!filter || filter.test(f))).sort()
  : []

let passed = 0, failed = 0, skipped = 0
for (const f of files) {
  const r = spawnSync(process.execPath, [join(dir, f)], { cwd: root, encoding: 'utf8', timeout: 600_000 })
  const out = (r.stdout || '') + (r.stderr || '')
  process.stdout.write(`\n## ${f}\n${out}`)
  const total = /Total:\s+(\d+)/.exec(out), ok = /Passed:\s+(\d+)/.exec(out), sk = /Skipped:\s+(\d+)/.exec(out)
  if (!total || !ok) { failed += 1; process.stdout.write(`!! ${f} ended without a uvu summary (status ${r.status}, signal ${r.signal})\n`); continue }
  // uvu's Total counts the tests that ran (skipped ones are not in it)
  const t = +total[1], p = +ok[1], s = sk ? +sk[1] : 0
  passed += p; skipped += s; failed += t - p
  if (r.status !== 0 && t - p === 0) { failed += 1; process.stdout.write(`!! ${f} exited with status ${r.status}\n`) }
}
if (files.length === 0) { failed += 1; process.stdout.write('!! no test files found in dist/test\n') }
process.stdout.write(`\n${passed} passed, ${failed} failed${skipped ? `, ${skipped} skipped` : ''}\n`)
process.exit(failed ? 1 : 0)
