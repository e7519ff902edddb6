// The pcap/pcapng reader: link types, byte orders, timestamp resolutions, trimming, errors.
import { test } from 'uvu'
import * as assert from 'uvu/assert'
import { writeFileSync, readFileSync, readdirSync } from 'node:fs'
import { join } from 'node:path'
import { openCapture, CaptureError, MAX_CAPLEN } from '../src/pcap/reader.js'
import {
  ipv4, ipv6, tcp, udp, icmpEcho, icmp6Echo, ethernet, sll, sll2, loopback, arpFrame, concat,
  pcapBytes, pcapHeader, pcapRecord, pcapngBytes, pcapngSHB, pcapngIDB, pcapngPacket, tsUnits,
  mixedPackets, makeMixedCapture, CaptureWriter, LINK, type Rec, type NgInterface, type NgPacket,
} from './lib/packets.js'
import { tempDir, readAll, hasTshark, tsharkFields, tshark } from './lib/pcaptools.js'
import { writeFixtures, sampleRecords } from './fixtures/make.js'
import { verify } from '../src/packet/checksum.js'

const tmp = tempDir('psd-40-')
let fileNo = 0
function file(b: Uint8Array, ext = 'pcap'): string {
  const p = tmp.path(`f${++fileNo}.${ext}`)
  writeFileSync(p, b)
  return p
}

const eq = (a: Uint8Array | null, b: Uint8Array, msg?: string): void => {
  assert.ok(a, msg ?? 'data is null')
  assert.equal(Buffer.from(a!).toString('hex'), Buffer.from(b).toString('hex'), msg)
}

// A few IP packets of both families.
const P = [
  ipv4({ src: '10.0.0.1', dst: '10.0.0.2', id: 7, df: true }, tcp({ sport: 1234, dport: 80, flags: 'S', options: [{ kind: 'mss', value: 1460 }] })),
  ipv6({ src: '2001:db8::1', dst: '2001:db8::53' }, udp({ sport: 5353, dport: 53, payload: 'hello dns' })),
  ipv4({ src: '192.0.2.9', dst: '192.0.2.10' }, icmpEcho({ id: 3, seq: 4 })),
  ipv6({}, icmp6Echo({ reply: true, payload: 'x'.repeat(300) })),
  ipv4({}, tcp({ flags: 'A' })), // 40 bytes: padded in Ethernet
]
const TS: [number, number][] = [[1700000000, 1000], [1700000000, 999999000], [1700000001, 0], [4000000000, 123456000], [0, 5000]]
const recs = (wrap: (ip: Uint8Array) => Uint8Array): Rec[] => P.map((p, i) => ({ sec: TS[i][0], nsec: TS[i][1], data: wrap(p) }))

function checkAll(path: string, linktype: number, nano = false): void {
  const { records, error } = readAll(path)
  assert.is(error, null)
  assert.is(records.length, P.length)
  let off = 24
  records.forEach((r, i) => {
    assert.is(r.n, i + 1)
    assert.is(r.offset, off)
    off += 16 + r.caplen
    assert.is(r.sec, TS[i][0])
    assert.is(r.nsec, nano ? TS[i][1] : Math.floor(TS[i][1] / 1000) * 1000)
    eq(r.data, P[i], `record ${i + 1}`)
    assert.is(r.family, P[i][0] >> 4)
    assert.is(r.origlen, P[i].length)
    assert.is(r.linktype, linktype)
  })
}

const wrappers: [string, number, (ip: Uint8Array) => Uint8Array][] = [
  ['raw 101', LINK.RAW, (p) => p],
  ['raw 12', 12, (p) => p],
  ['raw 14', 14, (p) => p],
  ['ethernet', LINK.ETHERNET, (p) => ethernet(p)],
  ['ethernet + 802.1Q', LINK.ETHERNET, (p) => ethernet(p, { vlan: 42 })],
  ['ethernet + QinQ (802.1ad + 802.1Q)', LINK.ETHERNET, (p) => ethernet(p, { vlan: [100, 200] })],
  ['ethernet + FCS', LINK.ETHERNET, (p) => ethernet(p, { fcs: true })],
  ['linux SLL', LINK.LINUX_SLL, (p) => sll(p)],
  ['linux SLL2', LINK.LINUX_SLL2, (p) => sll2(p)],
  ['BSD loopback (LE AF)', LINK.NULL, (p) => loopback(p)],
  ['BSD loopback (BE AF)', LINK.NULL, (p) => loopback(p, { le: false })],
  ['OpenBSD loop 108', 108, (p) => loopback(p, { le: false })],
]

