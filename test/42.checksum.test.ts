// Checksums and fixup: independent recomputation, tshark's opinion, and malformed input.
import { test } from 'uvu'
import * as assert from 'uvu/assert'
import { sum16, fold, checksum16, fixup, verify } from '../src/packet/checksum.js'
import { PcapWriter } from '../src/pcap/writer.js'
import {
  ipv4, ipv6, tcp, udp, icmpEcho, icmp6Echo, rawL4, fragments4, fragments6, concat, mixedPackets, prng,
  tlsClientHello, dnsQuery, httpGet,
} from './lib/packets.js'
import { tempDir, hasTshark, tsharkFields } from './lib/pcaptools.js'

const tmp = tempDir('psd-42-')

// ---- an independent reference, written for clarity, not speed ----

function refSum(words: number[]): number {
  let s = 0
  for (const w of words) { s += w; s = (s & 0xffff) + (s >>> 16) }
  return s
}
function wordsOf(b: ArrayLike<number>): number[] {
  const w: number[] = []
  for (let i = 0; i < b.length; i += 2) w.push((b[i] << 8) | (i + 1 < b.length ? b[i + 1] : 0))
  return w
}
const be16 = (b: Uint8Array, o: number): number => (b[o] << 8) | b[o + 1]

interface Layout { family: 4 | 6; l4: number; proto: number; dst: Uint8Array }

/** Where the transport is, found by a separate walk over the known header kinds. */
function layout(p: Uint8Array): Layout {
  if (p[0] >> 4 === 4) return { family: 4, l4: (p[0] & 15) * 4, proto: p[9], dst: p.slice(16, 20) }
  let nh = p[6], o = 40, dst = p.slice(24, 40)
  while ([0, 43, 44, 60, 51].includes(nh)) {
    if (nh === 43 && p[o + 3] > 0) {
      const n = p[o + 1] / 2
      if (p[o + 2] === 0 || p[o + 2] === 2) dst = p.slice(o + 8 + 16 * (n - 1), o + 8 + 16 * n)
      if (p[o + 2] === 4) dst = p.slice(o + 8, o + 24)
    }
    const len = nh === 44 ? 8 : nh === 51 ? (p[o + 1] + 2) * 4 : (p[o + 1] + 1) * 8
    nh = p[o]; o += len
  }
  return { family: 6, l4: o, proto: nh, dst }
}

/** The transport checksum a correct stack would put in the packet (null: none for this proto). */
function refL4(p: Uint8Array): number | null {
  const L = layout(p)
  const seg = p.slice(L.l4)
  const field = L.proto === 6 ? 16 : L.proto === 17 ? 6 : (L.proto === 1 && L.family === 4) || (L.proto === 58 && L.family === 6) ? 2 : -1
  if (field < 0) return null
  seg[field] = 0; seg[field + 1] = 0
  let pseudo: number[] = []
  if (L.proto !== 1) {
    pseudo = L.family === 4
      ? [...wordsOf(p.slice(12, 16)), ...wordsOf(L.dst), L.proto, seg.length]
      : [...wordsOf(p.slice(8, 24)), ...wordsOf(L.dst), seg.length >>> 16, seg.length & 0xffff, 0, L.proto]
  }
  let c = ~refSum([...pseudo, ...wordsOf(seg)]) & 0xffff
  if (c === 0 && L.proto === 17) c = 0xffff
  return c
}

function refCheck(p: Uint8Array, label: string): void {
  const L = layout(p)
  if (L.family === 4) {
    const h = p.slice(0, L.l4); h[10] = 0; h[11] = 0
    assert.is(be16(p, 10), ~refSum(wordsOf(h)) & 0xffff, `${label}: IPv4 header checksum`)
    assert.is(be16(p, 2), p.length, `${label}: IPv4 total length`)
  } else assert.is(be16(p, 4), p.length - 40, `${label}: IPv6 payload length`)
  if (L.proto === 17) assert.is(be16(p, L.l4 + 4), p.length - L.l4, `${label}: UDP length`)
  const want = refL4(p)
  if (want !== null) {
    const field = L.proto === 6 ? 16 : L.proto === 17 ? 6 : 2
    const got = be16(p, L.l4 + field)
    if (!(L.proto === 17 && L.family === 4 && got === 0)) assert.is(got, want, `${label}: transport checksum`)
  }
}

