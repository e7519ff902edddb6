// The live daemon against the C yardstick, in one run (root only; makes and deletes its own
// network namespaces):
//
// 1. Drain: a fixed number of UDP packets is queued while the consumer does not read, then the
//    consumer drains them. Consumers: bench/nfq-c-consumer.c (recvmmsg 64 + one batch verdict per
//    receive), and the real psd command
//    (`node psd.js --script bench/live-accept-all.lua`, stopped with SIGSTOP while the queue fills,
//    then SIGCONT); the C consumer is stopped and continued the same way. Both are timed from
//    outside (SIGCONT .. the kernel shows nothing waiting); the C consumer's own figure (first
//    packet received .. last verdict sent) is printed too. psd drains twice: a fresh process (cold: its
//    JavaScript not yet optimised, its wasm not yet tiered up) and then the same daemon again
//    (warm, as a daemon that has been running is); then C drains once more, and each psd drain
//    is paired with the C drains around it. Both pinned to CPU 1 (--cpus 0,1: both CPUs, where
//    psd's main thread and worker run side by side); the sender to CPU 0.
// 2. Latency: ping round trips at a fixed rate (1000/s), with no queue rule, with the C consumer,
//    and with psd in the path; p50/p99 of ping's own times.
//
//   node dist/bench/live-drain.js [--queues 1|2] [--packets 50000] [--rounds 3] [--size 64] [--pings 2000] [--cpus 1] [--batch 64]
//
// Every process runs in a session of its own with the autogroup nice value -20 (the machine may
// be shared; see NOTES.md). --cpus is the taskset CPU list of the consumers (default "1"; "0,1"
// with --queues 2); the sender and ping run on CPU 0.
// 3. The whole box with no queue rule: the same sender, its datagrams dropped by an iptables rule
//    with no NFQUEUE before it; the sender's own rate (the ceiling any consumer works under).
import { dirname, join } from 'node:path'
import { fileURLToPath } from 'node:url'
import { readFileSync } from 'node:fs'
import { buildC, createPair, deletePair, liveUnavailable, nsRun, Proc, run } from '../test/lib/netns.js'
import { LivePsd, queueLine, sleep } from '../test/51.live.lib.js'

const root = join(dirname(fileURLToPath(import.meta.url)), '..', '..')
const arg = (name: string, def: number) => {
  const i = process.argv.indexOf(`--${name}`)
  return i > 0 ? Number(process.argv[i + 1]) : def
}
/** queues drained side by side: 2 = two queues (UDP to two ports), two C consumers, psd --queues 0-1 */
const nq = Math.min(Math.max(arg('queues', 1), 1), 2)
const packets = Math.floor(Math.min(arg('packets', 50000), 65000 * nq) / nq) * nq
const perQueue = packets / nq
const queueIds = Array.from({ length: nq }, (_, q) => q)
const rounds = Math.min(arg('rounds', 3), 10)
const size = arg('size', 64)
const pings = Math.min(arg('pings', 2000), 20000)
const acceptAll = join(root, 'bench', 'live-accept-all.lua')
const cpusArg = process.argv.indexOf('--cpus')
const cpus = cpusArg > 0 ? process.argv[cpusArg + 1] : nq === 2 ? '0,1' : '1'
const batch = arg('batch', 64)
// A session of its own with autogroup nice -20, then pinned: `ip netns exec NS ...hi(cpus) cmd`.
const hi = (cpuList: string) => ['setsid', 'sh', '-c', 'echo -20 > /proc/self/autogroup 2>/dev/null; exec "$@"', 'sh', 'taskset', '-c', cpuList]

const why = liveUnavailable(['ip', 'iptables', 'cc', 'taskset', 'ping'])
if (why) {
  console.error(`live-drain: cannot run: ${why}`)
  process.exit(1)
}
const cBin = buildC(root, 'bench/nfq-c-consumer.c')
const flood = buildC(root, 'bench/udp-flood.c')

const median = (a: number[]) => a.length ? [...a].sort((x, y) => x - y)[Math.floor(a.length / 2)] : 0
const pct = (a: number[], p: number) => {
  const s = [...a].sort((x, y) => x - y)
  return s.length ? s[Math.min(s.length - 1, Math.floor(p / 100 * s.length))] : 0
}
const ticks = (pid: number) => {
  const f = readFileSync(`/proc/${pid}/stat`, 'utf8').split(') ')[1].split(' ')
  return Number(f[11]) + Number(f[12]) // utime + stime, in clock ticks (1/100 s)
}

/** Waits until the packets waiting in queues qs (a queue not bound counts as `unbound`) pass pred. */
async function waitQueues(qs: number[], pred: (waiting: number) => boolean, timeoutMs: number, unbound = 0): Promise<number> {
  const end = Date.now() + timeoutMs
  for (;;) {
    let w = 0
    for (const q of qs) w += (await queueLine(p.b, q))?.[2] ?? unbound
    if (pred(w) || Date.now() > end) return w
    await sleep(2)
  }
}