for (const [name, lt, wrap] of wrappers) {
  for (const le of [true, false]) {
    for (const nano of [false, true]) {
      test(`pcap ${name}, ${le ? 'LE' : 'BE'}, ${nano ? 'ns' : 'µs'}`, () => {
        checkAll(file(pcapBytes(recs(wrap), { linktype: lt, le, nano })), lt, nano)
      })
    }
  }
}

test('link types 228 (IPv4) and 229 (IPv6)', () => {
  const v4 = P.filter((p) => p[0] >> 4 === 4), v6 = P.filter((p) => p[0] >> 4 === 6)
  for (const [lt, ps] of [[228, v4], [229, v6]] as const) {
    const { records, error } = readAll(file(pcapBytes(ps.map((data) => ({ data })), { linktype: lt })))
    assert.is(error, null)
    assert.is(records.length, ps.length)
    records.forEach((r, i) => eq(r.data, ps[i]))
  }
})

test('Ethernet padding and trailing bytes are removed using the IP length', () => {
  const ack = P[4]
  assert.is(ack.length, 40)
  const frame = ethernet(ack)
  assert.is(frame.length, 60)
  const v6 = ipv6({}, tcp({ flags: 'A' })) // 60 bytes: 74-byte frame, no padding needed; add junk
  const junk = concat(ethernet(v6), Uint8Array.from([1, 2, 3, 4, 5, 6]))
  const { records } = readAll(file(pcapBytes([{ data: frame }, { data: junk }], { linktype: LINK.ETHERNET })))
  eq(records[0].data, ack)
  assert.is(records[0].origlen, 40)
  assert.is(records[0].caplen, 60)
  eq(records[1].data, v6)
  assert.is(records[1].origlen, 60)
})

test('a truncated capture record: data is what was captured, origlen the IP length on the wire', () => {
  const big = ipv4({}, udp({ payload: new Uint8Array(1000) })) // 1028 bytes
  const frame = ethernet(big)
  const cut = frame.subarray(0, 14 + 100)
  const cut2 = frame.subarray(0, 14 + 3) // not even the total length field
  const { records } = readAll(file(pcapBytes([
    { data: cut, origlen: frame.length }, { data: cut2, origlen: frame.length },
  ], { linktype: LINK.ETHERNET, snaplen: 114 })))
  eq(records[0].data, big.subarray(0, 100))
  assert.is(records[0].origlen, 1028)
  assert.is(records[0].family, 4)
  eq(records[1].data, big.subarray(0, 3))
  assert.is(records[1].origlen, 1028 + 14 - 14)
})

test('origlen: the IP header length when smaller; never below the data held', () => {
  const p = P[0]
  const { records } = readAll(file(pcapBytes([
    { data: ethernet(p), origlen: 1514 },          // claimed wire length too large: IP says less
    { data: p, origlen: 10 },                       // origlen below caplen: taken as caplen
  ], { linktype: LINK.ETHERNET })))
  assert.is(records[0].origlen, p.length)
  assert.is(records[1].data, null) // a raw packet in an Ethernet file is not IP
  const r2 = readAll(file(pcapBytes([{ data: p, origlen: 10 }]))).records
  assert.is(r2[0].origlen, p.length)
})

