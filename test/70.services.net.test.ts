// net.send offline (API.md sections 6 and 9): only for tenants that may send (a clear error
// otherwise); the packets go to --write-sent (raw-IP pcap, stamped with the capture time) with
// lengths and checksums made right; IPv4 and IPv6, built from bytes or from pkt:copy(); bad
// packets are errors; the per-tenant rate limit (1000/s, bursts of 200) makes net.send return false.
import { test } from 'uvu'
import * as assert from 'uvu/assert'
import { join } from 'node:path'
import { writeFileSync, existsSync } from 'node:fs'
import { psd, tempDir, readPcap } from './lib/psd.js'
import { ipv4, ipv6, udp, tcp, icmpEcho } from './lib/packets.js'
import { timedCapture, scriptMsgs, services, callbackFaults, ns, T0, runSvc } from './lib/services.js'
import { verify } from '../src/packet/checksum.js'
import { hasTshark, tsharkFields } from './lib/pcaptools.js'

const dir = tempDir('psd-net-')
const pcap = timedCapture(dir, 'five.pcap', [0, 1000, 2000, 3000, 4000].map((ms) => ({ ms })))
const NOT_ALLOWED = 'net.send: this tenant may not send (allow it with --allow-send or "send": true)'

test('a tenant without permission cannot send: a clear error at the call (the fault verdict), counted', () => {
  const script = 'function on_packet(pkt)\n  net.send(pkt:copy())\n  return DROP\nend'
  const sent = join(dir, 'refused.pcap')
  const r = runSvc({ script, pcap, dir, args: ['--write-sent', sent] })
  assert.is(r.status, 0, r.stderr)
  assert.ok(r.verdicts.every((v) => v.verdict === 'accept' && v.fault === 'error'))
  const err = r.logs.find((l) => l.fault === 'error')
  assert.is(err.msg, `${join(dir, 'script.lua')}:2: ${NOT_ALLOWED}`)
  assert.ok(r.logs.some((l) => l.level === 'warn' && /--write-sent: this tenant may not send/.test(l.msg)))
  assert.equal(services(r), { send_refused: 5 })
  assert.equal(readPcap(sent), [])
  // the same from a timer: the callback's fault, logged with the same message
  const t = runSvc({ script: 'timer.after(10, function() net.send(("x"):rep(20)) end)\nfunction on_packet() end', pcap, dir })
  assert.equal(callbackFaults(t).map((f) => f.msg.replace(/^.*?:\d+: /, '')), [NOT_ALLOWED])
})

test('--allow-send: packets go to --write-sent with lengths and checksums made right, stamped with the capture time', () => {
  const script = `
function on_packet(pkt)
  local r = pkt:copy()
  r.ip.src, r.ip.dst = pkt.ip.dst, pkt.ip.src
  r.udp.srcport, r.udp.dstport = pkt.udp.dstport, pkt.udp.srcport
  r:remove(28, r.len - 28)
  r:insert(28, "reply")                     -- a new payload: the lengths and checksums must follow
  print("sent", net.send(r))
  -- built from nothing: IPv4 header with zero length and checksum, a UDP datagram after it
  local raw = string.pack(">BBI2I2I2BBI2", 0x45, 0, 0, 7, 0, 9, 17, 0) .. pkt:bytes(16, 4) .. pkt:bytes(12, 4)
    .. string.pack(">I2I2I2I2", 53, 5353, 0, 0xffff) .. "built"
  net.send(raw)
  return DROP
end`
  const sent = join(dir, 'sent.pcap')
  const r = runSvc({ script, pcap, dir, args: ['--allow-send', '--write-sent', sent] })
  assert.is(r.status, 0, r.stderr)
  assert.ok(r.verdicts.every((v) => v.verdict === 'drop' && v.fault === null))
  assert.equal(scriptMsgs(r), Array(5).fill('sent\ttrue'))
  assert.equal(services(r), { sent: 10 })
  const recs = readPcap(sent)
  assert.is(recs.length, 10)
  recs.forEach((rec, i) => {
    const k = i >> 1
    assert.equal([rec.sec, rec.nsec], [T0 + k, 0], 'timestamp = the capture time of the packet that sent it')
    const st = verify(rec.data)
    assert.ok(st.ok && st.ip === true && st.udp === true && st.lengths === true, JSON.stringify(st))
    assert.is(rec.origlen, rec.data.length)
  })
  assert.equal([...recs[0].data.subarray(12, 20)], [192, 0, 2, 2, 192, 0, 2, 1], 'addresses swapped')
  assert.is(Buffer.from(recs[0].data.subarray(28, 33)).toString(), 'reply')
  assert.is(Buffer.from(recs[1].data.subarray(28)).toString(), 'built')
  if (hasTshark()) {
    const rows = tsharkFields(sent, ['ip.src', 'ip.dst', 'udp.dstport', 'ip.checksum.status', 'udp.checksum.status'],
      ['-o', 'ip.check_checksum:TRUE', '-o', 'udp.check_checksum:TRUE'])
    assert.equal(rows[0], ['192.0.2.2', '192.0.2.1', '1000', '1', '1']) // status 1: good
    assert.equal(rows[1], ['192.0.2.2', '192.0.2.1', '5353', '1', '1'])
  }
})

