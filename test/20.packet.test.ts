// The packet object of API.md section 3: metadata, raw reads, edits and their out-of-range
// errors, copies, stale packets, and the checksum fix-up on accept (checked by an independent
// recomputation here, and by tshark where it is installed).
import { test } from 'uvu'
import * as assert from 'uvu/assert'
import { join } from 'node:path'
import { spawnSync } from 'node:child_process'
import { runPsd, tempDir, writeRawPcap, readPcap } from './lib/psd.js'
import { ipv4, ipv6, udp, tcp, icmpEcho, icmp6Echo } from './lib/packets.js'

const dir = tempDir()
const v4udp = ipv4({ src: '192.0.2.1', dst: '192.0.2.2', ttl: 64, id: 0x1234 }, udp({ sport: 5353, dport: 9999, payload: 'hello world' }))
const v4tcp = ipv4({ src: '198.51.100.7', dst: '203.0.113.9', ttl: 63 }, tcp({ sport: 40000, dport: 80, flags: 'PA', payload: 'GET / HTTP/1.1\r\nHost: a\r\n\r\n' }))
const v6udp = ipv6({ src: '2001:db8::1', dst: '2001:db8::2', hopLimit: 55 }, udp({ sport: 1, dport: 2, payload: 'v6 data' }))
const v4icmp = ipv4({ src: '10.1.1.1', dst: '10.1.1.2' }, icmpEcho({ id: 3, seq: 4, payload: 'ping!' }))
const v6icmp = ipv6({ src: 'fe80::1', dst: 'fe80::2' }, icmp6Echo({ id: 5, seq: 6, payload: 'ping6' }))
const all = [v4udp, v4tcp, v6udp, v4icmp, v6icmp]
const pcap = writeRawPcap(join(dir, 'mix.pcap'), all)

function out(r: { logs: any[] }): string[] {
  return r.logs.filter((l) => l.source === 'script').map((l) => l.msg)
}

test('raw reads return big-endian integers and byte strings of this packet only', () => {
  const r = runPsd({
    script: `function on_packet(p)
      print(p:u8(0), p:u16(2), p:u32(12), p:u16le(2), p:u32le(12), #p:bytes(0), p:bytes(p.len - 2), p:bytes(0, 0) == "")
    end`, pcap, dir,
  })
  assert.is(r.status, 0, r.stderr)
  const lines = out(r)
  const b = Buffer.from(v4udp)
  assert.is(lines[0], [b[0], b.readUInt16BE(2), b.readUInt32BE(12), b.readUInt16LE(2), b.readUInt32LE(12), b.length, 'ld', 'true'].join('\t'))
  assert.is(lines.length, all.length)
})

test('find searches only the packet, plainly, from an offset', () => {
  const r = runPsd({
    script: `function on_packet(p)
      print(p:find("hello"), p:find("world", 30), p:find("xyz"), p:find("."), p:find("hello", p.len))
    end`, pcap: writeRawPcap(join(dir, 'one.pcap'), [v4udp]), dir,
  })
  assert.equal(out(r), ['28\t34\tnil\tnil\tnil'])
})

test('out-of-range and non-integer offsets raise errors naming the call and the script line', () => {
  const cases = ['p:u8(-1)', 'p:u8(p.len)', 'p:u16(p.len - 1)', 'p:u32(p.len - 3)', 'p:u8(1.5)', 'p:u8("1")', 'p:bytes(0, p.len + 1)',
    'p:bytes(p.len + 1)', 'p:set_u8(p.len, 1)', 'p:set_u8(0, 256)', 'p:set_u16(0, -1)', 'p:set_u32(0, 2^32)',
    'p:write(p.len - 1, "ab")', 'p:insert(p.len + 1, "x")', 'p:remove(0, p.len + 1)', 'p:find("x", -1)', 'p:set_u8(0, 1.5)']
  const script = `local cases = { ${cases.map((c) => `function(p) local r = ${c}; return r end`).join(',\n')} }
function on_packet(p)
  for i, f in ipairs(cases) do
    local ok, err = pcall(f, p)
    print(i, ok, err)
  end
end`
  const r = runPsd({ script, pcap: writeRawPcap(join(dir, 'one.pcap'), [v4udp]), dir })
  assert.is(r.status, 0, r.stderr)
  const lines = out(r)
  assert.is(lines.length, cases.length)
  lines.forEach((l, i) => {
    const [, ok, err] = l.split('\t')
    assert.is(ok, 'false', `${cases[i]} should fail`)
    assert.match(err, new RegExp(`script\\.lua:${i + 1}: pkt:`), `${cases[i]}: ${err}`)
  })
})

