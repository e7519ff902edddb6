// The live loop without a kernel: QueueWorker (src/live/run.ts) over a fake NfQueue that hands
// out records and keeps the verdicts, with real tenants (the VM and real scripts) or fake ones
// that fail. Runs anywhere, no root: the rules about verdicts, edits and shutdown are checked
// here exactly; the 51.live.traffic/lifecycle tests check them again with the kernel.
import { test } from 'uvu'
import * as assert from 'uvu/assert'
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { QueueWorker, type LiveTenant } from '../src/live/run.js'
import { NfQueueError, NF_ACCEPT, NF_DROP, RV, RV_SHOWN, type VerdictBatch } from '../src/live/nfqueue.js'
import { Tenant, BatchOutput } from '../src/engine/tenant.js'
import { writeRecord, HDR, OFF, type PacketMeta } from '../src/batch-format.js'
import { verify } from '../src/packet/checksum.js'
import { queuesInRules, suggestedRule } from '../src/live/rules.js'
import { InterfaceNames } from '../src/live/ifname.js'
import { DEFAULTS, type TenantConfig } from '../src/config.js'
import { ipv4, tcp, udp } from './lib/packets.js'

const dir = mkdtempSync(join(tmpdir(), 'psd-51w-'))
process.on('exit', () => rmSync(dir, { recursive: true, force: true }))

interface Given { id: number; code: number; mark: number | null; payload: Uint8Array | null }

/** Stands in for NfQueue: packets pushed here are received as records; verdicts are kept. */
class FakeQueue {
  queue = 0
  maxRecord = HDR + 65536
  closed = false
  lastBytes = 0
  waiting: { data: Uint8Array; meta: PacketMeta }[] = []
  held = new Set<number>()
  given: Given[] = []
  settles: number[] = []
  verdictCalls = 0
  failVerdicts = 0
  nextId = 1
  cb: (() => void) | null = null

  get outstanding(): number { return this.held.size }
  /** the real queue: messages read from the socket but not yet delivered (never here: no buffer limit) */
  get pending(): boolean { return false }
  onReadable(cb: (() => void) | null): void { this.cb = cb }

  push(data: Uint8Array, meta: Partial<PacketMeta> = {}): number {
    const id = this.nextId++
    this.waiting.push({ data, meta: { id, origlen: data.length, sec: 1, nsec: 0, family: 4, hook: 2, queue: 0, ...meta } })
    return id
  }

  receive(buf: Uint8Array, max: number, ids?: Float64Array): number {
    const view = new DataView(buf.buffer, buf.byteOffset, buf.byteLength)
    let n = 0, pos = 0
    while (n < max && this.waiting.length && pos + HDR + this.waiting[0].data.length + 4 <= buf.length) {
      const p = this.waiting.shift()!
      pos = writeRecord(buf, view, pos, p.data, p.meta)
      this.held.add(p.meta.id)
      if (ids) ids[n] = p.meta.id
      n++
    }
    this.lastBytes = pos
    return n
  }

  verdicts(b: VerdictBatch): void {
    this.verdictCalls++
    if (this.failVerdicts > 0) {
      this.failVerdicts--
      throw new NfQueueError('queue 0: sending verdicts failed: No buffer space available (ENOBUFS)', 'ENOBUFS', 105, 0)
    }
    for (let i = 0; i < b.count; i++) {
      const m = b.marks ? b.marks[i] : -1
      const len = b.payload ? b.payload.lengths[i] : 0
      this.given.push({
        id: b.ids[i], code: b.codes[i], mark: m >= 0 && m <= 0xffffffff && m !== 0xffffffff ? m : null,
        payload: len ? b.payload!.data.slice(b.payload!.offsets[i], b.payload!.offsets[i] + len) : null,
      })
      this.held.delete(b.ids[i])
    }
  }

  /** NfQueue.verdictRecords: the ids and flags from the records, codes checked, then verdicts(). */
  verdictRecords(records: Uint8Array, count: number, verdict: Int32Array, mark: Float64Array, fault: Uint8Array,
    faultCode: number, counts: Float64Array): void {
    const view = new DataView(records.buffer, records.byteOffset, records.byteLength)
    const ids = new Uint32Array(count), codes = new Uint32Array(count), marks = new Float64Array(count)
    counts.fill(0)
    for (let k = 0, pos = 0; k < count; k++) {
      ids[k] = view.getUint32(pos + OFF.id, true)
      const flags = records[pos + OFF.flags]
      if (flags & 1) counts[RV.gso]++
      if (flags & 2) counts[RV.csumPartial]++
      let code = verdict[k] >>> 0, m = mark[k]
      if (!(code === NF_ACCEPT || code === NF_DROP || code === 4 || (code & 0xffff) === 3)) {
        if (counts[RV.invalid] < RV_SHOWN) {
          counts[RV.shown + 2 * counts[RV.invalid]] = ids[k]
          counts[RV.shown + 2 * counts[RV.invalid] + 1] = code
        }
        counts[RV.invalid]++
        code = faultCode
        m = -1
      }
      if (fault[k]) counts[RV.faults]++
      counts[code === NF_ACCEPT ? RV.accepted : code === NF_DROP ? RV.dropped : RV.other]++
      codes[k] = code
      marks[k] = m
      pos += view.getUint32(pos + OFF.reclen, true)
    }
    this.verdicts({ count, ids, codes, marks, payload: null })
  }