test('IPv6, TCP and ICMP packets; the live pkt itself (its bytes now) may be sent', () => {
  const packets = [
    ipv6({ src: '2001:db8::1', dst: '2001:db8::2' }, tcp({ sport: 4000, dport: 80, flags: 'S', seq: 77 })),
    ipv4({ src: '10.1.0.1', dst: '10.1.0.2' }, icmpEcho({ id: 9, seq: 3 })),
  ]
  const cap = timedCapture(dir, 'mixed.pcap', packets.map((data, i) => ({ ms: i, data })))
  const script = `
function on_packet(pkt)
  if pkt.tcp then pkt.tcp.dstport = 8080 end
  if pkt.icmp then pkt.icmp.type = 0 end
  net.send(pkt)                -- the packet as edited so far
  return DROP
end`
  const sent = join(dir, 'sent6.pcap')
  const r = runSvc({ script, pcap: cap, dir, args: ['--allow-send', '--write-sent', sent] })
  assert.is(r.status, 0, r.stderr)
  const recs = readPcap(sent)
  assert.is(recs.length, 2)
  const a = verify(recs[0].data), b = verify(recs[1].data)
  assert.ok(a.ok && a.family === 6 && a.tcp === true, JSON.stringify(a))
  assert.ok(b.ok && b.family === 4 && b.icmp === true, JSON.stringify(b))
  assert.is((recs[0].data[42] << 8) | recs[0].data[43], 8080)
  assert.is(recs[1].data[20], 0)
})

test('what cannot be sent is an error at the call', () => {
  const cases: [string, RegExp][] = [
    ['net.send("hello")', /net\.send: not an IPv4 or IPv6 packet \(version 6\)|net\.send: not a whole IPv6 header/],
    ['net.send("\\x45" .. ("\\0"):rep(10))', /net\.send: not a whole IPv4 header \(11 bytes, header length 20\)/],
    ['net.send("\\x4f" .. ("\\0"):rep(30))', /net\.send: not a whole IPv4 header \(31 bytes, header length 60\)/],
    ['net.send("\\x60" .. ("\\0"):rep(20))', /net\.send: not a whole IPv6 header \(21 bytes\)/],
    ['net.send("\\x10" .. ("\\0"):rep(40))', /net\.send: not an IPv4 or IPv6 packet \(version 1\)/],
    ['net.send("")', /net\.send: empty packet/],
    ['net.send("\\x45" .. ("\\0"):rep(70000))', /net\.send: packet of 70001 bytes \(at most 65535\)/],
    ['net.send(42)', /net\.send: packet bytes \(a string\) or a packet object expected, got number/],
    ['net.send()', /net\.send: packet bytes \(a string\) or a packet object expected, got nil/],
  ]
  for (const [call, re] of cases) {
    const r = runSvc({ script: `function on_packet(pkt)\n  ${call}\nend`, pcap, dir, args: ['--allow-send'] })
    assert.ok(r.verdicts.every((v) => v.fault === 'error'), call)
    assert.match(r.logs.find((l) => l.fault === 'error').msg, new RegExp('script\\.lua:2: (' + re.source + ')'), call)
  }
  // a packet kept past its call is dead
  const r = runSvc({ script: 'local last\nfunction on_packet(pkt)\n  if last then net.send(last) end\n  last = pkt\nend', pcap, dir, args: ['--allow-send'] })
  assert.match(r.logs.find((l) => l.fault === 'error').msg, /script\.lua:3: net\.send: packet used after its call returned \(send a pkt:copy\(\)\)/)
})

