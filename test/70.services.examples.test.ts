// The example scripts of the script services, offline: scripts/icmp-responder.lua (echo replies
// for one IPv4 and one IPv6 address, built from pkt:copy()), scripts/tcp-reset.lua (RSTs built
// from nothing, RFC 9293 sequence numbers), scripts/rate-meter.lua (a one-second timer on the
// capture's clock). Their live runs are in 75.services.live.
import { test } from 'uvu'
import * as assert from 'uvu/assert'
import { join } from 'node:path'
import { tempDir, readPcap, ROOT } from './lib/psd.js'
import { ipv4, ipv6, tcp, udp, icmpEcho, icmp6Echo } from './lib/packets.js'
import { timedCapture, scriptMsgs, services, T0, runSvc } from './lib/services.js'
import { verify } from '../src/packet/checksum.js'
import { hasTshark, tsharkFields } from './lib/pcaptools.js'

const dir = tempDir('psd-examples-')
const script = (name: string) => join(ROOT, 'scripts', name)
const be16 = (b: Uint8Array, o: number) => (b[o] << 8) | b[o + 1]
const be32 = (b: Uint8Array, o: number) => ((b[o] << 24) | (b[o + 1] << 16) | (b[o + 2] << 8) | b[o + 3]) >>> 0

test('icmp-responder.lua: echo requests for its addresses are dropped and answered; everything else passes', () => {
  const packets = [
    ipv4({ src: '10.200.0.1', dst: '192.0.2.10', ttl: 61, id: 5 }, icmpEcho({ id: 0x77, seq: 1, payload: 'ping-payload-v4' })),
    ipv4({ src: '10.200.0.1', dst: '192.0.2.11' }, icmpEcho({ id: 0x77, seq: 2 })),           // another address
    ipv4({ src: '10.200.0.1', dst: '192.0.2.10' }, icmpEcho({ id: 0x77, seq: 3, reply: true })), // not a request
    ipv6({ src: 'fd00::1', dst: '2001:db8::10', hopLimit: 50 }, icmp6Echo({ id: 0x66, seq: 4, payload: 'ping-payload-v6' })),
    ipv4({ src: '10.200.0.1', dst: '192.0.2.10' }, udp({ dport: 7 })),
  ]
  const pcap = timedCapture(dir, 'echo.pcap', packets.map((data, i) => ({ ms: i * 10, data })))
  const sent = join(dir, 'replies.pcap')
  const r = runSvc({ scriptPath: script('icmp-responder.lua'), pcap, dir, args: ['--allow-send', '--write-sent', sent] })
  assert.is(r.status, 0, r.stderr)
  assert.equal(r.verdicts.map((v) => v.verdict), ['drop', 'accept', 'accept', 'drop', 'accept'])
  assert.ok(r.verdicts.every((v) => v.fault === null))
  const replies = readPcap(sent)
  assert.is(replies.length, 2)
  const [a, b] = replies.map((x) => x.data)
  // v4: addresses swapped, TTL 64, type 0, same id/seq/payload, checksums right
  assert.ok(verify(a).ok && verify(a).icmp === true)
  assert.equal([...a.subarray(12, 20)], [192, 0, 2, 10, 10, 200, 0, 1])
  assert.equal([a[8], a[20], be16(a, 24), be16(a, 26)], [64, 0, 0x77, 1])
  assert.is(Buffer.from(a.subarray(28)).toString(), 'ping-payload-v4')
  // v6: type 129, hop limit 64, ICMPv6 checksum over the new pseudo-header
  assert.ok(verify(b).ok && verify(b).icmp6 === true)
  assert.equal([b[7], b[40], be16(b, 44), be16(b, 46)], [64, 129, 0x66, 4])
  assert.is(Buffer.from(b.subarray(48)).toString(), 'ping-payload-v6')
  assert.equal([replies[0].sec, replies[1].sec, replies[1].nsec], [T0, T0, 30_000_000])
  assert.match(r.logs.find((l) => l.msg === 'script stats').stats.echo_replies.toString(), /^2$/)
  if (hasTshark()) {
    const rows = tsharkFields(sent, ['icmp.type', 'icmpv6.type', 'icmp.checksum.status', 'icmpv6.checksum.status'],
      ['-o', 'ip.check_checksum:TRUE'])
    assert.equal(rows, [['0', '', '1', ''], ['', '129', '', '1']])
  }
})