  settleAll(code: number): void {
    this.settles.push(code)
    for (const p of this.waiting) this.held.add(p.meta.id)
    this.waiting = []
    for (const id of this.held) this.given.push({ id, code, mark: null, payload: null })
    this.held.clear()
  }

  kernelCounters() {
    return { queue: 0, portid: 1, waiting: this.held.size + this.waiting.length, copyMode: 2, copyRange: 65531, queueDropped: 0, userDropped: 0, idSequence: this.nextId - 1 }
  }

  stats() { return { packets: 0, recvCalls: 0, sendCalls: 0, batchMsgs: 0, nlErrors: 0, enobufs: 0 } }

  close(o: { settle?: number } = {}): void {
    if (o.settle !== undefined) this.settleAll(o.settle)
    this.closed = true
    this.cb = null
  }
}

/** A Logger stand-in that keeps the lines. */
function fakeLog() {
  const lines: { level: string; msg: string; f?: Record<string, unknown> }[] = []
  const l: any = {
    lines,
    log: (level: string, msg: string, f?: Record<string, unknown>) => lines.push({ level, msg, f }),
    child: () => l,
  }
  for (const level of ['debug', 'info', 'warn', 'error']) l[level] = (msg: string, f?: Record<string, unknown>) => lines.push({ level, msg, f })
  return l
}

function cfg(source: string, over: Partial<TenantConfig> = {}): TenantConfig {
  const p = join(dir, `s${Math.random().toString(36).slice(2)}.lua`)
  writeFileSync(p, source)
  return { name: 't', script: p, queues: [0], fuel: DEFAULTS.fuel, memory: DEFAULTS.memory, timeoutMs: 1000, onFault: 'accept', send: false, workers: 1, ...over }
}

async function worker(source: string | LiveTenant, over: Partial<TenantConfig> = {}, batch = 64) {
  const log = fakeLog()
  const c = cfg(typeof source === 'string' ? source : 'function on_packet() end', over)
  const tenant = typeof source === 'string' ? await Tenant.start(c, log, 'real') : source
  const q = new FakeQueue()
  const fatal: Error[] = []
  const w = new QueueWorker('t', c, q as any, tenant, log, batch, (e) => fatal.push(e))
  w.start()
  return { w, q, log, fatal }
}

async function until(cond: () => boolean, ms = 5000): Promise<void> {
  const end = Date.now() + ms
  while (!cond()) {
    if (Date.now() > end) throw new Error('timed out')
    await new Promise((r) => setTimeout(r, 5))
  }
}

const udpPkt = (payload: string, dport = 9999) => ipv4({ src: '10.0.0.1', dst: '10.0.0.2' }, udp({ dport, payload }))

test('every packet gets exactly one verdict, batch after batch, in order', async () => {
  const { w, q, fatal } = await worker(`
    function on_packet(pkt) if pkt.udp.payload:sub(1, 1) == "X" then return DROP end end`, {}, 16)
  const ids: number[] = []
  // A backed-up queue: each VM batch takes 16 receives of 16 (256 packets), so 18 batches; the
  // loop lets the event loop in after 16 and goes on by itself (one wake-up only)
  for (let i = 0; i < 4500; i++) ids.push(q.push(udpPkt(i % 10 === 0 ? 'X' : 'A')))
  q.cb!()
  await until(() => w.counts.packets === 4500)
  assert.equal(q.given.map((g) => g.id), ids)
  assert.is(q.given.filter((g) => g.code === NF_DROP).length, 450)
  assert.is(q.given.filter((g) => g.code === NF_ACCEPT).length, 4050)
  assert.ok(q.given.every((g) => g.mark === null && g.payload === null))
  assert.is(w.counts.batches, 18)
  // not backed up: a short receive ends the batch (16 + 16 + 5 in one, then 3 on their own)
  for (let i = 0; i < 37; i++) q.push(udpPkt('A'))
  q.cb!()
  await until(() => w.counts.packets === 4537)
  assert.is(w.counts.batches, 19)
  for (let i = 0; i < 3; i++) q.push(udpPkt('A'))
  q.cb!()
  await until(() => w.counts.packets === 4540)
  assert.is(w.counts.batches, 20)
  assert.is(q.outstanding, 0)
  assert.equal(fatal, [])
  await w.stop(100)
  assert.ok(q.closed)
})