// ---- the packets ----

const PL = 'The quick brown fox jumps over the lazy dog.'
const cases: [string, Uint8Array][] = [
  ['v4 tcp syn + options', ipv4({ id: 99, df: true, ttl: 7, dscp: 46 }, tcp({ flags: 'S', options: [{ kind: 'mss', value: 1460 }, { kind: 'sackperm' }, { kind: 'ts', val: 1, ecr: 0 }, { kind: 'nop' }, { kind: 'ws', shift: 7 }] }))],
  ['v4 tcp odd payload', ipv4({}, tcp({ flags: 'PA', payload: PL + '!' }))],
  ['v4 tcp with IP options', ipv4({ options: [0x94, 4, 0, 0] }, tcp({ payload: httpGet('example.com') }))],
  ['v4 udp', ipv4({}, udp({ sport: 1, dport: 9999, payload: 'X marks' }))],
  ['v4 udp dns', ipv4({}, udp({ dport: 53, payload: dnsQuery({ qname: 'www.example.org' }) }))],
  ['v4 udp empty', ipv4({}, udp({}))],
  ['v4 icmp echo', ipv4({}, icmpEcho({ id: 5, seq: 6 }))],
  ['v4 icmp odd', ipv4({}, icmpEcho({ payload: 'abc' }))],
  ['v4 tcp tls', ipv4({}, tcp({ dport: 443, flags: 'PA', payload: tlsClientHello({ sni: 'example.com', alpn: ['h2'] }) }))],
  ['v6 tcp', ipv6({ tclass: 0xb8, flow: 0x12345 }, tcp({ flags: 'S', options: [{ kind: 'mss', value: 1440 }] }))],
  ['v6 udp odd', ipv6({}, udp({ payload: 'odd' }))],
  ['v6 icmp6 echo', ipv6({}, icmp6Echo({ id: 1, seq: 2 }))],
  ['v6 hbh + dstopts + udp', ipv6({ ext: [{ type: 0, options: [5, 2, 0, 0] }, { type: 60 }] }, udp({ payload: 'ext' }))],
  ['v6 AH + tcp', ipv6({ ext: [{ type: 51, icv: new Uint8Array(12) }] }, tcp({ payload: 'ah' }))],
  ['v6 atomic fragment + udp', ipv6({ ext: [{ type: 44, offset: 0, more: false }] }, udp({ payload: 'atomic' }))],
  ['v6 routing type 0, 1 left', ipv6({ dst: '2001:db8::a', ext: [{ type: 43, routingType: 0, segmentsLeft: 1, addresses: ['2001:db8::f1'] }] }, udp({ payload: 'rh0' }))],
  ['v6 routing type 2, 1 left', ipv6({ dst: '2001:db8::a', ext: [{ type: 43, routingType: 2, segmentsLeft: 1, addresses: ['2001:db8::f2'] }] }, tcp({ payload: 'rh2' }))],
  ['v6 routing type 0, 0 left', ipv6({ dst: '2001:db8::a', ext: [{ type: 43, routingType: 0, segmentsLeft: 0, addresses: ['2001:db8::f3'] }] }, udp({ payload: 'rh0 done' }))],
  ['v6 SRH, 2 left', ipv6({ dst: '2001:db8::a', ext: [{ type: 43, routingType: 4, segmentsLeft: 2, addresses: ['2001:db8::f4', '2001:db8::b', '2001:db8::a'] }] }, icmp6Echo({}))],
  ['v6 icmp6 after hbh', ipv6({ ext: [{ type: 0 }] }, icmp6Echo({ payload: 'x'.repeat(101) }))],
]