/** The sender: perQueue datagrams to each queue's port (9999 + queue), from CPU 0. */
function fill(p: { a: string; addrB: string }): { sent: number } {
  const [cmd, ...rest] = hi('0')
  let sent = 0
  for (const q of queueIds) {
    sent += JSON.parse(nsRun(p.a, cmd, [...rest, flood, '-d', `${p.addrB}:${9999 + q}`, '-n', String(perQueue), '-s', String(size)], 60_000)).sent
  }
  return { sent }
}

const p = createPair('ldrain')
const drain: Record<'c' | 'c_own' | 'psd' | 'psd_warm', number[]> = { c: [], c_own: [], psd: [], psd_warm: [] }
const cpu: Record<'c' | 'psd' | 'psd_warm', number[]> = { c: [], psd: [], psd_warm: [] }
/** psd over C per round (both drained fully; C is the mean of the drains before and after psd's) */
const paired: number[] = []
/** the same for the second drain of the same daemon (warm) */
const pairedWarm: number[] = []
/**
 * One timed drain, the same for every consumer: it is stopped (SIGSTOP), the queues are filled,
 * and it is continued; packets/s from SIGCONT until nothing waits in the queues (a consumer that
 * exits with its last verdict unbinds its queue, and a queue not bound counts as empty).
 */
async function timedDrain(signal: (sig: NodeJS.Signals) => void): Promise<{ sent: number; queued: number; pps: number }> {
  signal('SIGSTOP')
  const { sent } = fill(p)
  const queued = await waitQueues(queueIds, (w) => w >= packets, 10_000)
  const start = performance.now()
  signal('SIGCONT')
  await waitQueues(queueIds, (w) => w === 0, 30_000)
  return { sent, queued, pps: Math.round(packets / ((performance.now() - start) / 1000)) }
}

/**
 * The C consumer, measured as psd is: it binds, is stopped (SIGSTOP) while the queue fills, and
 * is continued; timed from outside until nothing waits. Its own figure (first packet received ..
 * last verdict sent) is kept too. Null if it fell short.
 */
async function drainC(label: string): Promise<{ pps: number; cpu_us_per_packet: number } | null> {
  const cs = queueIds.map((q) => new Proc('ip', ['netns', 'exec', p.b, ...hi(cpus), cBin, '-q', String(q), '-l', '65536',
    '-n', String(perQueue), '-t', '60'], 60_000))
  await sleep(300)
  const { sent, queued, pps } = await timedDrain((sig) => { for (const c of cs) process.kill(c.child.pid!, sig) })
  const ds = await Promise.all(cs.map((c) => c.waitFor((o) => o.consumer === 'c', 60_000)))
  await Promise.all(cs.map((c) => c.exited))
  const own = ds.reduce((a, d) => a + d.pps, 0), cpuUs = +(ds.reduce((a, d) => a + d.cpu_us_per_packet, 0) / nq).toFixed(3)
  console.log(`${label} c  : sent ${sent}, queued ${queued}, drained at ${pps} pps from outside, ` +
    `${own} pps by its own clock${nq > 1 ? ' (sum of the consumers)' : ''}, ${cpuUs} us CPU/packet`)
  if (ds.some((d) => d.packets !== perQueue) || queued < packets) return null
  drain.c.push(pps)
  drain.c_own.push(own)
  cpu.c.push(cpuUs)
  return { pps, cpu_us_per_packet: cpuUs }
}

/** psd, stopped, gets a queue-full, and is continued: timed from outside until nothing waits. */
async function drainPsd(psd: LivePsd, label: string, kind: string): Promise<{ queued: number; pps: number; cpuUs: number }> {
  const t0 = ticks(psd.pid) // psd uses no CPU while it is stopped for the fill
  const { sent, queued, pps } = await timedDrain((sig) => psd.signal(sig))
  const cpuUs = +((ticks(psd.pid) - t0) * 1e4 / packets).toFixed(2)
  console.log(`${label} psd: sent ${sent}, queued ${queued}, drained at ${pps} pps from outside (${kind}), ${cpuUs} us CPU/packet`)
  return { queued, pps, cpuUs }
}

