// The protocol example scripts in scripts/, each run by psd (offline) over packets made for it:
// verdicts, marks and edits as their comments say, checksums right after edits.
import { test } from 'uvu'
import * as assert from 'uvu/assert'
import { join } from 'node:path'
import { mkdtempSync, rmSync } from 'node:fs'
import { tmpdir } from 'node:os'
import {
  ipv4, ipv6, tcp, udp, dnsQuery, dnsResponse, httpGet, tlsClientHello, concat, bytes, u16,
} from './lib/packets.js'
import { runPsd, writeRawPcap, psd, ROOT } from './lib/psd.js'
import { readAll } from './lib/pcaptools.js'
import { verify } from '../src/packet/checksum.js'
import { tsharkChecksums } from './lib/tshark.js'

const dir = mkdtempSync(join(tmpdir(), 'psd-30-scripts-'))
const script = (name: string) => join(ROOT, 'scripts', name)

function run(name: string, packets: Uint8Array[], extra: string[] = []) {
  const pcap = writeRawPcap(join(dir, `${name}.pcap`), packets)
  const out = join(dir, `${name}.out.pcap`)
  const r = runPsd({ scriptPath: script(name), pcap, dir, args: ['--write-accepted', out, ...extra] })
  assert.equal(r.status, 0, r.stderr)
  assert.equal(r.summary.faults, 0, r.stderr)
  return { ...r, out }
}

const verdicts = (r: { verdicts: { verdict: string }[] }) => r.verdicts.map((v) => v.verdict)

test('every protocol example loads (psd check)', () => {
  for (const name of ['dns-block.lua', 'http-host-filter.lua', 'tls-sni-filter.lua', 'mss-clamp.lua', 'binary-proto.lua']) {
    const r = psd(['check', script(name)])
    assert.equal(r.status, 0, `${name}: ${r.stderr}`)
  }
})

test('dns-block.lua drops queries for blocked names and names under them', () => {
  const q = (name: string, v6 = false) => (v6 ? ipv6 : ipv4)({}, udp({ sport: 40000, dport: 53, payload: dnsQuery({ qname: name }) }))
  const tcpQ = dnsQuery({ qname: 'tracker.example' })
  const r = run('dns-block.lua', [
    q('ads.example.net'), q('x.ADS.example.net', true), q('example.com'), q('notads.example.net'),
    ipv4({}, udp({ sport: 53, dport: 40000, payload: dnsResponse({ qname: 'ads.example.net' }) })),
    ipv4({}, tcp({ sport: 40001, dport: 53, flags: 'PA', payload: concat(bytes(u16(tcpQ.length)), tcpQ) })),
    ipv4({}, udp({ sport: 40000, dport: 5353, payload: dnsQuery({ qname: 'ads.example.net' }) })),
  ])
  assert.equal(verdicts(r), ['drop', 'drop', 'accept', 'accept', 'accept', 'drop', 'accept'])
})

test('http-host-filter.lua drops requests to blocked hosts, whatever the case and port', () => {
  const get = (host: string) => ipv4({}, tcp({ dport: 80, flags: 'PA', payload: httpGet(host, '/x') }))
  const r = run('http-host-filter.lua', [
    get('blocked.example'), get('Blocked.EXAMPLE:8080'), get('example.com'), get('not-blocked.example'),
    ipv6({}, tcp({ sport: 80, flags: 'PA', payload: 'HTTP/1.1 200 OK\r\nHost: blocked.example\r\n\r\n' })),
    ipv4({}, tcp({ dport: 80, flags: 'PA', payload: 'continuation of a body, Host: blocked.example\r\n' })),
  ])
  assert.equal(verdicts(r), ['drop', 'drop', 'accept', 'accept', 'accept', 'accept'])
  assert.ok(r.logs.some((l: any) => l.msg === 'blocked GET blocked.example/x'), r.stderr)
})

