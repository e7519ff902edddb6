#!/usr/bin/env node
// psd: thin entry point; the command lives in src/cli (compiled to dist/).
import { main } from './dist/src/cli/main.js'

main(process.argv.slice(2)).then(
  (status) => { process.exitCode = status },
  (err) => { process.stderr.write(`psd: internal error: ${err?.stack ?? err}\n`); process.exitCode = 1 },
)