test('checksum16 / sum16 / fold: the RFC 1071 example and odd lengths', () => {
  const b = Uint8Array.from([0x00, 0x01, 0xf2, 0x03, 0xf4, 0xf5, 0xf6, 0xf7])
  assert.is(fold(sum16(b, 0, b.length)), 0xddf2)
  assert.is(checksum16(b), 0x220d)
  assert.is(checksum16(b, 0, 3), ~fold(0x0001 + 0xf200) & 0xffff)
  assert.is(checksum16(new Uint8Array(0)), 0xffff)
  assert.is(checksum16(Uint8Array.of(0xff)), 0x00ff)
  assert.is(sum16(b, 2, 4, 5), 0xf203 + 5)
  assert.is(checksum16(b, -5, 100), 0x220d) // clamped to the array
  const r = prng(3)
  for (let n = 0; n < 300; n++) {
    const d = Uint8Array.from({ length: n }, () => r.u32() & 0xff)
    assert.is(checksum16(d), ~refSum(wordsOf(d)) & 0xffff, `length ${n}`)
  }
  // large sums fold right
  const ff = new Uint8Array(1 << 20).fill(0xff)
  assert.is(checksum16(ff), 0)
  assert.is(fold(0x1_0000_0000 * 3 + 5), fold(3 + 5))
  assert.is(fold(0xffff_ffff + 0xffff_ffff), 0xffff)
  assert.is(fold(0x1_0000_ffff), 0x0001) // 0x0001 + 0x0000 + 0xffff
  assert.is(fold(2 ** 52 + 7), fold(2 ** 52 % 0xffff + 7)) // 2^16 = 1 (mod 0xffff)
  for (let n = 120; n < 140; n++) { // across the 32-bit word path's threshold
    const d = new Uint8Array(n).fill(0xff); d[n - 1] = 0xfe
    assert.is(checksum16(d), ~refSum(wordsOf(d)) & 0xffff, `all-ones length ${n}`)
  }
})

test('builders produce right packets (reference recomputation and verify())', () => {
  for (const [name, p] of cases) {
    refCheck(p, name)
    assert.ok(verify(p).ok, `${name}: verify`)
  }
})

/** Edits a copy of the packet as a script might. */
const edits: [string, (p: Uint8Array) => Uint8Array][] = [
  ['none', (p) => p.slice()],
  ['damaged checksums', (p) => {
    const c = p.slice(), L = layout(c)
    if (L.family === 4) { c[10] = 0; c[11] = 0 }
    c[L.l4 + (L.proto === 6 ? 16 : L.proto === 17 ? 6 : 2)] ^= 0x5a
    return c
  }],
  ['ttl/hop limit', (p) => { const c = p.slice(); c[c[0] >> 4 === 4 ? 8 : 7] = 1; return c }],
  ['source address', (p) => { const c = p.slice(); c[c[0] >> 4 === 4 ? 15 : 23] ^= 0x81; return c }],
  ['dscp', (p) => { const c = p.slice(); c[1] ^= 0xfc; return c }],
  ['ports', (p) => { const c = p.slice(); const L = layout(c); c[L.l4] ^= 0x1f; c[L.l4 + 3] ^= 0xa0; return c }],
  ['last byte', (p) => { const c = p.slice(); c[c.length - 1] ^= 0xff; return c }],
  ['append 3 bytes', (p) => concat(p, Uint8Array.of(1, 2, 3))],
  ['append 1000 bytes', (p) => concat(p, new Uint8Array(1000).fill(0x41))],
  ['cut 1 byte', (p) => { const L = layout(p); return p.length - 1 >= L.l4 + 20 ? p.slice(0, -1) : p.slice() }],
]

test('fixup after edits equals an independent recomputation', () => {
  for (const [name, p] of cases) {
    for (const [ename, edit] of edits) {
      const c = edit(p)
      fixup(c)
      refCheck(c, `${name} / ${ename}`)
      assert.ok(verify(c).ok, `${name} / ${ename}: verify`)
    }
  }
})

test('verify() notices each wrong checksum and length', () => {
  const t4 = ipv4({}, tcp({ payload: 'abc' }))
  const bad = t4.slice(); bad[11] ^= 1
  assert.equal(verify(bad).ip, false); assert.equal(verify(bad).tcp, true); assert.is(verify(bad).ok, false)
  const bt = t4.slice(); bt[bt.length - 1] ^= 1
  assert.equal(verify(bt).tcp, false); assert.equal(verify(bt).ip, true)
  const u6 = ipv6({}, udp({ payload: 'z' })); u6[5] += 1
  assert.equal(verify(u6).lengths, false)
  const ic = ipv6({}, icmp6Echo({})); ic[ic.length - 1] ^= 1
  assert.equal(verify(ic).icmp6, false)
  const i4 = ipv4({}, icmpEcho({})); i4[i4.length - 1] ^= 1
  assert.equal(verify(i4).icmp, false)
  assert.equal(verify(new Uint8Array(3)).family, 0)
})