test('IPv4 total length 0 and IPv6 payload length 0 (TSO/jumbo captures) are not trimmed', () => {
  const a = ipv4({}, tcp({ payload: 'abc'.repeat(10) })) // long enough to need no Ethernet padding
  a[2] = 0; a[3] = 0
  const b = ipv6({}, udp({ payload: 'abc' }))
  b[4] = 0; b[5] = 0
  const { records } = readAll(file(pcapBytes([{ data: ethernet(a) }, { data: ethernet(b) }], { linktype: LINK.ETHERNET })))
  eq(records[0].data, a)
  eq(records[1].data, b)
  assert.is(records[0].origlen, a.length)
})

test('non-IP frames give data = null and family 0, and are still counted', () => {
  const frames = [
    arpFrame(),
    ethernet(P[0]),
    ethernet(new Uint8Array(46), { ethertype: 0x88cc }),           // LLDP
    ethernet(new Uint8Array(46), { ethertype: 0x0040 }),           // 802.3 length field
    ethernet(new Uint8Array(46), { ethertype: 0x0800 }),           // says IPv4, version nibble 0
    new Uint8Array(10),                                            // shorter than the header
    ethernet(P[1], { vlan: 5 }),
    ethernet(new Uint8Array(0), { pad: false }),                   // header only
  ]
  const { records, error } = readAll(file(pcapBytes(frames.map((data) => ({ data })), { linktype: LINK.ETHERNET })))
  assert.is(error, null)
  assert.equal(records.map((r) => r.n), [1, 2, 3, 4, 5, 6, 7, 8])
  assert.equal(records.map((r) => r.family), [0, 4, 0, 0, 0, 0, 6, 0])
  assert.equal(records.map((r) => r.data === null), [true, false, true, true, true, true, false, true])
  assert.is(records[0].origlen, 60)
  const sllArp = readAll(file(pcapBytes([{ data: sll(new Uint8Array(28), { protocol: 0x0806 }) }, { data: sll2(new Uint8Array(28), { protocol: 0x0806 }) }], { linktype: LINK.LINUX_SLL })))
  assert.is(sllArp.records[0].data, null)
  assert.is(sllArp.records[1].data, null) // an SLL2 frame read as SLL: protocol at 14 is not IP
  const unknownLink = readAll(file(pcapBytes([{ data: P[0] }], { linktype: 105 })))
  assert.is(unknownLink.records[0].data, null)
})

test('microsecond fractions >= 1e6 are carried into seconds', () => {
  const b = pcapBytes([{ sec: 10, nsec: 0, data: P[0] }])
  new DataView(b.buffer).setUint32(24 + 4, 2500000, true)
  const { records } = readAll(file(b))
  assert.is(records[0].sec, 12)
  assert.is(records[0].nsec, 500000000)
})

test('the FCS bits of the pcap link-type field are ignored', () => {
  const b = pcapBytes([{ data: ethernet(P[0], { fcs: true }) }], { linktype: LINK.ETHERNET })
  new DataView(b.buffer).setUint32(20, LINK.ETHERNET | 0x14000000, true) // F bit, FCS length 1 (x16 bits)
  const { records } = readAll(file(b))
  eq(records[0].data, P[0])
})

// ---- pcapng ----

function expectTs(sec: number, nsec: number, tsresol: number | undefined): [number, number] {
  const r = tsresol ?? 6
  const u = tsUnits(sec, nsec, r)
  if (r & 0x80) {
    const k = BigInt(r & 0x7f)
    return [Number(u >> k), Number(((u & ((1n << k) - 1n)) * 1000000000n) >> k)]
  }
  const per = 10n ** BigInt(r)
  const frac = u % per
  return [Number(u / per), Number(r <= 9 ? frac * 10n ** BigInt(9 - r) : frac / 10n ** BigInt(r - 9))]
}

