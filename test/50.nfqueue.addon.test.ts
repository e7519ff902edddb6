// The NFQUEUE addon with real traffic: namespaces made here (unique names, always deleted),
// iptables (nft backend) rules sending packets to a JS consumer on the addon, bounded senders,
// and exact counts at a receiver. Needs root; without it every test is skipped (and says so),
// except under CI=true, where they run and fail.
import { test } from 'uvu'
import * as assert from 'uvu/assert'
import { dirname, join } from 'node:path'
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { fileURLToPath } from 'node:url'
import {
  NfQueue, NfQueueError, NF_QUEUE_NR, NF_QUEUE, NF_DROP, parseKernelCounters, addonAvailable, loadAddon,
} from '../src/live/nfqueue.js'
import {
  buildC, createPair, deletePair, liveUnavailable, nsRun, Proc, ruleCount, run, udpReceiver, type Pair,
} from './lib/netns.js'

const root = join(dirname(fileURLToPath(import.meta.url)), '..', '..')
const consumerJs = join(root, 'dist', 'test', 'lib', 'nfq-consumer.js')
const why = liveUnavailable()
const CI = process.env.CI === 'true'
if (why && !CI) console.log(`SKIPPED: 50.nfqueue.addon tests need root and iproute2/iptables/ping/cc: ${why}`)
const live = why && !CI ? test.skip : test

function needLive() {
  if (why) throw new Error(`cannot run the live NFQUEUE tests: ${why}`)
  if (!addonAvailable()) loadAddon()  // throws the explanation
}

function consumer(ns: string, cfg: object, hardMs = 30_000): Proc {
  return new Proc('ip', ['netns', 'exec', ns, process.execPath, consumerJs, JSON.stringify(cfg)], hardMs)
}

function flood(p: Pair, args: string[]): { sent: number } {
  const bin = buildC(root, 'bench/udp-flood.c')
  return JSON.parse(nsRun(p.a, bin, ['-d', `${p.addrB}:9999`, ...args], 70_000))
}

async function withPair(tag: string, fn: (p: Pair) => Promise<void>) {
  needLive()
  const p = createPair(tag)
  try {
    await fn(p)
  } finally {
    deletePair(p)
  }
}

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms))

test('kernel counters: /proc/net/netfilter/nfnetlink_queue lines parse', () => {
  const text = '    0   4242     3 2 65531     7     2       99  1\n    5  -4242     0 2   128     0     0        0  1\n'
  const k = parseKernelCounters(text)
  assert.equal(k.length, 2)
  assert.equal(k[0], { queue: 0, portid: 4242, waiting: 3, copyMode: 2, copyRange: 65531, queueDropped: 7,
    userDropped: 2, idSequence: 99 })
  assert.is(k[1].copyRange, 128)
  assert.is(NF_QUEUE_NR(5), (5 << 16) | NF_QUEUE)
  assert.throws(() => NF_QUEUE_NR(70000), /0\.\.65535/)
})

live('options are checked before anything is bound', () => {
  needLive()
  assert.throws(() => NfQueue.open({ maxlen: 70000 }), /65536/)
  assert.throws(() => NfQueue.open({ queue: -1 }), /0\.\.65535/)
  assert.throws(() => NfQueue.open({ copyRange: 0 }), /copyRange/)
})