test('edits go back with lengths and checksums fixed; a checksum-not-ready packet gets a full checksum', async () => {
  const { w, q } = await worker(`
    function on_packet(pkt)
      if pkt.tcp.dstport == 80 then pkt.ip.ttl = 9; pkt:insert(40, "ab") end
      if pkt.tcp.dstport == 81 then pkt:set_u8(8, pkt:u8(8)) end  -- writes, changes nothing
      return ACCEPT, 5
    end`)
  const a = ipv4({ src: '10.0.0.1', dst: '10.0.0.2' }, tcp({ dport: 80, flags: 'PA', payload: 'hello' }))
  // As the kernel hands it with CHECKSUM_PARTIAL: the TCP checksum field holds the pseudo-header sum only.
  a[36] = 0x12; a[37] = 0x34
  const b = ipv4({ src: '10.0.0.1', dst: '10.0.0.2' }, tcp({ dport: 81, payload: 'same' }))
  q.push(a, { flags: 3 })
  q.push(b)
  q.cb!()
  await until(() => w.counts.packets === 2)
  const [ga, gb] = q.given
  assert.is(ga.code, NF_ACCEPT)
  assert.is(ga.mark, 5)
  assert.ok(ga.payload)
  assert.is(ga.payload!.length, a.length + 2)
  assert.is(ga.payload![8], 9)
  const st = verify(ga.payload!)
  assert.ok(st.ok && st.tcp === true && st.ip === true && st.lengths === true, JSON.stringify(st))
  assert.is(gb.payload, null, 'bytes the script left as they were are not sent back')
  assert.is(gb.mark, 5)
  assert.equal([w.counts.modified, w.counts.gso, w.counts.csumPartial], [1, 1, 1])
  await w.stop(100)
})

test('a record that holds less than the packet keeps its verdict; its edit is dropped and logged', async () => {
  const { w, q, log } = await worker('function on_packet(pkt) pkt.ip.ttl = 1; return ACCEPT, 7 end')
  const full = udpPkt('x'.repeat(1400))
  const id = q.push(full.subarray(0, 100), { origlen: full.length })
  q.cb!()
  await until(() => w.counts.packets === 1)
  assert.equal(q.given, [{ id, code: NF_ACCEPT, mark: 7, payload: null }])
  assert.is(w.counts.editsDropped, 1)
  const line = log.lines.find((l: any) => l.level === 'warn')
  assert.match(line.msg, `packet ${id}: the script's edit was not applied: psd holds only 100 of the packet's 1428 bytes`)
  await w.stop(100)
})

test('script faults get the fault verdict; the rest of the batch runs on', async () => {
  const { w, q } = await worker(`
    function on_packet(pkt)
      local c = pkt.udp.payload:sub(1, 1)
      if c == "E" then error("bad") end
      if c == "L" then while true do end end
      return DROP
    end`, { onFault: 'accept', fuel: 10000 })
  for (const c of 'AELAE') q.push(udpPkt(c))
  q.cb!()
  await until(() => w.counts.packets === 5)
  assert.equal(q.given.map((g) => g.code), [NF_DROP, NF_ACCEPT, NF_ACCEPT, NF_DROP, NF_ACCEPT])
  assert.is(w.counts.faults, 3)
  await w.stop(100)
})

function failing(): LiveTenant & { stopped: boolean } {
  return {
    stopped: false,
    stats: new Map(),
    run: async () => { throw new Error('the VM worker died') },
    stop() { this.stopped = true },
  }
}

test('a run that throws (the VM is gone) gives its whole batch the fault verdict', async () => {
  const t = failing()
  const { w, q, log } = await worker(t, { onFault: 'drop' })
  for (let i = 0; i < 10; i++) q.push(udpPkt('A'))
  q.cb!()
  await until(() => w.counts.packets === 10)
  assert.is(q.given.length, 10)
  assert.ok(q.given.every((g) => g.code === NF_DROP && g.payload === null && g.mark === null))
  assert.is(w.counts.faults, 10)
  assert.ok(log.lines.some((l: any) => l.level === 'error' && /could not run a batch: the VM worker died; its 10 packets get the fault verdict \(drop\)/.test(l.msg)))
  await w.stop(100)
  assert.ok(t.stopped)
})