for (const le of [true, false]) {
  test(`pcapng ${le ? 'LE' : 'BE'}: several interfaces, link types and if_tsresol values`, () => {
    const ifs: NgInterface[] = [
      { linktype: LINK.ETHERNET },                           // default µs
      { linktype: LINK.RAW, tsresol: 9 },                    // ns
      { linktype: LINK.LINUX_SLL, tsresol: 3, name: 'any' }, // ms
      { linktype: LINK.LINUX_SLL2, tsresol: 0x80 | 20 },     // 2^-20
      { linktype: LINK.NULL, tsresol: 0x80 | 0 },            // whole seconds
      { linktype: LINK.RAW, tsresol: 10 },                   // 100 ps (BigInt path)
      { linktype: LINK.IPV4, tsresol: 1 },                   // 1/10 s
    ]
    const wraps = [(p: Uint8Array) => ethernet(p, { vlan: 7 }), (p: Uint8Array) => p, (p: Uint8Array) => sll(p), (p: Uint8Array) => sll2(p), (p: Uint8Array) => loopback(p), (p: Uint8Array) => p, (p: Uint8Array) => p]
    const packets: NgPacket[] = []
    const want: { ip: Uint8Array; sec: number; nsec: number; lt: number; iface: number }[] = []
    for (let i = 0; i < 28; i++) {
      const iface = i % ifs.length
      let ip = P[i % P.length]
      if (ifs[iface].linktype === LINK.IPV4 && ip[0] >> 4 !== 4) ip = P[0]
      const sec = 1700000000 + i * 1000, nsec = (i * 123456789) % 1e9
      packets.push({ iface, sec, nsec, data: wraps[iface](ip) })
      const [s, n] = expectTs(sec, nsec, ifs[iface].tsresol)
      want.push({ ip, sec: s, nsec: n, lt: ifs[iface].linktype, iface })
    }
    const { records, error } = readAll(file(pcapngBytes({ le, interfaces: ifs, packets }), 'pcapng'))
    assert.is(error, null)
    assert.is(records.length, want.length)
    records.forEach((r, i) => {
      assert.is(r.n, i + 1)
      eq(r.data, want[i].ip, `record ${i + 1}`)
      assert.is(r.linktype, want[i].lt)
      assert.is(r.iface, want[i].iface)
      assert.equal([r.sec, r.nsec], [want[i].sec, want[i].nsec], `timestamp of record ${i + 1}`)
    })
    // exactness at nanosecond resolution (values above 2^53 ns)
    assert.equal([records[1].sec, records[1].nsec], [1700001000, 123456789])
  })
}

test('pcapng: several sections of different byte orders; interfaces are per section', () => {
  const s1 = pcapngBytes({ le: true, interfaces: [{ linktype: LINK.ETHERNET }], packets: [{ sec: 1, nsec: 1000, data: ethernet(P[0]) }] })
  const s2 = pcapngBytes({ le: false, interfaces: [{ linktype: LINK.RAW, tsresol: 9 }], packets: [{ sec: 2, nsec: 5, data: P[1] }, { sec: 3, nsec: 6, data: P[2] }] })
  const s3 = pcapngBytes({ le: true, interfaces: [{ linktype: LINK.LINUX_SLL }], packets: [{ sec: 4, nsec: 7000, data: sll(P[3]) }] })
  const path = file(concat(s1, s2, s3), 'pcapng')
  const { records, error } = readAll(path)
  assert.is(error, null)
  assert.equal(records.map((r) => r.n), [1, 2, 3, 4])
  assert.equal(records.map((r) => r.linktype), [1, 101, 101, 113])
  assert.equal(records.map((r) => [r.sec, r.nsec]), [[1, 1000], [2, 5], [3, 6], [4, 7000]])
  records.forEach((r, i) => eq(r.data, P[i]))
  assert.is(records[1].offset, s1.length + 28 + 32) // SHB (28) + IDB with if_tsresol (32)
})