live('ping through a JS accept-all loop on the addon', () => withPair('ping', async (p) => {
  nsRun(p.b, 'iptables', ['-A', 'INPUT', '-p', 'icmp', '-j', 'NFQUEUE', '--queue-num', '0'])
  const c = consumer(p.b, { queue: 0, mode: 'accept', limit: 100, idleMs: 1500, timeoutMs: 15_000 })
  try {
    await c.waitFor((o) => o.event === 'ready')
    const out = run('ip', ['netns', 'exec', p.a, 'ping', '-c', '5', '-i', '0.2', '-W', '2', p.addrB], 20_000)
    assert.match(out, /5 packets transmitted, 5 received/)
    const done = await c.waitFor((o) => o.event === 'done', 10_000)
    assert.is(done.packets, 5)
    assert.is(done.accepted, 5)
    const r = done.seen[0]
    const ifindex = Number(/^(\d+):/.exec(run('ip', ['-n', p.b, '-o', 'link', 'show', p.devB]))![1])
    assert.is(r.family, 4)
    assert.is(r.hook, 2, 'hook: input')
    assert.is(r.len, 84)
    assert.is(r.origlen, 84)
    assert.is(r.queue, 0)
    assert.is(r.indev, ifindex)
    assert.is(r.outdev, 0)
    assert.is(r.uid, 0xffffffff)
    assert.ok(Math.abs(r.sec - Date.now() / 1000) < 60, 'timestamp near now')
    assert.is(done.stats.outstanding, 0)
    assert.is(done.stats.nlErrors, 0)
  } finally {
    c.kill()
    await c.exited
  }
}))

live('IPv6: ping6 through the JS loop gives family 6 records', () => withPair('ping6', async (p) => {
  run('ip', ['-n', p.a, 'addr', 'add', 'fd00:200::1/64', 'dev', p.devA, 'nodad'])
  run('ip', ['-n', p.b, 'addr', 'add', 'fd00:200::2/64', 'dev', p.devB, 'nodad'])
  nsRun(p.b, 'ip6tables', ['-A', 'INPUT', '-p', 'ipv6-icmp', '--icmpv6-type', 'echo-request', '-j', 'NFQUEUE', '--queue-num', '0'])
  const c = consumer(p.b, { queue: 0, mode: 'accept', limit: 100, idleMs: 1500, timeoutMs: 15_000 })
  try {
    await c.waitFor((o) => o.event === 'ready')
    const out = run('ip', ['netns', 'exec', p.a, 'ping', '-6', '-c', '3', '-i', '0.2', '-W', '2', 'fd00:200::2'], 20_000)
    assert.match(out, /3 packets transmitted, 3 received/)
    const done = await c.waitFor((o) => o.event === 'done', 10_000)
    assert.is(done.packets, 3)
    assert.is(done.seen[0].family, 6)
    assert.is(done.seen[0].len, 104)
    assert.is(done.seen[0].hook, 2)
  } finally {
    c.kill()
    await c.exited
  }
}))

live('without a consumer, queued pings are dropped, unless the rule has --queue-bypass', () => withPair('nocons', async (p) => {
  nsRun(p.b, 'iptables', ['-A', 'INPUT', '-p', 'icmp', '-j', 'NFQUEUE', '--queue-num', '0'])
  const r = run('sh', ['-c', `ip netns exec ${p.a} ping -c 2 -i 0.2 -W 1 ${p.addrB}; true`], 10_000)
  assert.match(r, /2 packets transmitted, 0 received/)
  nsRun(p.b, 'iptables', ['-R', 'INPUT', '1', '-p', 'icmp', '-j', 'NFQUEUE', '--queue-num', '0', '--queue-bypass'])
  const ok = run('ip', ['netns', 'exec', p.a, 'ping', '-c', '2', '-i', '0.2', '-W', '1', p.addrB], 10_000)
  assert.match(ok, /2 packets transmitted, 2 received/)
}))

async function udpRun(p: Pair, cfg: object, floodArgs: string[], opts: { rxIdleMs?: number } = {}) {
  const rx = udpReceiver(p.b, p.addrB, 9999, opts.rxIdleMs)
  const c = consumer(p.b, { queue: 0, idleMs: 800, timeoutMs: 20_000, ...cfg })
  try {
    await rx.waitFor((o) => o.event === 'ready')
    await c.waitFor((o) => o.event === 'ready')
    const sent = flood(p, floodArgs)
    const done = await c.waitFor((o) => o.event === 'done' || o.event === 'error', 25_000)
    const got = await rx.waitFor((o) => o.event === 'done', 25_000)
    return { sent, done, got }
  } finally {
    c.kill()
    rx.kill()
    await Promise.all([c.exited, rx.exited])
  }
}

