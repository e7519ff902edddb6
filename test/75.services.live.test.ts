// Script services live, with real traffic in network namespaces made here (unique names, always
// deleted; addresses only inside them): timers fire while no packets flow; the Lua ICMP
// responder (scripts/icmp-responder.lua) answers ping for an address no interface holds; the
// reset injector (scripts/tcp-reset.lua) makes curl to a blocked host fail at once; sent packets
// carry the mark 0x5053; a tenant without permission cannot send (a clear error). Needs root;
// without it every test is skipped (and says so), except under CI=true, where they run and fail.
import { test } from 'uvu'
import * as assert from 'uvu/assert'
import { spawn, spawnSync, type ChildProcess } from 'node:child_process'
import { join } from 'node:path'
import { createPair, deletePair, liveUnavailable, nsRun, ruleCount, type Pair } from './lib/netns.js'
import { ROOT, PSD } from './lib/psd.js'
import { addonAvailable, loadAddon } from '../src/live/nfqueue.js'

const why = liveUnavailable(['ip', 'iptables', 'ip6tables', 'ping', 'curl'])
const CI = process.env.CI === 'true'
if (why && !CI) console.log(`SKIPPED: 75.services.live tests need root, iproute2, iptables, ip6tables, ping and curl: ${why}`)
const live = why && !CI ? test.skip : test
const NOT_ALLOWED = 'net.send: this tenant may not send (allow it with --allow-send or "send": true)'

/** psd in a namespace; its JSON log lines (stderr) collected as they come; killed after hardMs at the latest. */
class Psd {
  readonly child: ChildProcess
  readonly logs: any[] = []
  raw = ''
  private buf = ''
  closed = false
  readonly exited: Promise<void>
  constructor(ns: string, args: string[], hardMs = 60_000) {
    // a generous clock: these tests are about services, not budgets, and the machine may be busy
    this.child = spawn('ip', ['netns', 'exec', ns, process.execPath, PSD, ...args, '--timeout-ms', '2000'], { cwd: ROOT, stdio: ['ignore', 'ignore', 'pipe'] })
    this.child.stderr!.setEncoding('utf8').on('data', (s: string) => {
      this.raw += s
      this.buf += s
      let i
      while ((i = this.buf.indexOf('\n')) >= 0) {
        const line = this.buf.slice(0, i)
        this.buf = this.buf.slice(i + 1)
        try { this.logs.push(JSON.parse(line)) } catch { this.logs.push({ raw: line }) }
      }
    })
    const kill = setTimeout(() => this.child.kill('SIGKILL'), hardMs)
    this.exited = new Promise((res) => this.child.on('close', () => { clearTimeout(kill); this.closed = true; res() }))
  }

  async waitFor(pred: (o: any) => boolean, timeoutMs = 20_000): Promise<any> {
    const deadline = Date.now() + timeoutMs
    for (;;) {
      const hit = this.logs.find(pred)
      if (hit) return hit
      if (this.closed) throw new Error(`psd ended without the expected line; log:\n${this.raw}`)
      if (Date.now() > deadline) throw new Error(`timed out waiting for a psd log line; log:\n${this.raw}`)
      await new Promise((r) => setTimeout(r, 50))
    }
  }

  ready(): Promise<any> { return this.waitFor((o) => o.msg === 'ready') }

  async stop(): Promise<void> {
    if (!this.closed) this.child.kill('SIGTERM')
    const t = setTimeout(() => this.child.kill('SIGKILL'), 10_000)
    await this.exited
    clearTimeout(t)
  }
}

async function withPair(tag: string, fn: (p: Pair) => Promise<void>): Promise<void> {
  if (why) throw new Error(`cannot run the live script-services tests: ${why}`)
  if (!addonAvailable()) loadAddon() // throws the explanation
  const p = createPair(tag)
  try {
    await fn(p)
  } finally {
    deletePair(p)
  }
}

const script = (name: string) => join(ROOT, 'scripts', name)
const scriptLines = (psd: Psd, re: RegExp) => psd.logs.filter((l) => l.source === 'script' && re.test(l.msg))

live('a timer fires while no packets flow (scripts/rate-meter.lua logs zeros every second)', async () => {
  await withPair('svct', async (p) => {
    nsRun(p.b, 'iptables', ['-A', 'INPUT', '-p', 'udp', '--dport', '9999', '-j', 'NFQUEUE', '--queue-num', '0'])
    const psd = new Psd(p.b, ['--script', script('rate-meter.lua')])
    try {
      await psd.ready()
      const started = Date.now()
      await psd.waitFor(() => scriptLines(psd, /^rate: 0 packets\/s, 0 bytes\/s$/).length >= 3, 15_000)
      const elapsed = Date.now() - started
      assert.ok(elapsed >= 1500 && elapsed < 10_000, `three one-second ticks took ${elapsed} ms`)
      assert.is(ruleCount(p.b, 'filter', 'INPUT', 'NFQUEUE'), 0, 'no packet went through the queue')
    } finally {
      await psd.stop()
    }
  })
})

