// proto.define{} (API.md section 4, "Defining protocols"): bit and byte fields read and written,
// dispatch by port and by match function, protocols over built-in and defined ones, parse for
// computed (text) fields, and load errors that name the field.
import { test } from 'uvu'
import * as assert from 'uvu/assert'
import { ipv4, ipv6, tcp, udp, concat, bytes } from './lib/packets.js'
import { ProtoVM, wrapScript, SER_LUA } from './lib/proto-vm.js'
import { LoadError } from '../wasm/vm.js'
import { verify, fixup } from '../src/packet/checksum.js'
import { tsharkChecksums } from './lib/tshark.js'
import { mkdtempSync, rmSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'

const tmp = mkdtempSync(join(tmpdir(), 'psd-30-define-'))

/** Lengths right as the script left them (psd only fixes checksums on top), then all right after fixup. */
function lengthsThenChecksums(d: Uint8Array): void {
  assert.ok(verify(d).lengths, JSON.stringify(verify(d)))
  const c = d.slice()
  fixup(c)                      // what psd does on accept
  assert.ok(verify(c).ok, JSON.stringify(verify(c)))
  const ts = tsharkChecksums([c], tmp, 'define-write')
  if (ts) { assert.equal(ts.bad, []); assert.equal(ts.good, 1) }
}

async function run(body: string, packets: Uint8Array[]) {
  const vm = await ProtoVM.create(wrapScript(body + SER_LUA), { scriptPath: 'test.lua' })
  try { return vm.run(packets) } finally { vm.close() }
}

async function lines(body: string, packets: Uint8Array[]): Promise<string[][]> {
  const r = await run(body, packets)
  for (const x of r) if (x.fault) throw new Error(`fault ${x.fault}: ${x.message}`)
  return r.map((x) => x.lines)
}

async function loadError(body: string): Promise<string> {
  try {
    const vm = await ProtoVM.create(wrapScript(body), { scriptPath: 'test.lua' })
    vm.close()
  } catch (e) {
    if (e instanceof LoadError) return e.message
    throw e
  }
  throw new Error('the script loaded')
}

const DEMO = `
proto.define{
  name = "demo", over = "udp", port = 9999,
  fields = {
    version = { bit = 0, bits = 4 },
    kind    = { bit = 4, bits = 4 },
    length  = { offset = 1, size = 2 },
    body    = { offset = 3 },
  },
}
`

test('the API.md example: bit and byte fields, read and written', async () => {
  const p = ipv4({}, udp({ sport: 1000, dport: 9999, payload: bytes([0x31, 0x00, 0x05, ...Buffer.from('hello')]) }))
  const other = ipv4({}, udp({ sport: 1000, dport: 9998, payload: bytes([0x31, 0x00, 0x05]) }))
  const r = await run(DEMO + `
function handle(pkt)
  local d = pkt.demo
  if not d then print('nil') return end
  print(d.version, d.kind, d.length, d.body, d == pkt.demo, getmetatable(d))
  d.kind = 2
  d.version = 15
  d.length = 0x0102
  print(d.version, d.kind, d.length, d.body, d == pkt.demo)
end`, [p, other])
  assert.equal(r[0].fault, null, r[0].message ?? '')
  assert.equal(r[0].lines, ['3\t1\t5\thello\ttrue\tfalse', '15\t2\t258\thello\ttrue'])
  assert.equal(Array.from(r[0].data!.subarray(28, 31)), [0xf2, 0x01, 0x02])
  assert.equal(r[1].lines, ['nil'])
})

test('dispatch: match function, port lists, over TCP, over IP, over a defined protocol', async () => {
  const body = `
proto.define{ name = "xmsg", over = "udp", match = function(udp, bytes) return bytes:sub(1, 1) == 'X' end,
  fields = { tag = { offset = 0, size = 1 }, rest = { offset = 1 } } }
proto.define{ name = "tproto", over = "tcp", port = { 7000, 7001 },
  fields = { op = { offset = 0, size = 2 }, data = { offset = 2 } }, payload = "data" }
proto.define{ name = "inner", over = "tproto", match = function(t) return t.op == 1 end,
  fields = { a = { offset = 0, size = 1 }, b = { offset = 1, size = 1 } } }
proto.define{ name = "sctp", over = "ip", match = function(ip) return ip.proto == 132 end,
  fields = { srcport = { offset = 0, size = 2 }, dstport = { offset = 2, size = 2 }, vtag = { offset = 4, size = 4 } } }
function handle(pkt)
  print(pkt.xmsg and pkt.xmsg.rest, pkt.tproto and pkt.tproto.op, pkt.inner and (pkt.inner.a .. ',' .. pkt.inner.b),
    pkt.sctp and (pkt.sctp.srcport .. '>' .. pkt.sctp.dstport .. ':' .. pkt.sctp.vtag))
end`
  const out = await lines(body, [
    ipv4({}, udp({ dport: 5, payload: 'Xabc' })),
    ipv6({}, udp({ dport: 5, payload: 'Yabc' })),
    ipv4({}, tcp({ sport: 7001, dport: 50000, payload: bytes([0, 1, 7, 8, 9]) })),
    ipv6({}, tcp({ sport: 1, dport: 7000, payload: bytes([0, 2, 7, 8]) })),
    ipv4({}, tcp({ sport: 1, dport: 7002, payload: bytes([0, 1, 7, 8]) })),
    ipv4({ proto: 132 }, bytes([0x0b, 0x59, 0x0b, 0x5a, 0, 0, 0, 42])),
  ])
  assert.equal(out.map((l) => l[0]), ['abc\tnil\tnil\tnil', 'nil\tnil\tnil\tnil', 'nil\t1\t7,8\tnil', 'nil\t2\tnil\tnil',
    'nil\tnil\tnil\tnil', 'nil\tnil\tnil\t2905>2906:42'])
})

test('any number of protocols, each on its own port', async () => {
  const body = `
for i = 1, 40 do
  proto.define{ name = "p" .. i, over = "udp", port = 20000 + i, fields = { v = { offset = 0, size = 1 } } }
end
function handle(pkt)
  local hits = {}
  for i = 1, 40 do local o = pkt["p" .. i]; if o then hits[#hits + 1] = i .. '=' .. o.v end end
  print(table.concat(hits, ' '))
end`
  const out = await lines(body, [3, 17, 40].map((i) => ipv4({}, udp({ dport: 20000 + i, payload: bytes([i * 2]) }))))
  assert.equal(out.map((l) => l[0]), ['3=6', '17=34', '40=80'])
})

test('field types: little-endian, signed, 8 bytes, bool, fixed bytes, len, addresses', async () => {
  const body = `
proto.define{ name = "t", over = "udp", port = 4000, fields = {
  le16 = { offset = 0, size = 2, le = true },
  s8 = { offset = 2, size = 1, signed = true },
  s32 = { offset = 3, size = 4, signed = true, le = true },
  u64 = { offset = 7, size = 8 },
  flag = { offset = 15, size = 1, type = "bool" },
  bitflag = { bit = 128, type = "bool" },
  wide = { bit = 129, bits = 15 },
  tag = { offset = 18, size = 3, type = "bytes" },
  n = { offset = 21, size = 1 },
  name = { offset = 22, len = "n" },
  addr = { offset = 26, type = "ipv4" },
  addr6 = { offset = 30, type = "ipv6" },
  missing = { offset = 100, size = 4 },
  tail = { offset = 46 },
} }
function handle(pkt)
  local t = pkt.t
  print(t.le16, t.s8, t.s32, t.u64, t.flag, t.bitflag, t.wide, t.tag, t.n, t.name, t.addr, t.addr6, t.missing, t.tail)
  t.le16 = 0x0102; t.s8 = -2; t.s32 = -100000; t.u64 = -1; t.flag = false; t.bitflag = false; t.wide = 0x7fff
  t.tag = 'xyz'; t.name = 'WXYZ'; t.addr = '10.1.2.3'; t.addr6 = '2001:db8::7'; t.tail = ''
  print(t.le16, t.s8, t.s32, t.u64, t.flag, t.bitflag, t.wide, t.tag, t.n, t.name, t.addr, t.addr6, t.missing, t.tail)
end`
  const payload = concat(bytes([0x34, 0x12, 0xff, 0xfe, 0xff, 0xff, 0xff, 0, 0, 0, 0, 0, 0, 1, 0, 1, 0x80, 0x05]),
    bytes('abc'), bytes([4]), bytes('name'), bytes([192, 0, 2, 1]), new Uint8Array(15), bytes([1]), bytes('end'))
  const r = await run(body, [ipv4({}, udp({ dport: 4000, payload }))])
  assert.equal(r[0].fault, null, r[0].message ?? '')
  assert.equal(r[0].lines, [
    `${0x1234}\t-1\t-2\t256\ttrue\ttrue\t5\tabc\t4\tname\t192.0.2.1\t::1\tnil\tend`,
    `${0x0102}\t-2\t-100000\t-1\tfalse\tfalse\t${0x7fff}\txyz\t4\tWXYZ\t10.1.2.3\t2001:db8::7\tnil\t`,
  ])
  lengthsThenChecksums(r[0].data!)
  assert.equal(r[0].data!.length, 20 + 8 + 46)
})

test('a to-the-end field may change size: IP and UDP lengths follow', async () => {
  const body = `
proto.define{ name = "msg", over = "udp", port = 7, fields = { head = { offset = 0, size = 1 }, text = { offset = 1 } } }
function handle(pkt)
  pkt.msg.text = pkt.msg.head == 1 and string.rep('A', 300) or 'z'
  print(pkt.ip.len, pkt.udp.length, #pkt.msg.text)
end`
  const pkts = [ipv4({}, udp({ dport: 7, payload: '\x01hello' })), ipv6({}, udp({ dport: 7, payload: '\x02hello' }))]
  const r = await run(body, pkts)
  assert.equal(r.map((x) => x.lines[0]), ['329\t309\t300', '50\t10\t1'])
  for (const x of r) lengthsThenChecksums(x.data!)
})

test('parse: computed fields of a text protocol; false means "not this protocol"', async () => {
  const body = `
proto.define{
  name = "kv", over = "tcp", port = 6379,
  fields = { first = { offset = 0, size = 1 } },
  parse = function(bytes, obj)
    local cmd, key = bytes:match('^(%u+) (%S+)\\r\\n')
    if not cmd then return false end
    obj.cmd, obj.key = cmd, key
    obj.n = select(2, bytes:gsub('\\r\\n', ''))
    obj.upper = obj.first >= 65   -- declared fields can be read while parsing
  end,
}
function handle(pkt)
  local kv = pkt.kv
  if not kv then print('nil') return end
  print(kv.cmd, kv.key, kv.n, kv.upper, kv.first)
  local names = {}
  for k in pairs(kv) do names[#names + 1] = k end
  print(table.concat(names, ','))
  print(pcall(function() kv.cmd = 'x' end))
end`
  const out = await lines(body, [
    ipv4({}, tcp({ dport: 6379, flags: 'PA', payload: 'GET user:1\r\nSET a b\r\n' })),
    ipv4({}, tcp({ dport: 6379, flags: 'PA', payload: 'not a command' })),
  ])
  assert.equal(out[0][0], 'GET\tuser:1\t2\ttrue\t71')
  assert.equal(out[0][1].split(',').sort(), ['cmd', 'first', 'key', 'n', 'upper'])
  assert.match(out[0][2], /^false\ttest\.lua:\d+: pkt\.kv\.cmd is read-only/)
  assert.equal(out[1], ['nil'])
})

test('field write errors name the script line', async () => {
  const cases: [string, RegExp][] = [
    ['pkt.demo.kind = 16', /test\.lua:\d+: pkt\.demo\.kind must be an integer in 0\.\.15, got 16/],
    ['pkt.demo.length = "x"', /test\.lua:\d+: pkt\.demo\.length must be an integer in 0\.\.65535/],
    ['pkt.demo.body = 5', /test\.lua:\d+: pkt\.demo\.body must be a string/],
    ['pkt.demo.nope = 5', /test\.lua:\d+: pkt\.demo has no field nope/],
  ]
  for (const [stmt, re] of cases) {
    const r = await run(DEMO + `function handle(pkt)\n  ${stmt}\nend`, [ipv4({}, udp({ dport: 9999, payload: 'abcdef' }))])
    assert.equal(r[0].fault, 'error')
    assert.match(r[0].message ?? '', re)
    const line = DEMO.split('\n').length + 1
    assert.ok((r[0].message ?? '').includes(`test.lua:${line}:`), `${r[0].message} (line ${line})`)
  }
})

test('a bad definition is a load error that names the field', async () => {
  const cases: [string, RegExp][] = [
    ['proto.define{ name = "a", over = "udp", fields = { x = { bit = 0, bits = 0 } } }', /test\.lua:1: proto\.define a: field 'x': bits must be an integer in 1\.\.64/],
    ['proto.define{ name = "a", over = "udp", fields = { x = { offset = 0, size = 3 } } }', /field 'x': size must be 1, 2, 4 or 8/],
    ['proto.define{ name = "a", over = "udp", fields = { x = { offset = -1, size = 1 } } }', /field 'x': offset must be a non-negative integer/],
    ['proto.define{ name = "a", over = "udp", fields = { x = { size = 1 } } }', /field 'x': needs bit/],
    ['proto.define{ name = "a", over = "udp", fields = { x = { offset = 0, size = 1, colour = 1 } } }', /field 'x': unknown key 'colour'/],
    ['proto.define{ name = "a", over = "udp", fields = { x = { offset = 0, len = "y" } } }', /field 'x': len must name an integer field of a, got 'y'/],
    ['proto.define{ name = "a", over = "udp", fields = { x = { offset = 0, type = "float" } } }', /field 'x': type must be one of/],
    ['proto.define{ name = "a", over = "nosuch" }', /proto\.define a: over must name a protocol/],
    ['proto.define{ name = "tcp", over = "ip" }', /the name 'tcp' is already taken/],
    ['proto.define{ name = "len", over = "ip" }', /the name 'len' is already taken/],
    ['proto.define{ name = "a", over = "ip", port = 1 }', /port needs over = "tcp" or "udp"/],
    ['proto.define{ name = "a", over = "udp", port = 70000 }', /port must be an integer in 0\.\.65535/],
    ['proto.define{ name = "a b", over = "udp" }', /name must be an identifier/],
    ['proto.define{ name = "a", over = "udp", colour = 1 }', /unknown key 'colour'/],
    ['proto.define{ name = "a", over = "udp", payload = "nope" }', /payload must name a bytes field/],
    ['proto.define{ name = "a", over = "udp" }\nproto.define{ name = "a", over = "udp" }', /test\.lua:2: .*'a' is already taken/],
  ]
  for (const [src, re] of cases) {
    const msg = await loadError(src)
    assert.match(msg, re, src)
    assert.match(msg, /test\.lua:\d+:/)
  }
})

test('truncated packets: fields outside the bytes read nil; nothing reads past the packet', async () => {
  const body = DEMO + `
function handle(pkt)
  local d = pkt.demo
  print(d.version, d.kind, d.length, d.body)
end`
  const out = await lines(body, [
    ipv4({}, udp({ dport: 9999, payload: bytes([0x42]) })),
    ipv4({}, udp({ dport: 9999, payload: '' })),
  ])
  assert.equal(out.map((l) => l[0]), ['4\t2\tnil\tnil', 'nil\tnil\tnil\tnil'])
})

test.after(() => rmSync(tmp, { recursive: true, force: true }))
test.run()