live('UDP: JS drops the datagrams whose payload starts with X (exact counts)', () => withPair('dropx', async (p) => {
  nsRun(p.b, 'iptables', ['-A', 'INPUT', '-p', 'udp', '--dport', '9999', '-j', 'NFQUEUE', '--queue-num', '0'])
  const { sent, done, got } = await udpRun(p, { mode: 'dropx', limit: 1000 }, ['-n', '1000', '-x', '10', '-r', '10000'])
  assert.is(sent.sent, 1000)
  assert.is(done.packets, 1000)
  assert.is(done.dropped, 100)
  assert.is(done.accepted, 900)
  assert.is(got.total, 900)
  assert.is(got.first.X, undefined)
  assert.is(got.first.A, 900)
  assert.is(done.stats.nlErrors, 0, 'no verdict was refused by the kernel')
  assert.is(done.stats.outstanding, 0)
  assert.ok(done.stats.batchMsgs > 0, 'plain accepts went out as batch verdicts')
  assert.ok(done.stats.sendCalls <= done.stats.recvCalls, 'one sendmsg per receive batch at most')
}))

live('verdictRecords: ids read from the records, codes the kernel would not take sent as the fault code (exact counts)', () => withPair('records', async (p) => {
  nsRun(p.b, 'iptables', ['-A', 'INPUT', '-p', 'udp', '--dport', '9999', '-j', 'NFQUEUE', '--queue-num', '0'])
  // 1000 datagrams, every 10th starting with X (dropped); of the 900 others every 7th gets code 7
  const { done, got } = await udpRun(p, { mode: 'dropx', api: 'records', badEvery: 7, faultCode: NF_DROP, limit: 1000 },
    ['-n', '1000', '-x', '10', '-r', '10000'])
  assert.is(done.packets, 1000)
  assert.is(done.invalid, 128)
  assert.is(done.dropped, 228)
  assert.is(done.accepted, 772)
  assert.is(got.total, 772)
  assert.is(got.first.X, undefined)
  assert.ok(done.shown.length > 0 && done.shown.every((s: { id: number; code: number }) => s.code === 7 && s.id > 0))
  assert.is(done.stats.nlErrors, 0, 'no verdict was refused by the kernel')
  assert.is(done.stats.outstanding, 0)
  assert.ok(done.stats.batchMsgs > 0, 'plain accepts went out as batch verdicts')
}))

live('UDP: verdicts given out of order, one call per packet, stay exact', () => withPair('order', async (p) => {
  nsRun(p.b, 'iptables', ['-A', 'INPUT', '-p', 'udp', '--dport', '9999', '-j', 'NFQUEUE', '--queue-num', '0'])
  const { done, got } = await udpRun(p, { mode: 'dropx', order: 'reverse', limit: 600 }, ['-n', '600', '-x', '3', '-r', '10000'])
  assert.is(done.packets, 600)
  assert.is(done.dropped, 200)
  assert.is(got.total, 400)
  assert.is(got.first.X, undefined)
  assert.is(done.stats.nlErrors, 0)
  assert.is(done.stats.outstanding, 0)
}))

live('a mark set in the verdict is matched by a later iptables rule', () => withPair('mark', async (p) => {
  // The queue sits in mangle/INPUT; the accepted packet goes on to filter/INPUT, which counts the mark.
  nsRun(p.b, 'iptables', ['-t', 'mangle', '-A', 'INPUT', '-p', 'udp', '--dport', '9999', '-j', 'NFQUEUE', '--queue-num', '0'])
  nsRun(p.b, 'iptables', ['-A', 'INPUT', '-p', 'udp', '--dport', '9999', '-m', 'mark', '--mark', '0x20', '-j', 'ACCEPT'])
  nsRun(p.b, 'iptables', ['-A', 'INPUT', '-p', 'udp', '--dport', '9999', '-j', 'DROP'])
  const { done, got } = await udpRun(p, { mode: 'mark', markValue: 0x20, limit: 50 }, ['-n', '50', '-r', '5000'])
  assert.is(done.packets, 50)
  assert.is(ruleCount(p.b, 'filter', 'INPUT', 'mark match 0x20'), 50)
  assert.is(ruleCount(p.b, 'filter', 'INPUT', 'DROP'), 0)
  assert.is(got.total, 50)
  assert.is(done.stats.batchMsgs, 0, 'a mark needs an individual verdict')
}))