live('the Lua ICMP responder answers ping from the peer namespace for an address no interface holds; its replies carry the mark', async () => {
  await withPair('svci', async (p) => {
    nsRun(p.a, 'ip', ['route', 'add', '192.0.2.10/32', 'via', p.addrB])
    nsRun(p.b, 'iptables', ['-t', 'raw', '-A', 'PREROUTING', '-d', '192.0.2.10', '-p', 'icmp', '-j', 'NFQUEUE', '--queue-num', '0'])
    nsRun(p.b, 'iptables', ['-A', 'OUTPUT', '-m', 'mark', '--mark', '0x5053', '-j', 'ACCEPT'])
    for (const ns of [p.a, p.b]) assert.not.match(nsRun(ns, 'ip', ['-4', 'addr']), /192\.0\.2\.10/)
    const psd = new Psd(p.b, ['--script', script('icmp-responder.lua'), '--allow-send'])
    try {
      await psd.ready()
      const r = spawnSync('ip', ['netns', 'exec', p.a, 'ping', '-n', '-c', '3', '-i', '0.3', '-W', '3', '192.0.2.10'], { encoding: 'utf8', timeout: 30_000 })
      assert.is(r.status, 0, `ping failed: ${r.stdout}${r.stderr}\npsd log:\n${psd.raw}`)
      assert.match(r.stdout, /3 packets transmitted, 3 received/)
      assert.match(r.stdout, /from 192\.0\.2\.10/)
      assert.ok(ruleCount(p.b, 'filter', 'OUTPUT', 'mark match 0x5053') >= 3, 'the replies left with mark 0x5053')
      assert.is(ruleCount(p.b, 'raw', 'PREROUTING', 'NFQUEUE'), 3)
    } finally {
      await psd.stop()
    }
  })
})

live('the responder answers ping over IPv6 too (ICMPv6, raw IPv6 socket)', async () => {
  await withPair('svc6', async (p) => {
    nsRun(p.a, 'ip', ['addr', 'add', 'fd00:5053::1/64', 'dev', p.devA, 'nodad'])
    nsRun(p.b, 'ip', ['addr', 'add', 'fd00:5053::2/64', 'dev', p.devB, 'nodad'])
    nsRun(p.a, 'ip', ['-6', 'route', 'add', '2001:db8::10/128', 'via', 'fd00:5053::2'])
    nsRun(p.b, 'ip6tables', ['-t', 'raw', '-A', 'PREROUTING', '-d', '2001:db8::10', '-p', 'icmpv6', '-j', 'NFQUEUE', '--queue-num', '0'])
    const psd = new Psd(p.b, ['--script', script('icmp-responder.lua'), '--allow-send'])
    try {
      await psd.ready()
      const r = spawnSync('ip', ['netns', 'exec', p.a, 'ping', '-6', '-n', '-c', '2', '-i', '0.3', '-W', '3', '2001:db8::10'], { encoding: 'utf8', timeout: 30_000 })
      assert.is(r.status, 0, `ping -6 failed: ${r.stdout}${r.stderr}\npsd log:\n${psd.raw}`)
      assert.match(r.stdout, /2 packets transmitted, 2 received/)
    } finally {
      await psd.stop()
    }
  })
})

live('the reset injector makes curl to the blocked host fail at once ("connection refused")', async () => {
  await withPair('svcr', async (p) => {
    // 192.0.2.80 is routed to the peer, which neither holds it nor forwards: without psd the
    // SYN would vanish and curl would wait for its whole connect timeout
    nsRun(p.a, 'ip', ['route', 'add', '192.0.2.80/32', 'via', p.addrB])
    nsRun(p.a, 'iptables', ['-A', 'OUTPUT', '-p', 'tcp', '-d', '192.0.2.80', '-m', 'mark', '!', '--mark', '0x5053', '-j', 'NFQUEUE', '--queue-num', '0'])
    const psd = new Psd(p.a, ['--script', script('tcp-reset.lua'), '--allow-send'])
    try {
      await psd.ready()
      const t0 = Date.now()
      const r = spawnSync('ip', ['netns', 'exec', p.a, 'curl', '-sS', '--connect-timeout', '15', 'http://192.0.2.80:8080/'], { encoding: 'utf8', timeout: 30_000 })
      const ms = Date.now() - t0
      assert.is(r.status, 7, `curl exit status 7 (could not connect): ${r.stderr}\npsd log:\n${psd.raw}`)
      assert.match(r.stderr, /Connection refused|Couldn't connect/i)
      assert.ok(ms < 5000, `curl failed after ${ms} ms, not at once`)
    } finally {
      await psd.stop()
    }
  })
})

live('a tenant without permission cannot send: the packet gets the fault verdict and the log says why', async () => {
  await withPair('svcn', async (p) => {
    nsRun(p.a, 'ip', ['route', 'add', '192.0.2.10/32', 'via', p.addrB])
    nsRun(p.b, 'iptables', ['-t', 'raw', '-A', 'PREROUTING', '-d', '192.0.2.10', '-p', 'icmp', '-j', 'NFQUEUE', '--queue-num', '0'])
    nsRun(p.b, 'iptables', ['-A', 'OUTPUT', '-m', 'mark', '--mark', '0x5053', '-j', 'ACCEPT'])
    const psd = new Psd(p.b, ['--script', script('icmp-responder.lua')])
    try {
      await psd.ready()
      const r = spawnSync('ip', ['netns', 'exec', p.a, 'ping', '-n', '-c', '1', '-W', '1', '192.0.2.10'], { encoding: 'utf8', timeout: 20_000 })
      assert.is.not(r.status, 0, 'no reply')
      const err = await psd.waitFor((l) => l.fault === 'error', 10_000)
      assert.ok(err.msg.endsWith(NOT_ALLOWED), err.msg)
      assert.match(err.msg, /icmp-responder\.lua:\d+: /)
      assert.is(ruleCount(p.b, 'filter', 'OUTPUT', 'mark match 0x5053'), 0, 'nothing was sent')
    } finally {
      await psd.stop()
    }
  })
})

test.run()