test('pcapng: simple packet blocks, obsolete packet blocks, unknown blocks skipped, if_tsoffset', () => {
  const ifs: NgInterface[] = [{ linktype: LINK.RAW, snaplen: 0 }, { linktype: LINK.ETHERNET, tsoffset: 1000 }]
  const b = pcapngBytes({
    interfaces: ifs,
    packets: [
      { block: 4, body: new Uint8Array(20) },                       // name resolution
      { kind: 'spb', data: P[0] },
      { block: 0x0bad, body: Uint8Array.from([1, 2, 3, 4, 5]) },   // custom / unknown
      { kind: 'pb', iface: 1, sec: 5, nsec: 6000, data: ethernet(P[1]) },
      { block: 5, body: new Uint8Array(16) },                       // interface statistics
      { iface: 1, sec: 7, nsec: 8000, data: ethernet(P[2]) },
      { block: 10, body: new Uint8Array(100000) },                  // a big decryption-secrets block
      { iface: 0, sec: 9, nsec: 0, data: P[3] },
    ],
  })
  const { records, error } = readAll(file(b, 'pcapng'))
  assert.is(error, null)
  assert.equal(records.map((r) => r.n), [1, 2, 3, 4])
  assert.equal(records.map((r) => [r.sec, r.nsec]), [[0, 0], [1005, 6000], [1007, 8000], [9, 0]])
  records.forEach((r, i) => eq(r.data, P[i]))
})

test('pcapng: simple packet block length is min(original length, block, snap length)', () => {
  const frame = ethernet(P[3])
  const b = pcapngBytes({ interfaces: [{ linktype: LINK.ETHERNET, snaplen: 100 }], packets: [{ kind: 'spb', data: frame.subarray(0, 100), origlen: frame.length }] })
  const { records, error } = readAll(file(b, 'pcapng'))
  assert.is(error, null)
  assert.is(records[0].caplen, 100)
  eq(records[0].data, P[3].subarray(0, 86))
  assert.is(records[0].origlen, P[3].length)
})

test('pcapng timestamps agree with tshark', () => {
  if (!hasTshark()) { console.log('  (tshark not found: skipped)'); return }
  const ifs: NgInterface[] = [{ linktype: LINK.RAW }, { linktype: LINK.RAW, tsresol: 9 }, { linktype: LINK.RAW, tsresol: 0x80 | 20 }, { linktype: LINK.RAW, tsresol: 3 }]
  const packets: NgPacket[] = []
  for (let i = 0; i < 12; i++) packets.push({ iface: i % 4, sec: 1700000000 + i, nsec: (i * 987654321) % 1e9, data: P[i % P.length] })
  for (const le of [true, false]) {
    const path = file(pcapngBytes({ le, interfaces: ifs, packets }), 'pcapng')
    const rows = tsharkFields(path, ['frame.time_epoch', 'frame.cap_len'])
    const { records } = readAll(path)
    assert.is(rows.length, records.length)
    records.forEach((r, i) => {
      const [s, f] = rows[i][0].split('.')
      assert.is(Number(s), r.sec, `seconds of record ${i + 1}`)
      assert.is(Number(f.padEnd(9, '0')), r.nsec, `nanoseconds of record ${i + 1}`)
      assert.is(Number(rows[i][1]), r.caplen)
    })
  }
})

// ---- reading through buffer refills ----

for (const format of ['pcap', 'pcapng'] as const) {
  test(`a large mixed ${format} (many buffer refills) reads back exactly`, () => {
    const path = tmp.path(`mixed.${format}`)
    const st = makeMixedCapture(path, 12000, 5, { format })
    assert.is(st.count, 12000)
    const cap = openCapture(path)
    assert.is(cap.format, format)
    assert.is(cap.linktype, LINK.ETHERNET)
    let i = 0
    for (const p of mixedPackets(12000, 5)) {
      const r = cap.next()
      assert.ok(r, `record ${i + 1}`)
      i++
      if (r!.n !== i || r!.sec !== p.sec || r!.nsec !== p.nsec || !r!.data || Buffer.compare(r!.data, p.data) !== 0) {
        assert.unreachable(`record ${i} differs`)
      }
    }
    assert.is(cap.next(), null)
    assert.is(cap.next(), null)
  })
}

test('for-of iteration, and an early break closes the file', () => {
  const path = file(pcapBytes(recs((p) => p)))
  let n = 0
  for (const r of openCapture(path)) { n++; assert.is(r.n, n) }
  assert.is(n, P.length)
  const cap = openCapture(path)
  for (const r of cap) { if (r.n === 2) break }
  assert.is(cap.next(), null) // closed
})