live('a new payload given in the verdict reaches the receiver', () => withPair('edit', async (p) => {
  nsRun(p.b, 'iptables', ['-A', 'INPUT', '-p', 'udp', '--dport', '9999', '-j', 'NFQUEUE', '--queue-num', '0'])
  const { done, got } = await udpRun(p, { mode: 'edit', limit: 100 }, ['-n', '100', '-s', '1200', '-r', '5000'])
  assert.is(done.packets, 100)
  assert.is(got.total, 100)
  assert.is(got.first.B, 100, 'every datagram was rewritten A -> B')
  assert.is(done.stats.nlErrors, 0)
}))

live('a copy range gives shortened records with the length on the wire', () => withPair('copy', async (p) => {
  nsRun(p.b, 'iptables', ['-A', 'INPUT', '-p', 'udp', '--dport', '9999', '-j', 'NFQUEUE', '--queue-num', '0'])
  const { done, got } = await udpRun(p, { mode: 'accept', copyRange: 100, limit: 20 }, ['-n', '20', '-s', '1200', '-r', '2000'])
  assert.is(done.packets, 20)
  assert.is(done.seen[0].len, 100)
  assert.is(done.seen[0].origlen, 1228)
  assert.is(done.kernel.copyRange, 100)
  assert.is(got.total, 20, 'accepted whole: the kernel keeps the bytes it did not copy')
}))

live('NF_QUEUE_NR hands packets on to a second queue', () => withPair('requeue', async (p) => {
  nsRun(p.b, 'iptables', ['-A', 'INPUT', '-p', 'udp', '--dport', '9999', '-j', 'NFQUEUE', '--queue-num', '0'])
  const second = consumer(p.b, { queue: 1, mode: 'accept', limit: 20, idleMs: 800, timeoutMs: 20_000 })
  try {
    await second.waitFor((o) => o.event === 'ready')
    const { done, got } = await udpRun(p, { mode: 'queue', to: 1, limit: 20 }, ['-n', '20', '-r', '2000'])
    const d2 = await second.waitFor((o) => o.event === 'done', 10_000)
    assert.is(done.packets, 20)
    assert.is(d2.packets, 20)
    assert.is(d2.seen[0].queue, 1)
    assert.is(got.total, 20)
  } finally {
    second.kill()
    await second.exited
  }
}))

async function tcpTransfer(p: Pair, cfg: object, bytes: number, asUser?: number) {
  // Queue the sender's own TCP segments at OUTPUT in namespace a (locally made: TSO/GSO-sized).
  const server = new Proc('ip', ['netns', 'exec', p.b, process.execPath, '-e', `
    let n = 0; const s = require('node:net').createServer((c) => { c.on('data', (d) => { n += d.length });
      c.on('end', () => { console.log(JSON.stringify({ event: 'done', bytes: n })); process.exit(0) }) });
    s.listen(9998, '${p.addrB}', () => console.log(JSON.stringify({ event: 'ready' })));
    setTimeout(() => process.exit(2), 20000)`], 25_000)
  const c = consumer(p.a, { queue: 0, mode: 'accept', limit: 1_000_000, idleMs: 800, timeoutMs: 20_000, ...cfg })
  try {
    await server.waitFor((o) => o.event === 'ready')
    await c.waitFor((o) => o.event === 'ready')
    const client = `const k = require('node:net').connect(9998, '${p.addrB}', () => { k.end(Buffer.alloc(${bytes}, 97)) });
      k.on('close', () => process.exit(0)); setTimeout(() => process.exit(2), 15000)`
    const pre = asUser === undefined ? [] : ['setpriv', `--reuid=${asUser}`, `--regid=${asUser}`, '--clear-groups']
    run('ip', ['netns', 'exec', p.a, ...pre, process.execPath, '-e', client], 20_000)
    const got = await server.waitFor((o) => o.event === 'done', 15_000)
    const done = await c.waitFor((o) => o.event === 'done', 15_000)
    return { got, done }
  } finally {
    c.kill()
    server.kill()
    await Promise.all([c.exited, server.exited])
  }
}