test('an IPv4 UDP checksum of 0 stays 0; a computed 0 is sent as 0xffff (v4 and v6)', () => {
  const z = ipv4({}, udp({ payload: 'no checksum', checksum: false }))
  assert.is(be16(z, 26), 0)
  z[30] = 0x41
  fixup(z)
  assert.is(be16(z, 26), 0)
  assert.ok(verify(z).ok)
  for (const mk of [(pl: Uint8Array) => ipv4({}, udp({ payload: pl })), (pl: Uint8Array) => ipv6({}, udp({ payload: pl }))]) {
    // Choose the first payload word so the checksum comes out as 0.
    const p = mk(new Uint8Array(4))
    const L = layout(p)
    const c = be16(p, L.l4 + 6) // checksum with a zero first payload word
    const w = c === 0xffff ? 0 : c // adding c to the sum makes it 0xffff, i.e. a checksum of 0
    p[L.l4 + 8] = w >> 8; p[L.l4 + 9] = w & 0xff
    fixup(p)
    assert.is(be16(p, L.l4 + 6), 0xffff)
    assert.is(refL4(p), 0xffff)
    assert.ok(verify(p).ok)
  }
})

test('fragments: header fixed, transport checksum and UDP length left alone', () => {
  const frags4 = fragments4({ id: 77 }, udp({ dport: 9999, payload: 'y'.repeat(300) }), 128)
  assert.is(frags4.length, 3)
  const frags6 = fragments6({}, tcp({ payload: 'z'.repeat(300) }), 128)
  for (const f of [...frags4, ...frags6]) {
    const c = f.slice()
    const L = layout(c)
    const before = c.slice(L.l4, L.l4 + 8)
    if (c[0] >> 4 === 4) { c[8] = 9; c[10] = 0 }
    fixup(c)
    assert.equal(Array.from(c.slice(L.l4, L.l4 + 8)), Array.from(before), 'transport bytes untouched')
    assert.ok(verify(c).ok)
    if (c[0] >> 4 === 4) {
      const h = c.slice(0, 20); h[10] = 0; h[11] = 0
      assert.is(be16(c, 10), ~refSum(wordsOf(h)) & 0xffff, 'fragment header checksum')
      assert.is(be16(c, 2), c.length)
    }
  }
  // The first fragment keeps the whole datagram's checksum.
  const whole = ipv4({ id: 77 }, udp({ dport: 9999, payload: 'y'.repeat(300) }))
  assert.is(be16(frags4[0], 26), be16(whole, 26))
  // mf without offset, and offset without mf
  for (const o of [{ mf: true }, { fragOffset: 100 }]) {
    const f = ipv4(o, tcp({ payload: 'abc' }))
    f[36] = 0xab; f[37] = 0xcd // the TCP checksum field
    fixup(f)
    assert.is(be16(f, 36), 0xabcd)
    assert.is(verify(f).tcp, null)
  }
})

test('wireLength > bytes held: lengths from the wire length, transport checksum untouched', () => {
  const p = ipv4({}, udp({ payload: new Uint8Array(500) }))
  const held = p.slice(0, 100)
  held[8] = 3
  const ck = be16(held, 26)
  fixup(held, p.length)
  assert.is(be16(held, 2), p.length)
  assert.is(be16(held, 24), p.length - 20)
  assert.is(be16(held, 26), ck)
  const h = held.slice(0, 20); h[10] = 0; h[11] = 0
  assert.is(be16(held, 10), ~refSum(wordsOf(h)) & 0xffff)
  const q = ipv6({}, tcp({ payload: new Uint8Array(500) })).slice(0, 80)
  fixup(q, 560)
  assert.is(be16(q, 4), 520)
  fixup(q, 3) // smaller than held: taken as held
  assert.is(be16(q, 4), 40)
  const jumbo = ipv4({}, udp({ payload: 'a' })), jl = be16(jumbo, 2)
  fixup(jumbo, 70000) // does not fit: left alone
  assert.is(be16(jumbo, 2), jl)
})