// One's complement checksum, written here independently of src/packet/checksum.ts.
function csum(parts: Buffer[]): number {
  let s = 0
  for (const b of parts) for (let i = 0; i < b.length; i += 2) s += (b[i] << 8) + (i + 1 < b.length ? b[i + 1] : 0)
  while (s > 0xffff) s = (s & 0xffff) + (s >>> 16)
  return (~s) & 0xffff
}
function checksOk(p: Buffer): boolean {
  const v = p[0] >> 4
  if (v === 4) {
    const hl = (p[0] & 15) * 4
    if (csum([p.subarray(0, hl)]) !== 0 || p.readUInt16BE(2) !== p.length) return false
    const proto = p[9], l4 = p.subarray(hl)
    const pseudo = Buffer.concat([p.subarray(12, 20), Buffer.from([0, proto, l4.length >> 8, l4.length & 255])])
    if (proto === 17 && l4.readUInt16BE(4) !== l4.length) return false
    if (proto === 6 || proto === 17) return csum([pseudo, l4]) === 0
    if (proto === 1) return csum([l4]) === 0
    return true
  }
  const l4 = p.subarray(40), nh = p[6]
  if (p.readUInt16BE(4) !== l4.length) return false
  const pseudo = Buffer.concat([p.subarray(8, 40), Buffer.from([0, 0, l4.length >> 8, l4.length & 255, 0, 0, 0, nh])])
  return csum([pseudo, l4]) === 0
}

test('edits: set_*, write, insert, remove; lengths and checksums made right on accept', () => {
  const script = `function on_packet(p)
  local v = p:u8(0) >> 4
  local l4 = v == 4 and (p:u8(0) & 15) * 4 or 40
  if v == 4 then p:set_u8(8, p:u8(8) - 1) else p:set_u8(7, 1) end     -- TTL / hop limit
  p:set_u16(l4, 4242)                                                  -- source port or ICMP type/code
  p:set_u32(p.len - 4, 0x41424344)                                     -- last 4 payload bytes
  p:write(p.len - 6, "zz")
  p:insert(p.len, "tail!")                                             -- grows the packet
  p:remove(p.len - 2, 2)
  assert(p:bytes(p.len - 3) == "tai")
  return ACCEPT
end`
  const acc = join(dir, 'acc.pcap')
  const r = runPsd({ script, pcap, dir, args: ['--write-accepted', acc] })
  assert.is(r.status, 0, r.stderr)
  assert.ok(r.verdicts.every((v) => v.modified && v.verdict === 'accept'))
  assert.is(r.summary.modified, all.length)
  const written = readPcap(acc)
  assert.is(written.length, all.length)
  written.forEach((w, i) => {
    assert.is(w.data.length, all[i].length + 3)
    assert.is(w.origlen, all[i].length + 3, 'original length follows the edit')
    assert.is(w.sec, 1_700_000_000 + i, 'timestamps kept')
    assert.ok(checksOk(w.data), `checksums of packet ${i + 1}`)
    assert.is(w.data.subarray(w.data.length - 3).toString(), 'tai')
  })
  const tshark = spawnSync('tshark', ['-v'], { encoding: 'utf8' })
  if (tshark.status === 0) {
    const t = spawnSync('tshark', ['-r', acc, '-o', 'ip.check_checksum:TRUE', '-o', 'tcp.check_checksum:TRUE', '-o', 'udp.check_checksum:TRUE',
      '-T', 'fields', '-e', 'ip.checksum.status', '-e', 'tcp.checksum.status', '-e', 'udp.checksum.status', '-e', 'icmp.checksum.status', '-e', 'icmpv6.checksum.status'], { encoding: 'utf8' })
    const rows = t.stdout.trim().split('\n')
    assert.is(rows.length, all.length, t.stderr)
    for (const row of rows) {
      const st = row.split('\t').filter(Boolean)
      assert.ok(st.length >= 1 && st.every((s) => s === '1' || s === 'Good'), `tshark checksum status: ${row}`)
    }
  } else {
    console.log('  (tshark not installed: checked by recomputation only)')
  }
})

