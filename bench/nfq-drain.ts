// Drain rate of NFQUEUE consumers, measured in one run: the C yardstick (bench/nfq-c-consumer.c,
// recvmmsg 64 + one batch verdict per receive) against a JS accept-all loop on psd's addon
// (test/lib/nfq-consumer.ts). Each consumer binds, sleeps while a bounded sender fills the queue,
// then drains it; the rate is packets / (first receive .. last verdict). Root only; it builds two
// network namespaces of its own and deletes them.
//
//   node dist/bench/nfq-drain.js [--packets 60000] [--rounds 3] [--size 64] [--batch 64]
import { dirname, join } from 'node:path'
import { fileURLToPath } from 'node:url'
import { buildC, createPair, deletePair, liveUnavailable, nsRun, Proc } from '../test/lib/netns.js'

const root = join(dirname(fileURLToPath(import.meta.url)), '..', '..')
const arg = (name: string, def: number) => {
  const i = process.argv.indexOf(`--${name}`)
  return i > 0 ? Number(process.argv[i + 1]) : def
}
const packets = Math.min(arg('packets', 60000), 65000)
const rounds = Math.min(arg('rounds', 3), 10)
const size = arg('size', 64)
const batch = arg('batch', 64)
const fillMs = 4000

const why = liveUnavailable(['ip', 'iptables', 'cc', 'taskset'])
if (why) {
  console.error(`nfq-drain: cannot run: ${why}`)
  process.exit(1)
}
const cBin = buildC(root, 'bench/nfq-c-consumer.c')
const flood = buildC(root, 'bench/udp-flood.c')
const consumerJs = join(root, 'dist', 'test', 'lib', 'nfq-consumer.js')

const p = createPair('drain')
const results: Record<string, number[]> = { c: [], js: [] }
const cpu: Record<string, number[]> = { c: [], js: [] }
try {
  // Queue in mangle/INPUT; what the consumer accepts is dropped by filter/INPUT (no receiver).
  nsRun(p.b, 'iptables', ['-t', 'mangle', '-A', 'INPUT', '-p', 'udp', '--dport', '9999', '-j', 'NFQUEUE', '--queue-num', '0'])
  nsRun(p.b, 'iptables', ['-A', 'INPUT', '-p', 'udp', '--dport', '9999', '-j', 'DROP'])
  for (let r = 0; r < rounds; r++) {
    for (const kind of ['c', 'js'] as const) {
      const args = kind === 'c'
        ? ['taskset', '-c', '1', cBin, '-q', '0', '-l', '65536', '-n', String(packets), '-t', '30', '-w', String(fillMs)]
        : ['taskset', '-c', '1', process.execPath, consumerJs, JSON.stringify({ queue: 0, maxlen: 65536, mode: 'accept',
            limit: packets, pauseMs: fillMs, timeoutMs: 30_000, idleMs: 2000, batch, keep: 0 })]
      const c = new Proc('ip', ['netns', 'exec', p.b, ...args], 60_000)
      if (kind === 'js') await c.waitFor((o) => o.event === 'ready')
      else await new Promise((res) => setTimeout(res, 300))
      const s = JSON.parse(nsRun(p.a, 'taskset', ['-c', '0', flood, '-d', `${p.addrB}:9999`, '-n', String(packets), '-s', String(size)], 60_000))
      const done = await c.waitFor((o) => o.consumer === 'c' || o.event === 'done', 60_000)
      await c.exited
      const got = done.packets, pps = done.pps
      console.log(`round ${r + 1} ${kind.padEnd(2)}: sent ${s.sent}, drained ${got} at ${pps} pps` +
        `, ${done.cpu_us_per_packet} us CPU/packet` +
        (kind === 'js' ? `, ${done.stats.recvCalls} recvmmsg, ${done.stats.sendCalls} sendmsg` : ''))
      if (got === packets) {
        results[kind].push(pps)
        cpu[kind].push(done.cpu_us_per_packet)
      }
    }
  }
} finally {
  deletePair(p)
}
const median = (a: number[]) => a.length ? [...a].sort((x, y) => x - y)[Math.floor(a.length / 2)] : 0
const summary = {
  packets, size, batch,
  c_pps_median: median(results.c), js_pps_median: median(results.js),
  js_over_c: median(results.c) ? +(median(results.js) / median(results.c)).toFixed(2) : 0,
  c_cpu_us_per_packet: median(cpu.c), js_cpu_us_per_packet: median(cpu.js),
  c_runs: results.c, js_runs: results.js,
}
console.log(JSON.stringify(summary))