test('verdicts the kernel refuses: everything waiting is settled with the fault verdict, and the loop goes on', async () => {
  const { w, q, fatal } = await worker('function on_packet() return DROP end', { onFault: 'accept' })
  q.failVerdicts = 1
  for (let i = 0; i < 5; i++) q.push(udpPkt('A'))
  q.cb!()
  await until(() => w.counts.packets === 5)
  assert.equal(q.settles, [NF_ACCEPT])
  assert.is(q.given.length, 5)
  assert.ok(q.given.every((g) => g.code === NF_ACCEPT))
  assert.is(w.counts.settled, 5)
  for (let i = 0; i < 3; i++) q.push(udpPkt('A'))
  q.cb!()
  await until(() => w.counts.packets === 8)
  assert.equal(q.given.slice(5).map((g) => g.code), [NF_DROP, NF_DROP, NF_DROP])
  assert.equal(fatal, [])
  await w.stop(100)
})

test('a bad verdict code never reaches the kernel', async () => {
  const t: LiveTenant = {
    stats: new Map(),
    run: async (_b: Uint8Array, n: number, out: BatchOutput) => { out.verdict.fill(7, 0, n); out.fault.fill(0, 0, n); out.mark.fill(-1, 0, n); out.data.fill(null, 0, n) },
    stop() {},
  }
  const { w, q } = await worker(t, { onFault: 'drop' })
  q.push(udpPkt('A'))
  q.cb!()
  await until(() => w.counts.packets === 1)
  assert.is(q.given[0].code, NF_DROP)
  await w.stop(100)
})

test('stop: what is queued runs through the script, then the rest is settled and the queue closed', async () => {
  const { w, q } = await worker('function on_packet(pkt) return DROP end', { onFault: 'accept' })
  for (let i = 0; i < 100; i++) q.push(udpPkt('A'))
  await w.stop(5000) // the poll never fired: everything is drained by stop
  assert.is(q.given.length, 100)
  assert.ok(q.given.every((g) => g.code === NF_DROP))
  assert.ok(q.closed)
  assert.is(w.counts.settled, 0)
})

test('stop with no time to drain: everything waiting gets the fault verdict', async () => {
  const { w, q } = await worker('function on_packet(pkt) return DROP end', { onFault: 'accept' })
  for (let i = 0; i < 30; i++) q.push(udpPkt('A'))
  q.cb!()
  await until(() => w.counts.packets === 30)
  for (let i = 0; i < 100; i++) q.push(udpPkt('A'))
  w.hurry()
  await w.stop(5000)
  assert.is(q.given.length, 130)
  assert.ok(q.given.slice(0, 30).every((g) => g.code === NF_DROP))
  assert.ok(q.given.slice(30).every((g) => g.code === NF_ACCEPT))
  assert.equal(q.settles, [NF_ACCEPT])
  assert.is(w.counts.settled, 100, 'counted from the kernel\'s ids: those the settle took')
})

test('rules: queues named by iptables-save, and the rule to suggest', () => {
  const text = [
    '*filter', ':INPUT ACCEPT [0:0]',
    '-A INPUT -p udp -j NFQUEUE --queue-num 3',
    '-A INPUT -j NFQUEUE --queue-balance 5:7 --queue-bypass',
    '-A FORWARD -j ACCEPT',
    '-A OUTPUT -j NFQUEUE',
    'COMMIT',
  ].join('\n')
  assert.equal([...queuesInRules(text)].sort((a, b) => a - b), [0, 3, 5, 6, 7])
  assert.is(suggestedRule([4]), 'iptables -A INPUT -j NFQUEUE --queue-num 4 --queue-bypass')
  assert.is(suggestedRule([2, 3]), 'iptables -A INPUT -j NFQUEUE --queue-balance 2:3 --queue-bypass')
})

test('interface names: read on a miss (at most once a second), re-read when old; only names this namespace has', () => {
  let now = 0
  let table: Record<string, number> = { lo: 1, eth0: 2, other: 9 }
  const names = new InterfaceNames({
    names: () => Object.keys(table),
    index: (n) => table[n],
    present: () => new Set(['lo', 'eth0', 'eth1']),
  }, () => now)
  assert.is(names.name(2), 'eth0')
  assert.is(names.name(1), 'lo')
  assert.is(names.reads, 1)
  assert.is(names.name(9), undefined, 'not in this namespace (/proc/self/net/dev)')
  assert.is(names.reads, 1, 'a miss within a second of the last read does not read again')
  table = { lo: 1, eth0: 2, eth1: 3 }
  now = 500
  assert.is(names.name(3), undefined)
  now = 1500
  assert.is(names.name(3), 'eth1')
  assert.is(names.reads, 2)
  table = { lo: 1, wan: 2, eth1: 3 }
  now = 5000
  assert.is(names.name(2), 'eth0', 'a hit is trusted for a while')
  now = 20_000
  assert.is(names.name(2), undefined, 'renamed: eth0 is gone, and wan is not in this namespace')
})

test.run()