test('tls-sni-filter.lua drops ClientHellos for blocked names', () => {
  const hello = (sni?: string) => ipv4({}, tcp({ dport: 443, flags: 'PA', payload: tlsClientHello({ sni, alpn: ['h2'] }) }))
  const r = run('tls-sni-filter.lua', [hello('blocked.example'), hello('www.ADS.example.net'), hello('ok.example'), hello(undefined),
    hello('xblocked.example')])
  assert.equal(verdicts(r), ['drop', 'drop', 'accept', 'accept', 'accept'])
})

test('mss-clamp.lua clamps (or adds) the MSS of SYNs; checksums right', () => {
  const syn = (o: { v6?: boolean; mss?: number; flags?: string }) => (o.v6 ? ipv6 : ipv4)({},
    tcp({ flags: o.flags ?? 'S', options: o.mss ? [{ kind: 'mss', value: o.mss }, { kind: 'sackperm' }] : [{ kind: 'sackperm' }] }))
  const r = run('mss-clamp.lua', [syn({ mss: 1460 }), syn({ v6: true, mss: 1440 }), syn({}), syn({ mss: 1200 }), syn({ mss: 1460, flags: 'A' }),
    syn({ mss: 1460, flags: 'SA' })])
  assert.equal(r.verdicts.map((v) => v.modified), [true, true, true, false, false, true])
  const out = readAll(r.out).records.map((x) => x.data!)
  const mssOf = (p: Uint8Array) => {
    const l4 = p[0] >> 4 === 6 ? 40 : 20
    for (let i = l4 + 20; i < l4 + (p[l4 + 12] >> 4) * 4;) {
      if (p[i] === 0) break
      if (p[i] === 1) { i++; continue }
      if (p[i] === 2) return (p[i + 2] << 8) | p[i + 3]
      i += p[i + 1]
    }
    return null
  }
  assert.equal(out.map(mssOf), [1360, 1340, 1360, 1200, 1460, 1360])
  for (const p of out) assert.ok(verify(p).ok, JSON.stringify(verify(p)))
  const ts = tsharkChecksums(out, dir, 'mss-clamp')
  if (ts) { assert.equal(ts.bad, []); assert.equal(ts.good, out.length) }
})

test('binary-proto.lua: the defined protocol drops, marks and rewrites', () => {
  const msg = (version: number, kind: number, urgent: boolean, sensor: number, reading: number, name: string) => {
    const b = new Uint8Array(9 + name.length + 3)
    b[0] = version << 4 | kind; b[1] = urgent ? 0x80 : 0
    b.set(u16(sensor), 2); new DataView(b.buffer).setInt32(4, reading, true)
    b[8] = name.length; b.set(bytes(name), 9); b.set([1, 2, 3], 9 + name.length)
    return ipv4({}, udp({ sport: 5000, dport: 9999, payload: b }))
  }
  const r = run('binary-proto.lua', [msg(1, 1, false, 3, 2150, 'hall'), msg(2, 1, false, 3, 0, 'x'), msg(1, 1, true, 4, -500, 'roof'),
    msg(1, 1, false, 7, 100, 'lab'), ipv4({}, udp({ dport: 9998, payload: 'other' }))], ['--log-format', 'json'])
  assert.equal(verdicts(r), ['accept', 'drop', 'accept', 'accept', 'accept'])
  assert.equal(r.verdicts.map((v: any) => v.mark), [0, 0, 1, 0, 0])
  assert.equal(r.verdicts.map((v: any) => v.modified), [false, false, false, true, false])
  const out = readAll(r.out).records.map((x) => x.data!)
  assert.equal(out[2][28], 0x12) // sensor 7: version 1, kind 2
  assert.ok(verify(out[2]).ok)
  const ts = tsharkChecksums(out, dir, 'binary-proto')
  if (ts) { assert.equal(ts.bad, []); assert.equal(ts.good, out.length) }
})

test.after(() => rmSync(dir, { recursive: true, force: true }))
test.run()