test('the rate limit: bursts of 200, refilled at 1000 per second of the capture; over it net.send returns false (counted, logged)', () => {
  // packets at 0, 1 ms, 100 ms, 1000 ms, 1000 ms
  const cap = timedCapture(dir, 'rate.pcap', [0, 1, 100, 1000, 1000].map((ms) => ({ ms })))
  const script = `
function on_packet(pkt)
  local ok, refused = 0, 0
  for i = 1, 250 do
    if net.send(pkt:copy()) then ok = ok + 1 else refused = refused + 1 end
  end
  print(pkt.id, ok, refused)
end`
  const sent = join(dir, 'rate-sent.pcap')
  const r = runSvc({ script, pcap: cap, dir, args: ['--allow-send', '--write-sent', sent, '--timeout-ms', '5000'] })
  assert.is(r.status, 0, r.stderr)
  // 200 (the burst); +1 token after 1 ms; +99 after 99 ms more; full (200) after 900 ms; empty again
  assert.equal(scriptMsgs(r), ['1\t200\t50', '2\t1\t249', '3\t99\t151', '4\t200\t50', '5\t0\t250'])
  assert.equal(services(r), { sent: 500, send_limited: 750 })
  assert.is(readPcap(sent).length, 500)
  const warns = r.logs.filter((l) => l.event === 'send_limited')
  assert.ok(warns.length >= 1 && warns.length <= 101, `logged without flooding (${warns.length} lines)`)
  assert.match(warns[0].msg, /over the rate limit \(1000\/s, bursts of 200\)/)
})

test('sending from timers and deferred calls: stamped with the timer\'s due time and the batch\'s time', () => {
  const script = `
timer.after(1500, function() net.send(string.pack(">BBI2I2I2BBI2", 0x45, 0, 0, 1, 0, 9, 253, 0) .. ("\\0"):rep(8)) end)
function on_packet(pkt)
  if pkt.id == 4 then defer(function(p) net.send(p) end, pkt:copy()) end
end`
  const sent = join(dir, 'cb-sent.pcap')
  const r = runSvc({ script, pcap, dir, args: ['--allow-send', '--write-sent', sent, '--batch', '1'] })
  assert.is(r.status, 0, r.stderr)
  const recs = readPcap(sent)
  assert.equal(recs.map((x) => [x.sec, x.nsec]), [[T0 + 1, 500_000_000], [T0 + 3, 0]])
  assert.ok(verify(recs[0].data).ok)
})

test('a config file with "send": true allows sending; {tenant} names each tenant\'s --write-sent file', () => {
  const a = join(dir, 'a.lua'), b = join(dir, 'b.lua')
  writeFileSync(a, 'function on_packet(pkt) net.send(pkt) end')
  writeFileSync(b, 'function on_packet(pkt) net.send(pkt) end')
  const cfg = join(dir, 'psd.json')
  writeFileSync(cfg, JSON.stringify({ tenants: [{ name: 'yes', script: a, send: true }, { name: 'no', script: b, queue: 1 }] }))
  const r = psd(['--config', cfg, '--pcap', pcap, '--write-sent', join(dir, 'sent-{tenant}.pcap')], { dir })
  assert.is(r.status, 0, r.stderr)
  assert.is(readPcap(join(dir, 'sent-yes.pcap')).length, 5)
  assert.is(readPcap(join(dir, 'sent-no.pcap')).length, 0)
  assert.ok(r.logs.some((l) => l.tenant === 'no' && l.fault === 'error' && l.msg.endsWith(NOT_ALLOWED)))
  // several tenants without {tenant}: a load error naming the option
  const bad = psd(['--config', cfg, '--pcap', pcap, '--write-sent', join(dir, 'one.pcap')], { dir })
  assert.is(bad.status, 1)
  assert.match(bad.stderr, /--write-sent .*one\.pcap: with several tenants the file name must contain \{tenant\}/)
  assert.not.ok(existsSync(join(dir, 'one.pcap')))
})

test('--allow-send without --write-sent: sends are allowed and counted, and nothing leaves offline', () => {
  const r = runSvc({ script: 'function on_packet(pkt) assert(net.send(pkt)) end', pcap, dir, args: ['--allow-send'] })
  assert.is(r.status, 0, r.stderr)
  assert.ok(r.verdicts.every((v) => v.fault === null))
  assert.equal(services(r), { sent: 5 })
})

test.run()
