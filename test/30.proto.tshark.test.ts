// psd's protocol objects against tshark on captures built here (no root needed): every field of
// every packet compared with tshark's dissection of the same file, then edits made by scripts
// and tshark's checksum verdicts on the packets psd writes back. The real-traffic version of
// this test (ping, curl, dig, openssl, nc in network namespaces) is 30.proto.real.test.ts.
import { test } from 'uvu'
import * as assert from 'uvu/assert'
import { join } from 'node:path'
import { mkdtempSync, rmSync } from 'node:fs'
import { tmpdir } from 'node:os'
import {
  ipv4, ipv6, tcp, udp, icmpEcho, icmp6Echo, dnsQuery, dnsResponse, httpGet, tlsClientHello, fragments4,
  fragments6, mixedPackets, ethernet, pcapBytes, concat, bytes, u16, LINK, rawL4,
} from './lib/packets.js'
import { writeFileSync } from 'node:fs'
import { hasTshark, compareWithTshark, editAndCheck, tsharkRows, EDITS } from './lib/tshark.js'

const dir = mkdtempSync(join(tmpdir(), 'psd-30-tshark-'))
const skip = hasTshark() ? null : 'tshark is not installed'

/** Edge cases of every layer, then a stretch of the mixed generator's traffic. */
function packets(): Uint8Array[] {
  const p: Uint8Array[] = []
  const dnsR = dnsResponse({ id: 0x4242, qname: 'www.example.test', qtype: 1, answers: [
    { type: 5, ttl: 60, data: 'web.example.test' }, { type: 1, ttl: 30, data: '192.0.2.80' }, { type: 1, ttl: 30, data: '192.0.2.81' }] })
  const dns6 = dnsResponse({ id: 7, qname: 'v6.example.test', qtype: 28, answers: [{ type: 28, data: '2001:db8::80' }] })
  const mx = dnsResponse({ id: 8, qname: 'example.test', qtype: 15, answers: [{ type: 15, data: concat(bytes(u16(10)), bytes([4, 109, 97, 105, 108, 0xc0, 12])) },
    { type: 16, data: bytes([5, 104, 101, 108, 108, 111, 3, 102, 111, 111]) }] })
  const nx = dnsResponse({ id: 9, qname: 'nope.example.test', rcode: 3 })
  const tcpDns = dnsQuery({ id: 10, qname: 'tcp.example.test', qtype: 16 })
  const hello = tlsClientHello({ sni: 'tls.example.test', alpn: ['h2', 'http/1.1'] })
  p.push(
    ipv4({ src: '10.0.0.1', dst: '10.0.0.2', ttl: 1, dscp: 46, ecn: 2, df: true, id: 0xffff }, udp({ sport: 40000, dport: 53, payload: dnsQuery({ id: 1, qname: 'www.example.test' }) })),
    ipv4({ src: '10.0.0.2', dst: '10.0.0.1' }, udp({ sport: 53, dport: 40000, payload: dnsR })),
    ipv6({ src: 'fd00::1', dst: 'fd00::53' }, udp({ sport: 40001, dport: 53, payload: dns6 })),
    ipv4({}, udp({ sport: 53, dport: 40002, payload: mx })), ipv4({}, udp({ sport: 53, dport: 40003, payload: nx })),
    ipv4({}, tcp({ sport: 40004, dport: 53, flags: 'PA', payload: concat(bytes(u16(tcpDns.length)), tcpDns) })),
    ipv4({ options: bytes([0x94, 4, 0, 0]) }, tcp({ sport: 40005, dport: 80, flags: 'S', seq: 0xfffffffe, window: 64240, options: [
      { kind: 'mss', value: 1460 }, { kind: 'sackperm' }, { kind: 'ts', val: 12345, ecr: 0 }, { kind: 'nop' }, { kind: 'ws', shift: 7 }] })),
    ipv4({}, tcp({ sport: 80, dport: 40005, flags: 'SAE', ack: 0xffffffff, options: [{ kind: 'mss', value: 1400 }, { kind: 'nop' }, { kind: 'nop' },
      { kind: 'sack', blocks: [[1, 2], [3, 4]] }, { kind: 30, data: 'xy' }, { kind: 'eol' }] })),
    ipv4({}, tcp({ sport: 40005, dport: 80, flags: 'PA', payload: httpGet('www.example.test', '/index.html?q=1', { 'User-Agent': 'x' }) })),
    ipv4({}, tcp({ sport: 8080, dport: 40006, flags: 'PA', payload: 'HTTP/1.1 301 Moved Permanently\r\nLocation: /x\r\nContent-Length: 0\r\n\r\n' })),
    ipv6({}, tcp({ sport: 40007, dport: 8080, flags: 'PA', payload: 'POST /api HTTP/1.0\r\nHost: [fd00::1]:8080\r\nContent-Length: 2\r\n\r\nhi' })),
    ipv4({}, tcp({ sport: 40008, dport: 443, flags: 'PA', payload: hello })),
    ipv6({ tclass: 0xb8, flow: 0xabcde, hopLimit: 255 }, tcp({ sport: 40009, dport: 443, flags: 'PA', payload: tlsClientHello({ sni: 'six.example.test', versions: [0x0304] }) })),
    ipv4({}, tcp({ sport: 40010, dport: 80, flags: 'FPAURC', urgent: 5, payload: 'x' })),
    ipv4({}, icmpEcho({ id: 0x1234, seq: 1 })), ipv4({}, icmpEcho({ reply: true, id: 0x1234, seq: 1 })),
    ipv4({}, icmpEcho({ type: 3, code: 3, id: 0, seq: 0, payload: ipv4({ src: '198.51.100.2', dst: '192.0.2.1' }, udp({ sport: 9, dport: 40011, payload: 'q' })) })),
    ipv4({}, icmpEcho({ type: 3, code: 4, id: 0, seq: 1400, payload: ipv4({}, tcp({ dport: 80 })).subarray(0, 28) })),
    ipv4({}, icmpEcho({ type: 11, code: 0, id: 0, seq: 0, payload: ipv4({}, udp({ dport: 33434 })) })),
    ipv6({}, icmp6Echo({ id: 0x77, seq: 3 })), ipv6({}, icmp6Echo({ reply: true, id: 0x77, seq: 3 })),
    ipv6({}, icmp6Echo({ type: 2, code: 0, id: 0, seq: 1280, payload: ipv6({}, udp({ dport: 53 })).subarray(0, 48) })),
    ipv6({ ext: [{ type: 0, options: [5, 2, 0, 0] }] }, icmp6Echo({ type: 143, code: 0, id: 0, seq: 1, payload: bytes([4, 0, 0, 0, ...new Array(16).fill(0xff)]) })),
    ipv6({ ext: [{ type: 60 }, { type: 43, routingType: 4, segmentsLeft: 0, addresses: ['2001:db8::9'] }] }, udp({ sport: 1, dport: 2, payload: 'routed' })),
    ipv6({ ext: [{ type: 44, offset: 0, more: false, id: 99 }] }, udp({ sport: 3, dport: 4, payload: 'atomic' })),
    ipv4({}, rawL4(132, 'sctp-ish data')),
    ...fragments4({ id: 0x5151 }, udp({ sport: 53, dport: 40012, payload: dnsR }), 32),
    ...fragments4({ id: 0x5252 }, icmpEcho({ payload: 'p'.repeat(100) }), 48),
    ...fragments6({}, icmp6Echo({ payload: 'q'.repeat(100) }), 48, 0xabcdef01),
    ...fragments6({ ext: [{ type: 0 }] }, tcp({ dport: 80, flags: 'PA', payload: httpGet('frag.example.test') }), 40, 7),
  )
  for (const m of mixedPackets(1500, 30)) p.push(m.data)
  return p
}