// ---- empty, header-only, errors ----

function expectError(path: string, good: number, offset: number, re: RegExp): void {
  const { records, error } = readAll(path)
  assert.is(records.length, good, 'good records before the error')
  assert.ok(error instanceof CaptureError, 'a CaptureError')
  assert.is(error!.file, path)
  assert.is(error!.offset, offset, `offset (${error!.message})`)
  assert.match(error!.message, re)
  assert.ok(error!.message.includes(path), 'the message names the file')
  assert.ok(error!.message.includes(String(offset)), 'the message names the offset')
}

function openError(path: string): CaptureError {
  try { openCapture(path) } catch (e) { assert.ok(e instanceof CaptureError); return e as CaptureError }
  throw new Error('no error')
}

test('an empty file is "not a pcap or pcapng file"', () => {
  const e = openError(file(new Uint8Array(0)))
  assert.match(e.message, /not a pcap or pcapng file/)
  assert.is(e.offset, 0)
})

test('a bad magic, and a short file', () => {
  assert.match(openError(file(Uint8Array.from(Buffer.from('GET / HTTP/1.1\r\n\r\n')))).message, /not a pcap or pcapng file.*magic/)
  assert.match(openError(file(Uint8Array.of(0xd4, 0xc3))).message, /not a pcap or pcapng file/)
  assert.match(openError(file(pcapHeader().subarray(0, 10))).message, /truncated pcap file header/)
})

test('header-only files have zero records', () => {
  for (const b of [pcapHeader(), pcapHeader({ le: false, nano: true }), pcapngSHB(), concat(pcapngSHB(false), pcapngIDB({ linktype: 1 }, false))]) {
    const { records, error } = readAll(file(b))
    assert.is(error, null)
    assert.is(records.length, 0)
  }
})

test('pcap cut off inside record data, and inside a record header', () => {
  const full = pcapBytes(recs((p) => p))
  const off3 = 24 + (16 + P[0].length) + (16 + P[1].length)
  expectError(file(full.subarray(0, off3 + 16 + 5)), 2, off3, /file ends inside a record/)
  expectError(file(full.subarray(0, off3 + 7)), 2, off3, /file ends inside a record header/)
  expectError(file(full.subarray(0, off3 + 16)), 2, off3, /file ends inside a record/)
  const { records, error } = readAll(file(full.subarray(0, off3))) // cut exactly between records: fine
  assert.is(error, null)
  assert.is(records.length, 2)
})

test('pcap record longer than the snap length or 256 KiB', () => {
  const small = pcapBytes(recs((p) => p), { snaplen: 100 })
  const i = P.findIndex((p) => p.length > 100)
  let off = 24
  for (let k = 0; k < i; k++) off += 16 + P[k].length
  expectError(file(small), i, off, /exceeds the snap length 100/)
  const hdr = pcapHeader({ snaplen: 0 })
  const r1 = pcapRecord({ data: P[0] })
  const bad = pcapRecord({ data: P[1] })
  new DataView(bad.buffer).setUint32(8, MAX_CAPLEN + 1, true)
  expectError(file(concat(hdr, r1, bad, new Uint8Array(100))), 1, 24 + r1.length, /captured length 262145 exceeds 262144/)
})

test('errors are sticky: next() throws the same error again', () => {
  const full = pcapBytes(recs((p) => p))
  const cap = openCapture(file(full.subarray(0, full.length - 1)))
  let err: unknown
  try { for (;;) if (cap.next() === null) break } catch (e) { err = e }
  assert.ok(err instanceof CaptureError)
  assert.throws(() => cap.next(), (e: unknown) => e === err)
})