live('TCP with GSO: whole super-packets, checksum-not-ready flag, socket uid/gid', () => withPair('gso', async (p) => {
  nsRun(p.a, 'iptables', ['-A', 'OUTPUT', '-p', 'tcp', '--dport', '9998', '-j', 'NFQUEUE', '--queue-num', '0'])
  const bytes = 4 << 20
  const g = await tcpTransfer(p, { gso: true, uidGid: true }, bytes, 65534)
  if (process.env.PSD_TEST_VERBOSE) console.log(JSON.stringify(g.done.agg), JSON.stringify(g.done.stats))
  assert.is(g.got.bytes, bytes)
  assert.ok(g.done.agg.gso > 0, 'some records carry the GSO flag')
  assert.ok(g.done.agg.csumNotReady > 0, 'some records carry the checksum-not-ready flag')
  assert.ok(g.done.agg.maxLen > 1500, `records larger than the MTU (max ${g.done.agg.maxLen})`)
  assert.ok(g.done.agg.uids.includes(65534), `socket owner uid reported (${g.done.agg.uids})`)
  assert.ok(g.done.agg.gids.includes(65534), `socket owner gid reported (${g.done.agg.gids})`)
  assert.is(g.done.stats.truncated, 0)
  assert.is(g.done.stats.nlErrors, 0)
  // Without GSO the kernel segments before queueing: MTU-sized packets, no uid unless asked.
  const s = await tcpTransfer(p, { gso: false }, bytes)
  assert.is(s.got.bytes, bytes)
  assert.is(s.done.agg.gso, 0)
  assert.is(s.done.agg.overMtu, 0)
  assert.equal(s.done.agg.uids, [0xffffffff])
}))