test('protocols without a checksum rule are left alone; ICMP only on v4, ICMPv6 only on v6', () => {
  const a = ipv6({}, rawL4(1, Uint8Array.from([8, 0, 0x12, 0x34, 0, 1, 0, 1])))
  fixup(a); assert.is(be16(a, 42), 0x1234)
  const b = ipv4({}, rawL4(58, Uint8Array.from([128, 0, 0x12, 0x34, 0, 1, 0, 1])))
  fixup(b); assert.is(be16(b, 22), 0x1234)
  const e = ipv4({}, rawL4(50, Uint8Array.from([1, 2, 3, 4, 5, 6, 7, 8])))
  fixup(e); assert.equal(Array.from(e.slice(20)), [1, 2, 3, 4, 5, 6, 7, 8])
  const s = ipv6({ ext: [{ type: 60 }] }, rawL4(132, new Uint8Array(16).fill(9)))
  fixup(s); assert.ok(s.slice(48).every((x) => x === 9))
  assert.ok(verify(s).ok)
})

const cpuNs = (): bigint => BigInt(process.cpuUsage().user) * 1000n

// (before the Proxy test below: proxies make the checksum functions megamorphic)
test('fixup is fast', () => {
  const p = ipv4({}, tcp({ payload: new Uint8Array(1400).fill(7) }))
  const s = ipv4({}, tcp({ flags: 'A' }))
  for (let i = 0; i < 20000; i++) { fixup(p); fixup(s) }
  let t = cpuNs()
  for (let i = 0; i < 200000; i++) fixup(p)
  const big = Number(cpuNs() - t) / 200000
  t = cpuNs()
  for (let i = 0; i < 1000000; i++) fixup(s)
  const small = Number(cpuNs() - t) / 1000000
  console.log(`  fixup: ${big.toFixed(0)} ns per 1440-byte TCP packet, ${small.toFixed(0)} ns per 40-byte packet (CPU time)`)
  assert.ok(big < 20000 && small < 5000, 'an order of magnitude slower than expected')
})

// ---- malformed input ----

/** A guard that fails the test on any index outside the array, read or write. */
function guarded(b: Uint8Array): Uint8Array {
  return new Proxy(b, {
    get(t, k) {
      if (typeof k === 'string' && /^-?\d+$/.test(k) && !(+k >= 0 && +k < t.length)) throw new Error(`read outside the array: ${k} (length ${t.length})`)
      const v = Reflect.get(t, k, t)
      return typeof v === 'function' ? v.bind(t) : v
    },
    set(t, k, v) {
      if (typeof k === 'string' && /^-?\d+$/.test(k) && !(+k >= 0 && +k < t.length)) throw new Error(`write outside the array: ${k} (length ${t.length})`)
      return Reflect.set(t, k, v, t)
    },
  })
}

test('malformed and truncated input never throws nor touches outside the array', () => {
  const inputs: Uint8Array[] = [new Uint8Array(0), Uint8Array.of(0x45), Uint8Array.of(0x60, 0, 0)]
  for (const [, p] of cases) for (let n = 0; n <= p.length; n++) inputs.push(p.slice(0, n))
  const r = prng(42)
  for (let i = 0; i < 3000; i++) {
    const n = r.int(0, 120)
    const d = Uint8Array.from({ length: n }, () => r.u32() & 0xff)
    if (n) d[0] = (r.float() < 0.5 ? 0x40 : 0x60) | (d[0] & 15)
    if (n > 9 && d[0] >> 4 === 4) d[9] = r.pick([1, 6, 17, 58, 51])
    if (n > 6 && d[0] >> 4 === 6) d[6] = r.pick([0, 6, 17, 43, 44, 51, 58, 60])
    if (n > 40 && d[0] >> 4 === 6 && r.float() < 0.5) d[41] = r.pick([0, 1, 255]) // ext header lengths
    inputs.push(d)
  }
  // headers claiming far more than there is
  const big = ipv4({}, tcp({})); big[0] = 0x4f; inputs.push(big)
  const rh = ipv6({ ext: [{ type: 43, segmentsLeft: 1, routingType: 0, addresses: ['::1'] }] }, udp({})); rh[41] = 200; inputs.push(rh)
  const seg = ipv6({ ext: [{ type: 43, segmentsLeft: 3, routingType: 4, addresses: ['::1'] }] }, udp({})); seg[41] = 2; inputs.push(seg)
  for (const d of inputs) {
    const g = guarded(d.slice())
    try {
      fixup(g)
      fixup(g, d.length + 1000)
      fixup(g, NaN)
      verify(g)
    } catch (e) {
      assert.unreachable(`${(e as Error).message} on ${Buffer.from(d).toString('hex')}`)
    }
  }
})

