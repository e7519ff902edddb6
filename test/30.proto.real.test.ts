// The "done when": real traffic made by real tools in network namespaces (ping and
// ping -6 with fragments, curl against python's http.server, dig against dnsmasq over UDP,
// TCP and IPv6, TLS ClientHellos from openssl s_client and curl, UDP with nc, an ICMP error
// and a RST), captured by tcpdump; psd's fields compared with tshark's for every packet; then
// edits through protocol-object fields, with tshark checking every checksum of the result.
// Needs root (network namespaces): skipped with a message otherwise, except under CI=true.
import { test } from 'uvu'
import * as assert from 'uvu/assert'
import { mkdtempSync, rmSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { realTrafficUnavailable, captureRealTraffic, type RealCapture } from './lib/capture.js'
import { hasTshark, compareWithTshark, editAndCheck, tsharkRows, EDITS } from './lib/tshark.js'
import { runPsd } from './lib/psd.js'

const dir = mkdtempSync(join(tmpdir(), 'psd-30-real-'))
const why = realTrafficUnavailable() ?? (hasTshark() ? null : 'tshark is not installed')
let cap: RealCapture | null = null

test.before(async () => {
  if (why) {
    if (process.env.CI === 'true') throw new Error(`CI must run the real-traffic test, but: ${why}`)
    console.log(`  skipped: ${why}`)
    return
  }
  cap = await captureRealTraffic(dir)
})

test('the tools made the traffic', () => {
  if (!cap) return
  const failed = cap.steps.filter((s) => s.status !== 0 && !/closed port|unknown/.test(s.name))
  assert.equal(failed.map((s) => `${s.name}: ${s.out}`), [])
})

test('every field of every real packet matches tshark', () => {
  if (!cap) return
  const c = compareWithTshark(cap.pcap, dir)
  if (c.mismatches.length) console.log(JSON.stringify(c.mismatches.slice(0, 10), null, 1))
  assert.equal(c.mismatches.length, 0, `${c.mismatches.length} of ${c.frames} frames differ`)
  for (const obj of ['ip', 'tcp', 'udp', 'icmp', 'icmp6', 'dns', 'http', 'tls']) assert.ok((c.seen[obj] ?? 0) > 0, `no ${obj} packet captured`)
  console.log(`  ${c.frames} frames compared: ${JSON.stringify(c.seen)}`)
})

test('the capture has what each tool sent, as psd reads it', () => {
  if (!cap) return
  const { addr, names } = cap
  const r = runPsd({ pcap: cap.pcap, dir, script: `
function on_packet(pkt)
  local d, h, t, i = pkt.dns, pkt.http, pkt.tls, pkt.icmp or pkt.icmp6
  if d and d.qr then for _, a in ipairs(d.answers) do print('dns ' .. d.qname .. ' ' .. a.type .. ' ' .. tostring(a.data)) end end
  if h and h.request then print('http ' .. h.method .. ' ' .. tostring(h.host) .. ' ' .. h.uri) end
  if t then print('tls ' .. tostring(t.sni) .. ' ' .. table.concat(t.alpn, ',')) end
  if i then print('icmp ' .. pkt.ip.version .. ' ' .. i.type .. ' ' .. (pkt.ip.mf and 'mf' or '-')) end
  if pkt.udp and pkt.udp.dstport >= 9998 then print('udp ' .. pkt.udp.payload) end
  if pkt.tcp and pkt.tcp.rst then print('rst') end
end` })
  assert.equal(r.status, 0, r.stderr)
  const lines = new Set(r.logs.filter((l: any) => l.source === 'script').map((l: any) => l.msg))
  for (const want of [
    `dns ${names.a} 1 10.9.9.9`, `dns ${names.aaaa} 28 fd00::9:9`, `dns ${names.cname} 5 ${names.a}`, `dns ${names.mx} 15 mail.${names.mx}`,
    `dns ${names.txt} 16 hello worldsecond string`,
    `http GET ${addr.server4}:8080 /`, `http GET [${addr.server6}]:8080 /index.html?x=1`, `http GET ${names.a} /missing`, `http HEAD ${addr.server4}:8080 /`,
    `tls ${names.sni} h2,http/1.1`, `icmp 4 8 -`, `icmp 4 0 -`, `icmp 6 128 -`, `icmp 6 129 -`, 'icmp 4 8 mf', 'icmp 6 128 mf', 'icmp 4 3 -',
    'udp hello over udp\n', 'udp hello over udp6\n', 'rst',
  ]) assert.ok(lines.has(want), `missing: ${JSON.stringify(want)} in ${JSON.stringify([...lines].slice(0, 80))}`)
})

test('after every edit tshark reports the checksums good', () => {
  if (!cap) return
  for (const [name, script] of Object.entries(EDITS)) {
    const c = editAndCheck(cap.pcap, script, dir, name)
    assert.ok(c.modified > (name.startsWith('ttl') ? 100 : 3), `${name}: ${c.modified} packets modified`)
    assert.equal(c.bad.slice(0, 5), [], `${name}: ${c.bad.length} of ${c.modified} modified packets with bad checksums`)
    assert.ok(c.good >= c.modified - 8, `${name}: only ${c.good} of ${c.modified} verified good`) // (non-first fragments: unverifiable)
  }
  const rows = tsharkRows(join(dir, 'ttl-addresses-ports-flags-mss.accepted.pcap'), { fields: ['ip.ttl', 'ipv6.hlim', 'ip.dst', 'ipv6.dst', 'tcp.flags.syn', 'tcp.options.mss_val', 'icmp.type'] })
  for (const r of rows) {
    assert.equal(r['ip.ttl'][0] ?? r['ipv6.hlim'][0], '1')
    assert.ok(r['ip.dst'][0] === '10.0.0.2' || r['ipv6.dst'][0] === 'fd00:ffff::2')
  }
  const clamp = tsharkRows(join(dir, 'mss-clamp-adds-the-option-where-missing-.accepted.pcap'), { fields: ['tcp.flags.syn', 'tcp.options.mss_val', 'icmp.type'] })
  const syns = clamp.filter((r) => r['tcp.flags.syn'][0] === '1' && !r['icmp.type'].length)
  assert.ok(syns.length >= 10, `${syns.length} SYNs`)
  for (const r of syns) assert.equal(r['tcp.options.mss_val'][0], '1200')
})

test.after(() => rmSync(dir, { recursive: true, force: true }))
test.run()