live('API misuse gives clear errors', () => withPair('api', async (p) => {
  const js = `
    import { NfQueue, NF_ACCEPT } from ${JSON.stringify(join(root, 'dist', 'src', 'live', 'nfqueue.js'))}
    const q = NfQueue.open({ queue: 9 })
    const r = {}
    const t = (k, f) => { try { f(); r[k] = 'no error' } catch (e) { r[k] = e.name + ': ' + e.message + (e.code ? ' [' + e.code + ']' : '') } }
    t('badBuf', () => q.receive(new Uint16Array(4)))
    t('badCode', () => q.verdicts({ count: 1, ids: new Uint32Array([1]), codes: new Uint32Array([7]) }))
    t('short', () => q.verdicts({ count: 2, ids: new Uint32Array([1]), codes: new Uint32Array([1]) }))
    t('payloadOut', () => q.verdicts({ count: 1, ids: new Uint32Array([1]), codes: new Uint32Array([1]),
      payload: { data: new Uint8Array(10), offsets: new Uint32Array([8]), lengths: new Uint32Array([4]) } }))
    t('marks', () => q.verdicts({ count: 1, ids: new Uint32Array([1]), codes: new Uint32Array([1]), marks: new Int32Array(1) }))
    r.empty = q.receive(new Uint8Array(1 << 20))
    r.kernel = q.kernelCounters()
    q.close()
    t('closed', () => q.receive(new Uint8Array(100)))
    console.log(JSON.stringify(r))`
  const out = JSON.parse(nsRun(p.b, process.execPath, ['--input-type=module', '-e', js]))
  assert.match(out.badBuf, /^TypeError: receive\(buf: Uint8Array/)
  assert.match(out.badCode, /^RangeError: verdicts: code 7/)
  assert.match(out.short, /^RangeError: verdicts: ids and codes must hold count entries/)
  assert.match(out.payloadOut, /^RangeError: verdicts: payload 0 lies outside data/)
  assert.match(out.marks, /^TypeError: verdicts: marks must be a Uint32Array or a Float64Array/)
  assert.is(out.empty, 0)
  assert.is(out.kernel.queue, 9)
  assert.is(out.kernel.copyRange, 65531)
  assert.match(out.closed, /queue 9 is closed \[EBADF\]/)
}))

live('the addon works in a worker thread, which can be terminated while polling', () => withPair('worker', async (p) => {
  nsRun(p.b, 'iptables', ['-A', 'INPUT', '-p', 'icmp', '-j', 'NFQUEUE', '--queue-num', '0'])
  const dir = mkdtempSync(join(tmpdir(), 'psd-worker-'))
  const file = join(dir, 'worker.mjs')
  writeFileSync(file, `
    import { Worker, isMainThread, parentPort } from 'node:worker_threads'
    if (isMainThread) {
      const w = new Worker(new URL(import.meta.url))
      w.on('message', (m) => { console.log(JSON.stringify(m)); if (m.total === 3) w.terminate() })
      w.on('error', (e) => console.log(JSON.stringify({ event: 'error', message: e.message })))
      w.on('exit', (c) => console.log(JSON.stringify({ event: 'exit', code: c })))
      setTimeout(() => w.terminate(), 10000).unref()
    } else {
      const { NfQueue, NF_ACCEPT } = await import(${JSON.stringify(join(root, 'dist', 'src', 'live', 'nfqueue.js'))})
      const q = NfQueue.open({ queue: 0 })
      const buf = new Uint8Array(new SharedArrayBuffer(1 << 21)), dv = new DataView(buf.buffer)
      const ids = new Uint32Array(64), codes = new Uint32Array(64).fill(NF_ACCEPT)
      let total = 0
      q.onReadable(() => {
        let n
        while ((n = q.receive(buf)) > 0) {
          for (let i = 0, pos = 0; i < n; i++) { ids[i] = dv.getUint32(pos + 12, true); pos += dv.getUint32(pos, true) }
          total += n
          q.verdicts({ count: n, ids, codes })
          parentPort.postMessage({ event: 'packets', total })
        }
      })
      parentPort.postMessage({ event: 'ready' })
    }`)
  const c = new Proc('ip', ['netns', 'exec', p.b, process.execPath, file], 20_000)
  try {
    await c.waitFor((o) => o.event === 'ready')
    const out = run('ip', ['netns', 'exec', p.a, 'ping', '-c', '3', '-i', '0.2', '-W', '2', p.addrB], 20_000)
    assert.match(out, /3 packets transmitted, 3 received/)
    await c.waitFor((o) => o.event === 'exit', 10_000)
    assert.is(await c.exited, 0, 'the process ends cleanly once the polling worker is gone')
    assert.ok(!c.lines.some((o) => o.event === 'error'), c.stderr)
  } finally {
    c.kill()
    rmSync(dir, { recursive: true, force: true })
  }
}))

live('a queue held by another socket gives a clear EPERM error', () => withPair('held', async (p) => {
  const first = consumer(p.b, { queue: 3, mode: 'accept', timeoutMs: 10_000 })
  try {
    const ready = await first.waitFor((o) => o.event === 'ready')
    const second = consumer(p.b, { queue: 3 })
    const err = await second.waitFor((o) => o.event === 'error')
    await second.exited
    assert.is(err.code, 'EPERM')
    assert.match(err.message, 'queue 3 is held by another process or you are not root (CAP_NET_ADMIN)')
    assert.match(err.message, `netlink port id ${ready.portid}`)
    // Another queue number in the same namespace is free.
    const third = consumer(p.b, { queue: 4, timeoutMs: 300 })
    await third.waitFor((o) => o.event === 'ready')
    await third.exited
  } finally {
    first.kill()
    await first.exited
  }
  // Without CAP_NET_ADMIN: the same EPERM, saying so.
  const nobody = new Proc('ip', ['netns', 'exec', p.b, 'setpriv', '--reuid=65534', '--regid=65534', '--clear-groups',
    '--inh-caps=-all', process.execPath, consumerJs, JSON.stringify({ queue: 5 })], 15_000)
  const e2 = await nobody.waitFor((o) => o.event === 'error')
  assert.is(e2.code, 'EPERM')
  assert.match(e2.message, 'you are not root')
}))

live('a full queue drops without fail-open and accepts with it; the consumer survives', () => withPair('full', async (p) => {
  nsRun(p.b, 'iptables', ['-A', 'INPUT', '-p', 'udp', '--dport', '9999', '-j', 'NFQUEUE', '--queue-num', '0'])
  // Not reading for 1.5 s while 200 datagrams arrive into a queue of 16.
  const a = await udpRun(p, { mode: 'accept', maxlen: 16, pauseMs: 1500, limit: 1000 }, ['-n', '200', '-r', '2000'],
    { rxIdleMs: 2500 })
  assert.is(a.done.packets, 16)
  assert.is(a.got.total, 16)
  assert.is(a.done.kernel.queueDropped, 184)
  const b = await udpRun(p, { mode: 'accept', maxlen: 16, pauseMs: 1500, failOpen: true, limit: 1000 },
    ['-n', '200', '-r', '2000'], { rxIdleMs: 2500 })
  assert.is(b.done.packets, 16)
  assert.is(b.got.total, 200, 'fail-open: the kernel accepted what did not fit')
  assert.is(b.done.kernel.queueDropped, 0)
}))

live('a socket overrun (ENOBUFS) is counted and survived', () => withPair('enobufs', async (p) => {
  nsRun(p.b, 'iptables', ['-A', 'INPUT', '-p', 'udp', '--dport', '9999', '-j', 'NFQUEUE', '--queue-num', '0'])
  // A tiny receive buffer, ENOBUFS reporting left on, and no reading while 300 datagrams come.
  const r = await udpRun(p, { mode: 'accept', rcvbuf: 1, noEnobufs: false, maxlen: 1000, pauseMs: 1200, limit: 1000 },
    ['-n', '300', '-r', '3000'], { rxIdleMs: 2500 })
  assert.ok(r.done.kernel.userDropped > 0, 'the kernel lost messages to the full socket')
  assert.ok(r.done.stats.enobufs >= 1, 'receive saw ENOBUFS and went on')
  assert.is(r.done.packets + r.done.kernel.userDropped, 300)
  assert.is(r.got.total, r.done.packets)
}))

live('SIGSTOP / SIGCONT of the consumer loses nothing', () => withPair('stop', async (p) => {
  nsRun(p.b, 'iptables', ['-A', 'INPUT', '-p', 'udp', '--dport', '9999', '-j', 'NFQUEUE', '--queue-num', '0'])
  const rx = udpReceiver(p.b, p.addrB, 9999, 1500)
  const c = consumer(p.b, { queue: 0, mode: 'accept', limit: 3000, idleMs: 1500, timeoutMs: 20_000 })
  try {
    await rx.waitFor((o) => o.event === 'ready')
    await c.waitFor((o) => o.event === 'ready')
    const bin = buildC(root, 'bench/udp-flood.c')
    const sender = new Proc('ip', ['netns', 'exec', p.a, bin, '-d', `${p.addrB}:9999`, '-n', '3000', '-r', '5000'], 20_000)
    await sleep(150)
    // `ip netns exec` execs node in place, so the child's pid is the consumer's.
    const pid = c.child.pid!
    for (let i = 0; i < 3; i++) {
      process.kill(pid, 'SIGSTOP')
      await sleep(150)
      process.kill(pid, 'SIGCONT')
      await sleep(50)
    }
    const s = await sender.waitFor((o) => typeof o.sent === 'number', 15_000)
    assert.is(s.sent, 3000)
    const done = await c.waitFor((o) => o.event === 'done', 15_000)
    const got = await rx.waitFor((o) => o.event === 'done', 15_000)
    assert.is(done.packets, 3000)
    assert.is(got.total, 3000)
    assert.is(done.kernel.queueDropped + done.kernel.userDropped, 0)
  } finally {
    c.kill()
    rx.kill()
    await Promise.all([c.exited, rx.exited])
  }
}))

test.run()