test('pcapng: impossible block lengths, mismatched trailer, truncation, unknown interface', () => {
  const ifc: NgInterface = { linktype: LINK.RAW }
  const head = concat(pcapngSHB(), pcapngIDB(ifc))
  const good = pcapngPacket({ sec: 1, data: P[0] }, ifc)
  const good2 = pcapngPacket({ sec: 2, data: P[1] }, ifc)
  const at = head.length + good.length
  const mk = (...b: Uint8Array[]): string => file(concat(head, good, ...b), 'pcapng')
  const setLen = (b: Uint8Array, v: number): Uint8Array => { const c = b.slice(); new DataView(c.buffer).setUint32(4, v, true); return c }
  expectError(mk(setLen(good2, good2.length + 2)), 1, at, /impossible pcapng block length/)
  expectError(mk(setLen(good2, 8)), 1, at, /impossible pcapng block length 8/)
  expectError(mk(setLen(good2, 0x7ffffff0)), 1, at, /impossible pcapng block length/)
  const trailer = good2.slice(); new DataView(trailer.buffer).setUint32(trailer.length - 4, 12, true)
  expectError(mk(trailer), 1, at, /trailing copy/)
  expectError(mk(good2.subarray(0, good2.length - 4)), 1, at, /file ends inside a block/)
  expectError(mk(good2.subarray(0, 6)), 1, at, /file ends inside a block header/)
  expectError(mk(pcapngPacket({ iface: 3, data: P[1] }, ifc)), 1, at, /interface 3/)
  const capTooBig = good2.slice(); new DataView(capTooBig.buffer).setUint32(20, 5000, true)
  expectError(mk(capTooBig), 1, at, /does not fit its block/)
  // unknown block cut off
  const unk = concat(Uint8Array.from([0xad, 0x0b, 0, 0, 0x20, 0, 0, 0]), new Uint8Array(8))
  expectError(mk(unk), 1, at, /file ends inside a block/)
  // a packet block before any interface
  expectError(file(concat(pcapngSHB(), good), 'pcapng'), 0, 28, /interface 0/)
  // a section header with a bad byte-order magic
  const shb = pcapngSHB(); shb[8] = 0x99
  expectError(file(concat(head, good, shb), 'pcapng'), 1, at, /byte-order magic/)
})

test('pcapng: captured length above the interface snap length or 256 KiB', () => {
  const ifc: NgInterface = { linktype: LINK.RAW, snaplen: 64 }
  const head = concat(pcapngSHB(), pcapngIDB(ifc))
  const ok = pcapngPacket({ data: P[4] }, ifc) // 40 bytes
  expectError(file(concat(head, ok, pcapngPacket({ data: P[3] }, ifc)), 'pcapng'), 1, head.length + ok.length, /snap length 64/)
  const big = { linktype: LINK.RAW, snaplen: 0 }
  const h2 = concat(pcapngSHB(), pcapngIDB(big))
  expectError(file(concat(h2, pcapngPacket({ data: new Uint8Array(MAX_CAPLEN + 4) }, big)), 'pcapng'), 0, h2.length, /exceeds 262144/)
})

test('big-endian pcapng errors report the right offset too', () => {
  const ifc: NgInterface = { linktype: LINK.RAW }
  const head = concat(pcapngSHB(false), pcapngIDB(ifc, false))
  const good = pcapngPacket({ data: P[0] }, ifc, false)
  const bad = pcapngPacket({ data: P[1] }, ifc, false)
  expectError(file(concat(head, good, good, bad.subarray(0, 30)), 'pcapng'), 2, head.length + 2 * good.length, /file ends inside a block/)
})

test('throughput (printed; the assertion only catches a gross slowdown)', () => {
  for (const format of ['pcap', 'pcapng'] as const) {
    const path = tmp.path(`speed.${format}`)
    const one = ipv4({}, tcp({ payload: 'x'.repeat(20) }))
    const recsN = 300000
    const w = new CaptureWriter(path, { format, linktype: LINK.RAW, nano: true, tsresol: 9 })
    for (let i = 0; i < recsN; i++) w.write(1700000000 + (i >> 10), i, one)
    w.close()
    let best = 0
    for (let k = 0; k < 3; k++) {
      const cap = openCapture(path)
      const t0 = process.cpuUsage().user
      let n = 0
      for (let r = cap.next(); r !== null; r = cap.next()) n += r.data!.length > 0 ? 1 : 0
      const us = process.cpuUsage().user - t0
      assert.is(n, recsN)
      best = Math.max(best, n / Math.max(us, 1))
    }
    console.log(`  ${format}: ${best.toFixed(2)} M records/s (60-byte packets, CPU time)`)
    assert.ok(best > 0.3, `${format} reader far too slow: ${best.toFixed(2)} M/s`)
  }
})