test('a packet changed and changed back is not modified; pkt:checksum() fixes on demand', () => {
  const script = `function on_packet(p)
  local t = p:u8(8)
  p:set_u8(8, 1); p:set_u8(8, t)
  if p:u8(0) >> 4 == 4 then
    p:set_u16(10, 0)         -- break the header checksum
    p:checksum()             -- and have it recomputed
    assert(p:u16(10) ~= 0)
  end
end`
  const r = runPsd({ script, pcap, dir })
  assert.is(r.status, 0, r.stderr)
  assert.ok(r.verdicts.every((v) => !v.modified && v.fault === null), JSON.stringify(r.verdicts))
})

test('edits of a dropped or faulted packet: a fault discards the edits', () => {
  const acc = join(dir, 'acc2.pcap')
  const r = runPsd({ script: 'function on_packet(p) p:set_u8(8, 9) error("late") end', pcap, dir, args: ['--write-accepted', acc] })
  assert.is(r.status, 0)
  assert.ok(r.verdicts.every((v) => v.fault === 'error' && !v.modified && v.verdict === 'accept'))
  const w = readPcap(acc)
  w.forEach((x, i) => assert.ok(Buffer.from(all[i]).equals(x.data), 'sent back as received'))
})

test('pkt is valid during the call only; copies are independent and keep the API', () => {
  const script = `local kept, copy
function on_packet(p)
  if kept then
    local ok, err = pcall(function() return kept:u8(0) end)
    print(ok, err)
    ok, err = pcall(function() return kept.len end)
    print(ok, err)
  end
  kept = p
  local c = p:copy()
  c:set_u8(8, 1)
  print(c:u8(8) == 1, p:u8(8) ~= 1, c.len == p.len, c.id)
end`
  const r = runPsd({ script, pcap: writeRawPcap(join(dir, 'two.pcap'), [v4udp, v4tcp]), dir })
  const lines = out(r)
  assert.is(lines[0], 'true\ttrue\ttrue\tnil')
  assert.match(lines[1], /^false\t.*packet used after its call returned/)
  assert.match(lines[2], /^false\t.*packet used after its call returned/)
  assert.ok(r.verdicts.every((v) => !v.modified), 'editing a copy does not modify the packet')
})

test('pkt fields that cannot be set raise an error', () => {
  const r = runPsd({ script: 'function on_packet(p) local ok, e = pcall(function() p.len = 3 end) print(ok, e) p.foo = 1 end', pcap: writeRawPcap(join(dir, 'one.pcap'), [v4udp]), dir })
  assert.match(out(r)[0], /^false\t.*pkt\.len cannot be set/)
  assert.is(r.verdicts[0].fault, 'error')
})

test('the sandbox has exactly the documented globals', () => {
  const script = `function on_packet() end
local names = {}
for k in pairs(_G) do names[#names + 1] = k end
table.sort(names)
print(table.concat(names, " "))
print(string.dump, load, loadstring, loadfile, dofile, require, io, os, debug, package, coroutine, collectgarbage)
print(getmetatable("").__index == string, ("x"):rep(3), unpack({1, 2})) `
  const r = runPsd({ script, pcap: writeRawPcap(join(dir, 'one.pcap'), [v4udp]), dir })
  const [globals, absent, misc] = out(r)
  const expected = ['ACCEPT', 'DROP', 'NF_ACCEPT', 'NF_DROP', 'REPEAT', '_G', '_VERSION', 'assert', 'bit', 'bytes', 'error',
    'getmetatable', 'ipairs', 'log', 'math', 'next', 'on_packet', 'pairs', 'pcall', 'print', 'random', 'rawequal', 'rawget',
    'rawlen', 'rawset', 'select', 'setmetatable', 'stats', 'string', 'table', 'time', 'tonumber', 'tostring', 'type', 'unpack',
    'utf8', 'xpcall', 'queue']
  for (const g of expected) assert.ok(globals.split(' ').includes(g), `missing global ${g}`)
  for (const g of ['io', 'os', 'debug', 'package', 'require', 'load', 'loadfile', 'dofile', 'coroutine', 'collectgarbage', 'loadstring']) {
    assert.not.ok(globals.split(' ').includes(g), `global ${g} must be absent`)
  }
  assert.is(absent, Array(12).fill('nil').join('\t'))
  assert.is(misc, 'true\txxx\t1\t2')
})

test.run()