test('tcp-reset.lua: segments to a blocked host are dropped and a RST goes back to the client (RFC 9293 numbers)', () => {
  const c4 = { src: '10.200.0.1', dst: '192.0.2.80' }
  const packets = [
    ipv4(c4, tcp({ sport: 40001, dport: 80, flags: 'S', seq: 1000 })),                            // SYN: RST+ACK, ack = seq+1
    ipv4(c4, tcp({ sport: 40002, dport: 80, flags: 'PA', seq: 5000, ack: 777, payload: 'GET / HTTP/1.1\r\n\r\n' })), // ACK: RST, seq = ack
    ipv4(c4, tcp({ sport: 40003, dport: 80, flags: 'FP', seq: 0xfffffff0, payload: 'abcdefghijklmnopqrst' })),      // no ACK, wraps
    ipv4(c4, tcp({ sport: 40004, dport: 80, flags: 'RA', seq: 1 })),                               // a RST: left alone
    ipv4({ src: '10.200.0.1', dst: '192.0.2.81' }, tcp({ sport: 40005, dport: 80, flags: 'S' })),  // not blocked
    ipv6({ src: 'fd00::1', dst: '2001:db8::80' }, tcp({ sport: 40006, dport: 443, flags: 'S', seq: 42 })),
  ]
  const pcap = timedCapture(dir, 'tcp.pcap', packets.map((data, i) => ({ ms: i, data })))
  const sent = join(dir, 'resets.pcap')
  const r = runSvc({ scriptPath: script('tcp-reset.lua'), pcap, dir, args: ['--allow-send', '--write-sent', sent] })
  assert.is(r.status, 0, r.stderr)
  assert.equal(r.verdicts.map((v) => v.verdict), ['drop', 'drop', 'drop', 'accept', 'accept', 'drop'])
  const rs = readPcap(sent).map((x) => x.data)
  assert.is(rs.length, 4)
  for (const p of rs) assert.ok(verify(p).ok && verify(p).tcp === true, JSON.stringify(verify(p)))
  const v4 = (p: Uint8Array) => ({ src: [...p.subarray(12, 16)].join('.'), dst: [...p.subarray(16, 20)].join('.'),
    sport: be16(p, 20), dport: be16(p, 22), seq: be32(p, 24), ack: be32(p, 28), flags: p[33], len: p.length })
  assert.equal(v4(rs[0]), { src: '192.0.2.80', dst: '10.200.0.1', sport: 80, dport: 40001, seq: 0, ack: 1001, flags: 0x14, len: 40 })
  assert.equal(v4(rs[1]), { src: '192.0.2.80', dst: '10.200.0.1', sport: 80, dport: 40002, seq: 777, ack: 0, flags: 0x04, len: 40 })
  assert.equal(v4(rs[2]).ack, (0xfffffff0 + 20 + 1) % 2 ** 32, 'payload + FIN, modulo 2^32')
  const p6 = rs[3]
  assert.equal([p6[0] >> 4, be16(p6, 4), p6[6], be16(p6, 40), be16(p6, 42), be32(p6, 48), p6[53], p6.length], [6, 20, 6, 443, 40006, 43, 0x14, 60])
  assert.equal([...p6.subarray(8, 24)], [0x20, 0x01, 0x0d, 0xb8, ...Array(11).fill(0), 0x80], 'from the blocked host')
  assert.is(r.logs.find((l) => l.msg === 'script stats').stats.resets, 4)
})

test('rate-meter.lua: one line a second of the capture, zeros while it is quiet', () => {
  // 3 packets in second 0, 1 in second 1, none in seconds 2-3, 2 in second 4
  const pcap = timedCapture(dir, 'rate.pcap', [0, 100, 900, 1500, 4100, 4200].map((ms) => ({ ms })))
  const r = runSvc({ scriptPath: script('rate-meter.lua'), pcap, dir })
  assert.is(r.status, 0, r.stderr)
  const size = 29 // IPv4 + UDP + 1 byte
  assert.equal(scriptMsgs(r), [
    `rate: 3 packets/s, ${3 * size} bytes/s`, `rate: 1 packets/s, ${size} bytes/s`,
    'rate: 0 packets/s, 0 bytes/s', 'rate: 0 packets/s, 0 bytes/s',
  ])
  assert.equal(services(r), { timers_fired: 4 })
  assert.equal(r.logs.find((l) => l.msg === 'script stats').stats, { packets_per_second: 0, bytes_per_second: 0 })
})

test.run()