// ---- tshark's opinion ----

test('tshark agrees: every fixed-up packet has good IP, TCP, UDP, ICMP and ICMPv6 checksums', () => {
  if (!hasTshark()) { console.log('  (tshark not found: skipped)'); return }
  const path = tmp.path('fixed.pcap')
  const w = new PcapWriter(path)
  const kinds: string[] = []
  for (const [name, p] of cases) {
    for (const [ename, edit] of edits) {
      const c = edit(p)
      fixup(c)
      w.write(1700000000, kinds.length, c)
      kinds.push(`${name} / ${ename}`)
    }
  }
  for (const m of mixedPackets(500, 77)) {
    const c = m.data.slice()
    c[c[0] >> 4 === 4 ? 8 : 7] = 17
    c[c.length - 1] ^= 0x55
    fixup(c)
    w.write(m.sec, m.nsec, c)
    kinds.push(`mixed ${m.kind}`)
  }
  w.close()
  const fields = ['ip.checksum.status', 'tcp.checksum.status', 'udp.checksum.status', 'icmp.checksum.status', 'icmpv6.checksum.status', 'ip.len', 'ipv6.plen', 'udp.length', 'frame.len']
  const rows = tsharkFields(path, fields, ['-o', 'ip.check_checksum:TRUE', '-o', 'tcp.check_checksum:TRUE', '-o', 'udp.check_checksum:TRUE'])
  assert.is(rows.length, kinds.length)
  let checked = 0
  rows.forEach((row, i) => {
    const [ip, tcpS, udpS, icmpS, icmp6S, ipLen, plen, ulen, flen] = row
    // Wireshark reports the routing-header final destination case as unverified at most.
    for (const [k, v] of [['ip', ip], ['tcp', tcpS], ['udp', udpS], ['icmp', icmpS], ['icmpv6', icmp6S]]) {
      if (v === '') continue
      checked++
      for (const one of v.split(',')) assert.ok(one === '1' || (one === '2' && k !== 'ip'), `${kinds[i]}: ${k} checksum status ${v}`)
    }
    if (ipLen) assert.is(Number(ipLen.split(',')[0]), Number(flen), `${kinds[i]}: ip.len`)
    if (plen) assert.is(Number(plen.split(',')[0]) + 40, Number(flen), `${kinds[i]}: ipv6.plen`)
    if (ulen && !kinds[i].includes('fragment')) assert.ok(Number(ulen.split(',')[0]) > 0)
  })
  assert.ok(checked > kinds.length, `checked ${checked} checksums`)
})

test('tshark: checksums behind routing headers use the final destination', () => {
  if (!hasTshark()) { console.log('  (tshark not found: skipped)'); return }
  const path = tmp.path('rh.pcap')
  const w = new PcapWriter(path)
  const rhCases = cases.filter(([n]) => n.includes('routing') || n.includes('SRH'))
  for (const [, p] of rhCases) w.write(1, 0, p)
  w.close()
  const rows = tsharkFields(path, ['udp.checksum.status', 'tcp.checksum.status', 'icmpv6.checksum.status'], ['-o', 'tcp.check_checksum:TRUE', '-o', 'udp.check_checksum:TRUE'])
  rows.forEach((row, i) => {
    const st = row.filter((x) => x !== '')
    assert.equal(st, ['1'], `${rhCases[i][0]}: ${row.join('|')}`)
  })
})

test.after(() => tmp.cleanup())
test.run()