// ---- the committed fixtures ----

const FIX = 'test/fixtures' // tests run from the repository root

test('committed fixtures are exactly what test/fixtures/make.ts writes', () => {
  const out = tmp.path('fixtures')
  writeFixtures(out)
  for (const f of readdirSync(out)) {
    const want = readFileSync(join(out, f))
    let have: Buffer
    try { have = readFileSync(join(FIX, f)) } catch { assert.unreachable(`${FIX}/${f} is missing: run node dist/test/fixtures/make.js`); return }
    assert.ok(want.equals(have), `${FIX}/${f} is stale: run node dist/test/fixtures/make.js and commit`)
  }
})

test('sample.pcap and sample.pcapng hold the same IP packets and timestamps', () => {
  const want = sampleRecords()
  const a = readAll(join(FIX, 'sample.pcap')), b = readAll(join(FIX, 'sample.pcapng'))
  assert.is(a.error, null); assert.is(b.error, null)
  assert.is(a.records.length, want.length)
  assert.is(b.records.length, want.length)
  for (let i = 0; i < want.length; i++) {
    const x = a.records[i], y = b.records[i], w = want[i]
    assert.equal([x.n, x.sec, x.nsec, x.family, x.origlen], [y.n, y.sec, y.nsec, y.family, y.origlen], `record ${i + 1}`)
    assert.equal([x.sec, x.nsec], [w.sec, w.nsec])
    if (w.ip === null) { assert.is(x.data, null); assert.is(y.data, null); continue }
    eq(x.data, w.ip, `record ${i + 1}`)
    eq(y.data, w.ip, `record ${i + 1}`)
    assert.ok(verify(x.data!).ok, `record ${i + 1} checksums`)
  }
  assert.equal(new Set(b.records.map((r) => r.linktype)), new Set([1, 276, 101]))
})

test('truncated.pcap and corrupt.pcap fail at the documented offset after 50 records', () => {
  const readme = readFileSync(join(FIX, 'README.md'), 'utf8')
  const offs = [...readme.matchAll(/byte offset\s+\*\*(\d+)\*\*/g)].map((m) => Number(m[1]))
  assert.is(offs.length, 2)
  expectError(join(FIX, 'truncated.pcap'), 50, offs[0], /file ends inside a record/)
  expectError(join(FIX, 'corrupt.pcap'), 50, offs[1], /captured length 300000/)
})

test('tshark reads the fixtures without errors or bad checksums', () => {
  if (!hasTshark()) { console.log('  (tshark not found: skipped)'); return }
  for (const f of ['sample.pcap', 'sample.pcapng']) {
    const path = join(FIX, f)
    const expert = tshark(['-r', path, '-o', 'ip.check_checksum:TRUE', '-o', 'tcp.check_checksum:TRUE', '-o', 'udp.check_checksum:TRUE', '-q', '-z', 'expert,warn'])
    assert.not.match(expert, /Malformed|Bad checksum|Checksum/i, `${f}: ${expert}`)
    const rows = tsharkFields(path, ['tls.handshake.extensions_server_name', 'http.host', 'dns.qry.name'])
    const flat = rows.flat().filter((x) => x)
    for (const name of ['www.example.com', 'blocked.example', 'ads.example.net', 'tracker.example']) assert.ok(flat.includes(name), `${f}: ${name}`)
    assert.is(rows.length, sampleRecords().length)
  }
})

test.after(() => tmp.cleanup())
test.run()