test('every field of every packet matches tshark (built capture)', async () => {
  if (skip) { console.log(`  skipped: ${skip}`); return }
  const pcap = join(dir, 'built.pcap')
  writeFileSync(pcap, pcapBytes(packets().map((d, i) => ({ sec: 1_700_000_000 + i, data: ethernet(d) })), { linktype: LINK.ETHERNET }))
  const c = compareWithTshark(pcap, dir)
  if (c.mismatches.length) console.log(JSON.stringify(c.mismatches.slice(0, 10), null, 1))
  assert.equal(c.mismatches.length, 0, `${c.mismatches.length} of ${c.frames} frames differ`)
  for (const obj of ['ip', 'tcp', 'udp', 'icmp', 'icmp6', 'dns', 'http', 'tls']) assert.ok((c.seen[obj] ?? 0) > 0, `no ${obj} packet in the capture`)
})

test('after every edit tshark reports the checksums good', async () => {
  if (skip) { console.log(`  skipped: ${skip}`); return }
  const pcap = join(dir, 'built.pcap')
  writeFileSync(pcap, pcapBytes(packets().map((d, i) => ({ sec: 1_700_000_000 + i, data: ethernet(d) })), { linktype: LINK.ETHERNET }))
  for (const [name, script] of Object.entries(EDITS)) {
    const c = editAndCheck(pcap, script, dir, name)
    assert.ok(c.modified > (name.startsWith('ttl') ? 1000 : 20), `${name}: ${c.modified} packets modified`)
    assert.equal(c.bad.slice(0, 5), [], `${name}: ${c.bad.length} of ${c.modified} modified packets with bad checksums`)
    assert.ok(c.good >= c.modified - 12, `${name}: only ${c.good} of ${c.modified} verified good`)
  }
  // and the edits are there, as tshark reads them
  const rows = tsharkRows(join(dir, 'ttl-addresses-ports-flags-mss.accepted.pcap'), { fields: ['ip.ttl', 'ipv6.hlim', 'ip.dst', 'ipv6.dst', 'tcp.dstport', 'tcp.flags.syn', 'tcp.options.mss_val', 'udp.dstport', 'tcp.seq_raw', 'icmp.type'] })
  for (const r of rows) {
    assert.equal(r['ip.ttl'][0] ?? r['ipv6.hlim'][0], '1')
    assert.ok(r['ip.dst'][0] === '10.0.0.2' || r['ipv6.dst'][0] === 'fd00:ffff::2')
    if (r['tcp.dstport'].length && !r['icmp.type'].length) {
      assert.equal(r['tcp.dstport'][0], '80'); assert.equal(r['tcp.flags.syn'][0], '0'); assert.equal(r['tcp.seq_raw'][0], '1')
    }
  }
  const clamp = tsharkRows(join(dir, 'mss-clamp-adds-the-option-where-missing-.accepted.pcap'), { fields: ['tcp.flags.syn', 'tcp.options.mss_val', 'icmp.type'] })
  const syns = clamp.filter((r) => r['tcp.flags.syn'][0] === '1' && !r['icmp.type'].length)
  assert.ok(syns.length > 20)
  for (const r of syns) assert.equal(r['tcp.options.mss_val'][0], '1200')
})

test.after(() => rmSync(dir, { recursive: true, force: true }))
test.run()