const latency: Record<string, { p50: number; p99: number; avg: number; n: number }> = {}
let noQueuePps = 0
try {
  for (const q of queueIds) {
    nsRun(p.b, 'iptables', ['-t', 'mangle', '-A', 'INPUT', '-p', 'udp', '--dport', String(9999 + q), '-j', 'NFQUEUE', '--queue-num', String(q)])
    nsRun(p.b, 'iptables', ['-A', 'INPUT', '-p', 'udp', '--dport', String(9999 + q), '-j', 'DROP'])
  }
  for (let r = 0; r < rounds; r++) {
    const dc = await drainC(`round ${r + 1}`)
    // psd: ready, then two drains by the same daemon: cold (its JavaScript not yet optimised),
    // then warm, as a daemon that has been running is.
    const psd = new LivePsd(p.b, ['--script', acceptAll, ...(nq > 1 ? ['--queues', `0-${nq - 1}`] : ['--queue', '0']), '--queue-maxlen', '65536', '--batch', String(batch)], 90_000, hi(cpus))
    await psd.ready()
    await sleep(200)
    const cold = await drainPsd(psd, `round ${r + 1}`, 'cold')
    const warm = await drainPsd(psd, `round ${r + 1}`, 'warm')
    await psd.stop('SIGTERM')
    const qs = psd.queueStats()
    console.log(`round ${r + 1} psd: both drains: ${qs.map((x) => `queue ${x.queue}: ${x.packets} packets, ${x.batches} batches`).join('; ')}`)
    // C again, right after: what the machine gives a consumer drifts over a run, so each psd
    // drain is paired with the mean of the C drains on either side of it.
    const dc2 = await drainC(`round ${r + 1}`)
    const cMean = dc && dc2 ? (dc.pps + dc2.pps) / 2 : 0
    const stats = psd.queueStats()
    const whole = stats.length === nq && stats.reduce((a, x) => a + x.packets, 0) === 2 * packets
    for (const [d, pps, cpuUs, pairs] of [[cold, drain.psd, cpu.psd, paired], [warm, drain.psd_warm, cpu.psd_warm, pairedWarm]] as const) {
      if (!whole || d.queued < packets) continue
      pps.push(d.pps)
      cpuUs.push(d.cpuUs)
      if (cMean) pairs.push(+(d.pps / cMean).toFixed(3))
    }
  }

  // The whole box with no queue rule: port 9990 has a DROP rule and nothing else.
  nsRun(p.b, 'iptables', ['-A', 'INPUT', '-p', 'udp', '--dport', '9990', '-j', 'DROP'])
  {
    const [cmd, ...rest] = hi('0')
    const f = JSON.parse(nsRun(p.a, cmd, [...rest, flood, '-d', `${p.addrB}:9990`, '-n', String(packets), '-s', String(size)], 60_000))
    noQueuePps = f.pps
    console.log(`no queue rule: ${f.sent} datagrams dropped at ${f.pps} pps (the sender's rate)`)
  }

  // Latency: ping a -> b at 1000/s; ICMP to queue 1 when a consumer is there.
  const ping = (): number[] => {
    run('ip', ['netns', 'exec', p.a, 'ping', '-c', '50', '-i', '0.002', '-W', '1', '-q', p.addrB], 30_000) // warm-up
    const text = run('ip', ['netns', 'exec', p.a, ...hi('0'), 'ping', '-c', String(pings), '-i', '0.001', '-W', '1', p.addrB], 120_000)
    return [...text.matchAll(/time=([\d.]+) ms/g)].map((m) => Number(m[1]) * 1000)
  }
  const record = (name: string, t: number[]) => {
    latency[name] = { p50: pct(t, 50), p99: pct(t, 99), avg: Math.round(t.reduce((a, b) => a + b, 0) / Math.max(1, t.length)), n: t.length }
    console.log(`latency ${name.padEnd(10)}: p50 ${latency[name].p50} us, p99 ${latency[name].p99} us, avg ${latency[name].avg} us (${t.length} of ${pings} replies)`)
  }
  record('no queue', ping())
  nsRun(p.b, 'iptables', ['-t', 'mangle', '-A', 'INPUT', '-p', 'icmp', '-j', 'NFQUEUE', '--queue-num', '1'])
  {
    const c = new Proc('ip', ['netns', 'exec', p.b, ...hi(cpus), cBin, '-q', '1', '-n', '10000000', '-t', '60'], 90_000)
    await waitQueues([1], (w) => w >= 0, 5000, -1)
    record('c consumer', ping())
    c.kill('SIGKILL')
    await c.exited
  }
  {
    const psd = new LivePsd(p.b, ['--script', acceptAll, '--queue', '1'], 180_000, hi(cpus))
    await psd.ready()
    record('psd', ping())
    await psd.stop('SIGTERM')
  }
} finally {
  deletePair(p)
}

const summary = {
  packets, queues: nq, size, rounds, cpus, batch, no_queue_rule_pps: noQueuePps,
  c_pps_median: median(drain.c), c_own_clock_pps_median: median(drain.c_own), psd_pps_median: median(drain.psd),
  psd_over_c: median(drain.c) ? +(median(drain.psd) / median(drain.c)).toFixed(2) : 0,
  psd_over_c_paired_median: median(paired), paired,
  psd_warm_pps_median: median(drain.psd_warm), psd_warm_over_c_paired_median: median(pairedWarm), paired_warm: pairedWarm,
  c_cpu_us_per_packet: median(cpu.c), psd_cpu_us_per_packet: median(cpu.psd), psd_warm_cpu_us_per_packet: median(cpu.psd_warm),
  c_runs: drain.c, c_own_clock_runs: drain.c_own, psd_runs: drain.psd, psd_warm_runs: drain.psd_warm,
  latency_us: latency,
}
console.log(JSON.stringify(summary))
