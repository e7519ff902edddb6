// PcapWriter: nanosecond raw-IP pcap, round trip through the reader and through tshark.
import { test } from 'uvu'
import * as assert from 'uvu/assert'
import { readFileSync, openSync, closeSync } from 'node:fs'
import { PcapWriter, LINKTYPE_RAW } from '../src/pcap/writer.js'
import { openCapture } from '../src/pcap/reader.js'
import { ipv4, ipv6, tcp, udp, icmpEcho, mixedPackets, LINK } from './lib/packets.js'
import { tempDir, readAll, hasTshark, tsharkFields } from './lib/pcaptools.js'

const tmp = tempDir('psd-41-')

test('header: nanosecond magic, version 2.4, snaplen 262144, link type 101', () => {
  const path = tmp.path('empty.pcap')
  new PcapWriter(path).close()
  const b = readFileSync(path)
  assert.is(b.length, 24)
  assert.is(b.readUInt32LE(0), 0xa1b23c4d)
  assert.is(b.readUInt16LE(4), 2)
  assert.is(b.readUInt16LE(6), 4)
  assert.is(b.readUInt32LE(16), 262144)
  assert.is(b.readUInt32LE(20), LINKTYPE_RAW)
  const { records, error } = readAll(path)
  assert.is(error, null)
  assert.is(records.length, 0)
})

test('round trip: data, timestamps and original lengths are kept', () => {
  const path = tmp.path('rt.pcap')
  const pk = [
    { sec: 1700000000, nsec: 123456789, data: ipv4({ ttl: 3 }, tcp({ flags: 'S' })), origlen: 44 },
    { sec: 0, nsec: 0, data: ipv6({}, udp({ payload: 'abc' })), origlen: 1500 },
    { sec: 4294967295, nsec: 999999999, data: ipv4({}, icmpEcho({})), origlen: 60 },
  ]
  const w = new PcapWriter(path)
  for (const p of pk) w.write(p.sec, p.nsec, p.data, p.origlen)
  assert.is(w.count, 3)
  w.close()
  w.close() // twice is fine
  const cap = openCapture(path)
  assert.is(cap.linktype, 101)
  const { records, error } = readAll(path)
  assert.is(error, null)
  assert.is(records.length, 3)
  records.forEach((r, i) => {
    assert.equal(Array.from(r.data!), Array.from(pk[i].data))
    assert.is(r.sec, pk[i].sec)
    assert.is(r.nsec, pk[i].nsec)
    // the reader clamps origlen to the IP header's length (the raw file keeps it, below)
    assert.is(r.origlen, pk[i].data.length)
  })
  const raw = readFileSync(path)
  assert.is(raw.readUInt32LE(24 + 12), 44)
  assert.is(raw.readUInt32LE(24 + 16 + pk[0].data.length + 12), 1500)
})

test('nsec >= 1e9 is carried into seconds; origlen below the data length becomes the data length', () => {
  const path = tmp.path('carry.pcap')
  const w = new PcapWriter(path)
  const p = ipv4({}, udp({}))
  w.write(10, 2500000000, p)
  w.write(10, 5, p, 3)
  w.close()
  const raw = readFileSync(path)
  assert.is(raw.readUInt32LE(24), 12)
  assert.is(raw.readUInt32LE(28), 500000000)
  assert.is(raw.readUInt32LE(24 + 16 + p.length + 12), p.length)
})

test('many records through a small buffer; packets longer than the snap length are cut', () => {
  const path = tmp.path('many.pcap')
  const w = new PcapWriter(path, { bufferSize: 4096, snaplen: 1000 })
  const want = [...mixedPackets(3000, 9)]
  for (const p of want) w.write(p.sec, p.nsec, p.data)
  w.close()
  const { records, error } = readAll(path)
  assert.is(error, null)
  assert.is(records.length, want.length)
  records.forEach((r, i) => {
    const p = want[i]
    const held = p.data.subarray(0, 1000)
    if (r.sec !== p.sec || r.nsec !== p.nsec || Buffer.compare(r.data!, held) !== 0 || r.origlen !== p.data.length) assert.unreachable(`record ${i + 1} differs`)
  })
})

test('writing to a descriptor leaves it open; write after close throws', () => {
  const path = tmp.path('fd.pcap')
  const fd = openSync(path, 'w')
  const w = new PcapWriter(fd, { linktype: LINK.ETHERNET })
  w.close()
  closeSync(fd) // still open: closing it here must not throw
  assert.is(readFileSync(path).readUInt32LE(20), 1)
  assert.throws(() => w.write(0, 0, new Uint8Array(20)), /after close/)
})

test('tshark reads the written file: raw IP, ns timestamps, lengths, fields', () => {
  if (!hasTshark()) { console.log('  (tshark not found: skipped)'); return }
  const path = tmp.path('tshark.pcap')
  const w = new PcapWriter(path)
  const want = [...mixedPackets(300, 11)]
  for (const p of want) w.write(p.sec, p.nsec, p.data)
  // and one truncated record with a larger original length
  const big = ipv4({ src: '192.0.2.77' }, udp({ dport: 9999, payload: new Uint8Array(1200) }))
  w.write(1700000999, 1, big.subarray(0, 100), big.length)
  w.close()
  const rows = tsharkFields(path, ['frame.encap_type', 'frame.time_epoch', 'frame.len', 'frame.cap_len', 'ip.version', 'ipv6.src', 'ip.src'])
  assert.is(rows.length, want.length + 1)
  rows.forEach((row, i) => {
    const p = i < want.length ? { ...want[i], orig: want[i].data.length } : { sec: 1700000999, nsec: 1, data: big.subarray(0, 100), orig: big.length }
    assert.is(row[0], '7', 'encapsulation: raw IP') // WTAP_ENCAP_RAW_IP
    const [s, f] = row[1].split('.')
    assert.is(Number(s), p.sec)
    assert.is(Number(f.padEnd(9, '0')), p.nsec, `ns timestamp of frame ${i + 1}`)
    assert.is(Number(row[2]), p.orig)
    assert.is(Number(row[3]), p.data.length)
  })
  assert.is(rows[rows.length - 1][6], '192.0.2.77')
})

test.after(() => tmp.cleanup())
test.run()
