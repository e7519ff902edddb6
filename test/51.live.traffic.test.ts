// Live mode with real traffic: the psd command (node psd.js --script ...) bound to NFQUEUE in
// network namespaces made here (unique names, always deleted), iptables rules sending traffic
// to it, bounded senders, exact counts at the receiver. Needs root; without it every test is
// skipped (and says so), except under CI=true, where they run and fail.
import { test } from 'uvu'
import * as assert from 'uvu/assert'
import { chmodSync, mkdtempSync, readFileSync, rmSync, existsSync, statSync, writeFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { buildC, createPair, deletePair, nsRun, Proc, ruleCount, run, udpReceiver, type Pair } from './lib/netns.js'
import { hasTshark, tsharkFields } from './lib/pcaptools.js'
import { LivePsd, ROOT, extraSources, liveWhy, needLive, script, sleep } from './51.live.lib.js'

const why = liveWhy()
const CI = process.env.CI === 'true'
if (why && !CI) console.log(`SKIPPED: 51.live.traffic tests need root and iproute2/iptables/ping/cc: ${why}`)
const live = why && !CI ? test.skip : test

const dir = mkdtempSync(join(tmpdir(), 'psd-51t-'))
chmodSync(dir, 0o755) // scripts readable by the unprivileged user of the error tests
process.on('exit', () => rmSync(dir, { recursive: true, force: true }))

const ACCEPT_ALL = script(dir, 'accept-all.lua', 'function on_packet(pkt) return ACCEPT end\n')
// Drops the UDP datagrams whose payload starts with 'X'.
const DROP_X = script(dir, 'drop-x.lua', `
function on_packet(pkt)
  local u = pkt.udp
  if u and u.payload:sub(1, 1) == "X" then return DROP end
  return ACCEPT
end
`)

async function withPair(tag: string, fn: (p: Pair) => Promise<void>) {
  needLive(why)
  const p = createPair(tag)
  try {
    await fn(p)
  } finally {
    deletePair(p)
  }
}

/** psd in ns with args; the body runs with it ready; psd is stopped (SIGTERM) afterwards. */
async function withPsd(ns: string, args: string[], fn: (psd: LivePsd) => Promise<void>, prefix: string[] = []): Promise<LivePsd> {
  const psd = new LivePsd(ns, ['--log-level', 'info', ...args], 90_000, prefix)
  try {
    await psd.ready()
    await fn(psd)
  } finally {
    const code = await psd.stop()
    if (code !== 0) throw new Error(`psd exited ${code}; log:\n${psd.raw}`)
  }
  return psd
}

function flood(p: Pair, args: string[]): { sent: number } {
  const bin = buildC(ROOT, 'bench/udp-flood.c')
  return JSON.parse(nsRun(p.a, bin, ['-d', `${p.addrB}:9999`, ...args], 70_000))
}

function ifindex(ns: string, dev: string): number {
  return Number(/^(\d+):/.exec(run('ip', ['-n', ns, '-o', 'link', 'show', dev]))![1])
}

live('ping (IPv4 and IPv6) through an accept-all script; live metadata at the input hook', () => withPair('ping', async (p) => {
  run('ip', ['-n', p.a, 'addr', 'add', 'fd00:200::1/64', 'dev', p.devA, 'nodad'])
  run('ip', ['-n', p.b, 'addr', 'add', 'fd00:200::2/64', 'dev', p.devB, 'nodad'])
  nsRun(p.b, 'iptables', ['-A', 'INPUT', '-p', 'icmp', '-j', 'NFQUEUE', '--queue-num', '0'])
  nsRun(p.b, 'ip6tables', ['-A', 'INPUT', '-p', 'ipv6-icmp', '--icmpv6-type', 'echo-request', '-j', 'NFQUEUE', '--queue-num', '0'])
  const meta = script(dir, 'meta.lua', `
function on_packet(pkt)
  print(string.format("fam=%d hook=%s in=%s out=%s q=%s id=%d mark=%d uid=%s gid=%s len=%d origlen=%d time=%d",
    pkt.family, tostring(pkt.hook), tostring(pkt.indev), tostring(pkt.outdev), tostring(pkt.queue), pkt.id,
    pkt.mark, tostring(pkt.uid), tostring(pkt.gid), pkt.len, pkt.origlen, pkt.time))
  return ACCEPT
end
`)
  const psd = await withPsd(p.b, ['--script', meta], async () => {
    const out = run('ip', ['netns', 'exec', p.a, 'ping', '-c', '5', '-i', '0.2', '-W', '2', p.addrB], 20_000)
    assert.match(out, /5 packets transmitted, 5 received/)
    const out6 = run('ip', ['netns', 'exec', p.a, 'ping', '-6', '-c', '3', '-i', '0.2', '-W', '2', 'fd00:200::2'], 20_000)
    assert.match(out6, /3 packets transmitted, 3 received/)
  })
  assert.is(psd.summary.packets, 8)
  assert.is(psd.summary.accepted, 8)
  assert.is(psd.summary.faults, 0)
  const lines = psd.scriptLines().map((o) => o.msg).filter((m: string) => m.startsWith('fam='))
  assert.is(lines.length, 8)
  const f = Object.fromEntries(lines[0].split(' ').map((kv: string) => kv.split('=')))
  assert.is(f.fam, '4')
  assert.is(f.hook, 'input')
  assert.is(f.in, p.devB, 'indev is the name of the receiving interface')
  assert.is(f.out, 'nil')
  assert.is(f.q, '0')
  assert.is(f.mark, '0')
  assert.is(f.uid, 'nil')
  assert.is(f.len, '84')
  assert.is(f.origlen, '84')
  assert.ok(Math.abs(Number(f.time) / 1e6 - Date.now()) < 60_000, `pkt.time ${f.time} is the kernel's time, in ns`)
  assert.ok(lines[7].startsWith('fam=6 hook=input'), lines[7])
  assert.ok(ifindex(p.b, p.devB) > 1)
}))

live('the output hook: outdev, and the socket owner uid/gid', () => withPair('uid', async (p) => {
  nsRun(p.a, 'iptables', ['-A', 'OUTPUT', '-p', 'udp', '--dport', '9999', '-j', 'NFQUEUE', '--queue-num', '2'])
  const meta = script(dir, 'meta-out.lua', `
function on_packet(pkt)
  print(string.format("hook=%s in=%s out=%s uid=%s gid=%s q=%d", tostring(pkt.hook), tostring(pkt.indev),
    tostring(pkt.outdev), tostring(pkt.uid), tostring(pkt.gid), pkt.queue))
  return ACCEPT
end
`)
  const rx = udpReceiver(p.b, p.addrB, 9999, 700)
  try {
    await rx.waitFor((o) => o.event === 'ready')
    const psd = await withPsd(p.a, ['--script', meta, '--queue', '2'], async () => {
      const bin = buildC(ROOT, 'bench/udp-flood.c')
      run('ip', ['netns', 'exec', p.a, 'setpriv', '--reuid=65534', '--regid=65534', '--clear-groups', bin,
        '-d', `${p.addrB}:9999`, '-n', '20', '-r', '2000'], 20_000)
      const got = await rx.waitFor((o) => o.event === 'done', 15_000)
      assert.is(got.total, 20)
    })
    const lines = psd.scriptLines().map((o) => o.msg)
    assert.is(lines.length, 20)
    assert.is(lines[0], `hook=output in=nil out=${p.devA} uid=65534 gid=65534 q=2`)
  } finally {
    rx.kill()
    await rx.exited
  }
}))

live('UDP: the script drops the datagrams whose payload starts with X (exact counts at the receiver)', () => withPair('dropx', async (p) => {
  nsRun(p.b, 'iptables', ['-A', 'INPUT', '-p', 'udp', '--dport', '9999', '-j', 'NFQUEUE', '--queue-num', '0'])
  const rx = udpReceiver(p.b, p.addrB, 9999, 1000)
  try {
    await rx.waitFor((o) => o.event === 'ready')
    const psd = await withPsd(p.b, ['--script', DROP_X], async () => {
      const s = flood(p, ['-n', '2000', '-x', '10', '-r', '20000'])
      assert.is(s.sent, 2000)
      const got = await rx.waitFor((o) => o.event === 'done', 20_000)
      assert.is(got.total, 1800)
      assert.is(got.first.X, undefined)
      assert.is(got.first.A, 1800)
      assert.is(got.rcvbufErrors, 0)
    })
    assert.equal([psd.summary.packets, psd.summary.accepted, psd.summary.dropped, psd.summary.faults], [2000, 1800, 200, 0])
    const q = psd.queueStats()[0]
    assert.is(q.nl_errors, 0, 'the kernel took every verdict')
    assert.is(q.queue_dropped + q.user_dropped, 0)
    assert.is(q.settled, 0)
  } finally {
    rx.kill()
    await rx.exited
  }
}))

live('TCP: curl through a script that edits every segment; the receiver sees the edit and good checksums', () => withPair('tcp', async (p) => {
  if (!hasTshark()) throw new Error('tshark is needed (Debian: tshark)')
  const curlOk = run('sh', ['-c', 'command -v curl || true']).trim()
  if (!curlOk) throw new Error('curl is needed')
  // The HTTP server is in a; curl in b. psd sits at b's mangle/INPUT and edits every segment from
  // the server: IP dsfield 0x20, and "X-Psd: original" -> "X-Psd: replaced" in the header. An
  // NFLOG rule in filter/INPUT (after psd) shows tshark the packets as b's TCP receives them.
  const bytes = 4 << 20
  const server = new Proc('ip', ['netns', 'exec', p.a, process.execPath, '-e', `
    const body = Buffer.alloc(${bytes}, 97)
    require('node:http').createServer((q, r) => { r.writeHead(200, { 'X-Psd': 'original', 'Content-Length': body.length }); r.end(body) })
      .listen(8080, '${p.addrA}', () => console.log(JSON.stringify({ event: 'ready' })))
    setTimeout(() => process.exit(0), 40000)`], 45_000)
  const edit = script(dir, 'edit.lua', `
function on_packet(pkt)
  local tcp = pkt.tcp
  if tcp and tcp.srcport == 8080 then
    pkt.ip.dsfield = 0x20
    local at = pkt:find("X-Psd: original")
    if at then pkt:write(at + 7, "replaced") end
  end
  return ACCEPT
end
`)
  nsRun(p.b, 'iptables', ['-t', 'mangle', '-A', 'INPUT', '-p', 'tcp', '--sport', '8080', '-j', 'NFQUEUE', '--queue-num', '0'])
  nsRun(p.b, 'iptables', ['-A', 'INPUT', '-p', 'tcp', '--sport', '8080', '-j', 'NFLOG', '--nflog-group', '7'])
  const cap = join(dir, 'tcp.pcapng'), body = join(dir, 'body.bin'), hdrs = join(dir, 'hdrs.txt')
  const ts = new Proc('ip', ['netns', 'exec', p.b, 'tshark', '-q', '-i', 'nflog:7', '-w', cap], 60_000)
  try {
    await server.waitFor((o) => o.event === 'ready')
    const psd = await withPsd(p.b, ['--script', edit], async () => {
      // tshark says nothing on stdout when it starts: wait for the file it writes
      for (let i = 0; i < 100 && !existsSync(cap); i++) await sleep(100)
      await sleep(300)
      run('ip', ['netns', 'exec', p.b, 'curl', '-sS', '--max-time', '20', '-D', hdrs, '-o', body, `http://${p.addrA}:8080/`], 30_000)
      await sleep(500)
    })
    ts.kill('SIGINT')
    await ts.exited
    assert.is(statSync(body).size, bytes, 'the whole body arrived')
    assert.ok(readFileSync(body).every((b) => b === 97), 'and it is intact')
    assert.match(readFileSync(hdrs, 'utf8'), /^X-Psd: replaced\r?$/m)
    const q = psd.queueStats()[0]
    assert.ok(q.modified > 0 && q.modified === q.packets, `every segment was edited (${q.modified}/${q.packets})`)
    assert.is(q.edits_dropped, 0)
    assert.ok(q.gso > 0, `GSO super-packets came through the queue (${q.gso})`)
    assert.ok(q.csum_partial > 0, `packets with checksums not ready came through (${q.csum_partial})`)
    const rows = tsharkFields(cap, ['ip.dsfield', 'ip.checksum.status', 'tcp.checksum.status', 'tcp.len'],
      ['-o', 'tcp.check_checksum:TRUE', '-o', 'ip.check_checksum:TRUE', '-Y', 'tcp.srcport == 8080'])
    assert.ok(rows.length >= q.packets - 5 && rows.length > 10, `tshark saw ${rows.length} of ${q.packets} segments`)
    const big = rows.filter((r) => Number(r[3]) > 1500).length
    assert.ok(big > 0, 'segments larger than the MTU (GSO) were edited and checked')
    for (const r of rows) {
      assert.is(r[0], '0x20', 'the edited dsfield')
      assert.is(r[1], '1', 'IP header checksum good')
      assert.is(r[2], '1', 'TCP checksum good')
    }
    const hit = tsharkFields(cap, ['frame.number'], ['-Y', 'frame contains "X-Psd: replaced"'])
    assert.is(hit.length, 1, 'the header edit is in the packet the receiver got')
  } finally {
    ts.kill('SIGKILL')
    server.kill()
    await Promise.all([server.exited, ts.exited])
  }
}))

live('a mark set by the script is matched by a later iptables rule', () => withPair('mark', async (p) => {
  // The queue is in mangle/INPUT; filter/INPUT accepts mark 0x20 and drops the rest.
  nsRun(p.b, 'iptables', ['-t', 'mangle', '-A', 'INPUT', '-p', 'udp', '--dport', '9999', '-j', 'NFQUEUE', '--queue-num', '0'])
  nsRun(p.b, 'iptables', ['-A', 'INPUT', '-p', 'udp', '--dport', '9999', '-m', 'mark', '--mark', '0x20', '-j', 'ACCEPT'])
  nsRun(p.b, 'iptables', ['-A', 'INPUT', '-p', 'udp', '--dport', '9999', '-j', 'DROP'])
  const marker = script(dir, 'mark.lua', `
function on_packet(pkt)
  if pkt.udp.payload:sub(1, 1) == "X" then
    pkt.mark = 0x21          -- written as a field
    return ACCEPT
  end
  return ACCEPT, 0x20        -- returned with the verdict
end
`)
  const rx = udpReceiver(p.b, p.addrB, 9999, 800)
  try {
    await rx.waitFor((o) => o.event === 'ready')
    const psd = await withPsd(p.b, ['--script', marker], async () => {
      flood(p, ['-n', '500', '-x', '5', '-r', '10000'])
      const got = await rx.waitFor((o) => o.event === 'done', 20_000)
      assert.is(got.total, 400)
      assert.is(got.first.X, undefined)
    })
    assert.is(psd.summary.packets, 500)
    assert.is(ruleCount(p.b, 'filter', 'INPUT', 'mark match 0x20'), 400)
    assert.is(ruleCount(p.b, 'filter', 'INPUT', 'DROP'), 100)
  } finally {
    rx.kill()
    await rx.exited
  }
}))

live('two queues with --queue-balance 0:1 and psd --queues 0-1: one worker each, nothing lost', () => withPair('balance', async (p) => {
  nsRun(p.b, 'iptables', ['-A', 'INPUT', '-p', 'udp', '--dport', '9999', '-j', 'NFQUEUE', '--queue-balance', '0:1'])
  const sources = extraSources(p, 8)
  const per = 150
  const rx = udpReceiver(p.b, p.addrB, 9999, 1000)
  try {
    await rx.waitFor((o) => o.event === 'ready')
    const psd = await withPsd(p.b, ['--script', DROP_X, '--queues', '0-1'], async () => {
      // The balance hashes the address pair: several sources spread over both queues.
      const js = `
        const dgram = require('node:dgram'); const srcs = ${JSON.stringify(sources)}; let left = srcs.length
        for (const s of srcs) {
          const k = dgram.createSocket('udp4'); let i = 0
          k.bind(0, s, () => { const t = setInterval(() => {
            k.send(Buffer.from((i % 10 === 0 ? 'X' : 'A') + ' ' + s + ' ' + i), 9999, '${p.addrB}')
            if (++i === ${per}) { clearInterval(t); setTimeout(() => { k.close(); if (--left === 0) process.exit(0) }, 50) } }, 1) })
        }
        setTimeout(() => process.exit(2), 20000)`
      run('ip', ['netns', 'exec', p.a, process.execPath, '-e', js], 30_000)
      const got = await rx.waitFor((o) => o.event === 'done', 20_000)
      assert.is(got.total, sources.length * per * 0.9)
      assert.is(got.first.X, undefined)
    })
    const qs = psd.queueStats()
    assert.equal(qs.map((q) => q.queue).sort(), [0, 1])
    for (const q of qs) assert.ok(q.packets > 0, `queue ${q.queue} got packets (${q.packets})`)
    assert.is(qs[0].packets + qs[1].packets, sources.length * per)
    assert.is(psd.summary.dropped, sources.length * per * 0.1)
  } finally {
    rx.kill()
    await rx.exited
  }
}))

live('--config: two tenants, each on its own queue with its own script', () => withPair('tenants', async (p) => {
  nsRun(p.b, 'iptables', ['-A', 'INPUT', '-p', 'udp', '--dport', '9999', '-j', 'NFQUEUE', '--queue-num', '4'])
  nsRun(p.b, 'iptables', ['-A', 'INPUT', '-p', 'icmp', '-j', 'NFQUEUE', '--queue-num', '5'])
  const dropAll = script(dir, 'drop-all.lua', 'function on_packet(pkt) return DROP end\n')
  const cfg = join(dir, 'tenants.json')
  writeFileSync(cfg, JSON.stringify({ tenants: [
    { name: 'udp', script: DROP_X, queue: 4 },
    { name: 'icmp', script: dropAll, queue: 5 },
  ] }))
  const rx = udpReceiver(p.b, p.addrB, 9999, 800)
  try {
    await rx.waitFor((o) => o.event === 'ready')
    const psd = await withPsd(p.b, ['--config', cfg], async () => {
      flood(p, ['-n', '300', '-x', '3', '-r', '10000'])
      const got = await rx.waitFor((o) => o.event === 'done', 20_000)
      assert.is(got.total, 200)
      const ping = run('sh', ['-c', `ip netns exec ${p.a} ping -c 2 -i 0.2 -W 1 ${p.addrB}; true`], 10_000)
      assert.match(ping, /2 packets transmitted, 0 received/)
    })
    const qs = Object.fromEntries(psd.queueStats().map((q) => [q.tenant, q]))
    assert.is(qs.udp.queue, 4)
    assert.equal([qs.udp.packets, qs.udp.dropped], [300, 100])
    assert.is(qs.icmp.queue, 5)
    assert.equal([qs.icmp.packets, qs.icmp.dropped], [2, 2])
  } finally {
    rx.kill()
    await rx.exited
  }
}))

test.run()
