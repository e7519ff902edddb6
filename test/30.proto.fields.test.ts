// Protocol objects (API.md section 4): the fields of every built-in layer on packets built with
// test/lib/packets.ts, nil objects for packets that are not of that kind or too short, caching,
// locked metatables, field writes and their errors. Runs in-process through the LuaVM.
import { test } from 'uvu'
import * as assert from 'uvu/assert'
import {
  ipv4, ipv6, tcp, udp, icmpEcho, icmp6Echo, rawL4, dnsQuery, dnsResponse, httpGet, tlsClientHello,
  fragments4, fragments6, bytes, concat, u16,
} from './lib/packets.js'
import { ProtoVM, wrapScript, SER_LUA } from './lib/proto-vm.js'
import { verify } from '../src/packet/checksum.js'
import { tsharkChecksums } from './lib/tshark.js'
import { mkdtempSync, rmSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'

const tmp = mkdtempSync(join(tmpdir(), 'psd-30-fields-'))

/** Runs `body` (defining handle(pkt)) over the packets; returns each packet's printed lines. */
async function lines(body: string, packets: Uint8Array[]): Promise<string[][]> {
  const vm = await ProtoVM.create(wrapScript(SER_LUA + body))
  try {
    const r = vm.run(packets)
    for (const x of r) if (x.fault) throw new Error(`fault ${x.fault}: ${x.message}`)
    return r.map((x) => x.lines)
  } finally { vm.close() }
}

/** One value per expression, evaluated in handle(pkt); returns the ser() text of each. */
async function values(exprs: string[], packet: Uint8Array): Promise<Record<string, string>> {
  const body = `function handle(pkt)\n${exprs.map((e) => `  print(${JSON.stringify(e)} .. ' = ' .. ser(${e}))`).join('\n')}\nend`
  const [out] = await lines(body, [packet])
  const r: Record<string, string> = {}
  for (const l of out) { const i = l.indexOf(' = '); r[l.slice(0, i)] = l.slice(i + 3) }
  return r
}

async function run1(body: string, packet: Uint8Array) {
  const vm = await ProtoVM.create(wrapScript(body), { scriptPath: 'test.lua' })
  try { return vm.run([packet])[0] } finally { vm.close() }
}

const q = (s: string) => JSON.stringify(s) // a Lua string literal for plain ASCII

test('IPv4 header fields', async () => {
  const p = ipv4({ src: '10.1.2.3', dst: '192.0.2.200', ttl: 17, id: 0xbeef, df: true, dscp: 46, ecn: 1 },
    udp({ sport: 5353, dport: 9, payload: 'hello' }))
  const v = await values(['pkt.ip.version', 'pkt.ip.src', 'pkt.ip.dst', 'pkt.ip.ttl', 'pkt.ip.proto', 'pkt.ip.len',
    'pkt.ip.hdr_len', 'pkt.ip.id', 'pkt.ip.df', 'pkt.ip.mf', 'pkt.ip.frag_offset', 'pkt.ip.dsfield', 'pkt.ip.dscp',
    'pkt.ip.ecn', 'pkt.ip.flags', 'pkt.ip.flow', 'pkt.ip.plen', 'pkt.ip4 == pkt.ip', 'pkt.ip6', 'pkt.ip.checksum',
    'pkt.udp.srcport', 'pkt.udp.sport', 'pkt.udp.dstport', 'pkt.udp.dport', 'pkt.udp.length', 'pkt.udp.payload',
    'pkt.payload', 'pkt.tcp', 'pkt.icmp', 'pkt.dns'], p)
  assert.equal(v, {
    'pkt.ip.version': '4', 'pkt.ip.src': '"10.1.2.3"', 'pkt.ip.dst': '"192.0.2.200"', 'pkt.ip.ttl': '17',
    'pkt.ip.proto': '17', 'pkt.ip.len': String(p.length), 'pkt.ip.hdr_len': '20', 'pkt.ip.id': String(0xbeef),
    'pkt.ip.df': 'true', 'pkt.ip.mf': 'false', 'pkt.ip.frag_offset': '0', 'pkt.ip.dsfield': String(46 << 2 | 1),
    'pkt.ip.dscp': '46', 'pkt.ip.ecn': '1', 'pkt.ip.flags': '2', 'pkt.ip.flow': 'nil', 'pkt.ip.plen': 'nil',
    'pkt.ip4 == pkt.ip': 'true', 'pkt.ip6': 'nil', 'pkt.ip.checksum': String(p[10] << 8 | p[11]),
    'pkt.udp.srcport': '5353', 'pkt.udp.sport': '5353', 'pkt.udp.dstport': '9', 'pkt.udp.dport': '9',
    'pkt.udp.length': '13', 'pkt.udp.payload': '"hello"', 'pkt.payload': '"hello"', 'pkt.tcp': 'nil',
    'pkt.icmp': 'nil', 'pkt.dns': 'nil',
  })
})

test('IPv6 header fields and extension headers to the transport', async () => {
  const p = ipv6({ src: '2001:db8:0:0:1:0:0:1', dst: 'fe80::1', hopLimit: 3, tclass: 0xb8, flow: 0x12345,
    ext: [{ type: 0, options: [5, 2, 0, 0] }, { type: 43, routingType: 4, segmentsLeft: 0, addresses: ['2001:db8::5'] }, { type: 60 }] },
  tcp({ sport: 1234, dport: 443, flags: 'S' }))
  const v = await values(['pkt.ip.version', 'pkt.ip.src', 'pkt.ip.dst', 'pkt.ip.ttl', 'pkt.ip.hlim', 'pkt.ip.proto',
    'pkt.ip.nxt', 'pkt.ip.len', 'pkt.ip.plen', 'pkt.ip.hdr_len', 'pkt.ip.dsfield', 'pkt.ip.flow', 'pkt.ip.id',
    'pkt.ip.df', 'pkt.ip.mf', 'pkt.ip.frag_offset', 'pkt.ip6 == pkt.ip', 'pkt.ip4', 'pkt.tcp.dstport', 'pkt.tcp.syn'], p)
  assert.equal(v, {
    'pkt.ip.version': '6', 'pkt.ip.src': '"2001:db8::1:0:0:1"', 'pkt.ip.dst': '"fe80::1"', 'pkt.ip.ttl': '3',
    'pkt.ip.hlim': '3', 'pkt.ip.proto': '6', 'pkt.ip.nxt': '0', 'pkt.ip.len': String(p.length),
    'pkt.ip.plen': String(p.length - 40), 'pkt.ip.hdr_len': '40', 'pkt.ip.dsfield': String(0xb8),
    'pkt.ip.flow': String(0x12345), 'pkt.ip.id': 'nil', 'pkt.ip.df': 'nil', 'pkt.ip.mf': 'nil',
    'pkt.ip.frag_offset': 'nil', 'pkt.ip6 == pkt.ip': 'true', 'pkt.ip4': 'nil', 'pkt.tcp.dstport': '443', 'pkt.tcp.syn': 'true',
  })
})

test('IPv6 addresses print in RFC 5952 form', async () => {
  const cases: [string, string][] = [
    ['2001:0db8:0000:0000:0000:0000:0000:0001', '2001:db8::1'], ['0:0:0:0:0:0:0:0', '::'], ['::1', '::1'],
    ['2001:db8:0:1:1:1:1:1', '2001:db8:0:1:1:1:1:1'], ['2001:0:0:1:0:0:0:1', '2001:0:0:1::1'],
    ['2001:db8:0:0:1:0:0:1', '2001:db8::1:0:0:1'], ['fe80::abcd:0:0:0', 'fe80::abcd:0:0:0'], ['fe80:0:0:1:abcd:0:0:0', 'fe80:0:0:1:abcd::'],
    ['::ffff:192.0.2.1', '::ffff:192.0.2.1'], ['1:0:0:0:0:0:0:0', '1::'], ['ABCD:EF::', 'abcd:ef::'],
  ]
  const out = await lines(`function handle(pkt) print(pkt.ip.src) end`, cases.map(([a]) => ipv6({ src: a }, udp())))
  assert.equal(out.map((l) => l[0]), cases.map(([, b]) => b))
})

test('fragments: the first carries the transport, the others none', async () => {
  const f4 = fragments4({ id: 77 }, udp({ sport: 1, dport: 53, payload: 'x'.repeat(100) }), 48)
  const f6 = fragments6({}, tcp({ dport: 80, payload: 'y'.repeat(100) }), 48, 0xabcdef)
  const body = `function handle(pkt)
    local ip = pkt.ip
    print(ip.mf, ip.frag_offset, ip.id, ip.proto, pkt.udp ~= nil, pkt.tcp ~= nil, #pkt.payload)
  end`
  const out = await lines(body, [...f4, ...f6])
  assert.equal(out.map((l) => l[0]), [
    'true\t0\t77\t17\ttrue\tfalse\t40', 'true\t6\t77\t17\tfalse\tfalse\t48', 'false\t12\t77\t17\tfalse\tfalse\t12',
    'true\t0\t11259375\t6\tfalse\ttrue\t28', 'true\t6\t11259375\t6\tfalse\tfalse\t48', 'false\t12\t11259375\t6\tfalse\tfalse\t24',
  ])
})

test('TCP fields, flags and options', async () => {
  const p = ipv4({}, tcp({ sport: 40001, dport: 8080, seq: 0xfffffff0, ack: 7, flags: 'SAEC', window: 29200, urgent: 3,
    options: [{ kind: 'mss', value: 1460 }, { kind: 'sackperm' }, { kind: 'ts', val: 123456, ecr: 654321 }, { kind: 'nop' },
      { kind: 'ws', shift: 7 }, { kind: 'eol' }], payload: 'data!' }))
  const v = await values(['pkt.tcp.srcport', 'pkt.tcp.sport', 'pkt.tcp.dstport', 'pkt.tcp.dport', 'pkt.tcp.seq', 'pkt.tcp.ack',
    'pkt.tcp.hdr_len', 'pkt.tcp.flags', 'pkt.tcp.syn', 'pkt.tcp.ack_flag', 'pkt.tcp.fin', 'pkt.tcp.rst', 'pkt.tcp.psh',
    'pkt.tcp.urg', 'pkt.tcp.ece', 'pkt.tcp.cwr', 'pkt.tcp.ae', 'pkt.tcp.window', 'pkt.tcp.urgent', 'pkt.tcp.mss',
    'pkt.tcp.wscale', 'pkt.tcp.sack_perm', 'pkt.tcp.tsval', 'pkt.tcp.tsecr', 'pkt.tcp.payload', 'pkt.tcp.len', 'pkt.payload',
    'pkt.tcp.options'], p)
  assert.equal(v['pkt.tcp.srcport'], '40001'); assert.equal(v['pkt.tcp.sport'], '40001')
  assert.equal(v['pkt.tcp.dstport'], '8080'); assert.equal(v['pkt.tcp.dport'], '8080')
  assert.equal(v['pkt.tcp.seq'], String(0xfffffff0)); assert.equal(v['pkt.tcp.ack'], '7')
  assert.equal(v['pkt.tcp.hdr_len'], '44'); assert.equal(v['pkt.tcp.flags'], String(0xd2))
  assert.equal([v['pkt.tcp.syn'], v['pkt.tcp.ack_flag'], v['pkt.tcp.fin'], v['pkt.tcp.rst'], v['pkt.tcp.psh'], v['pkt.tcp.urg'],
    v['pkt.tcp.ece'], v['pkt.tcp.cwr'], v['pkt.tcp.ae']], ['true', 'true', 'false', 'false', 'false', 'false', 'true', 'true', 'false'])
  assert.equal(v['pkt.tcp.window'], '29200'); assert.equal(v['pkt.tcp.urgent'], '3')
  assert.equal(v['pkt.tcp.mss'], '1460'); assert.equal(v['pkt.tcp.wscale'], '7'); assert.equal(v['pkt.tcp.sack_perm'], 'true')
  assert.equal(v['pkt.tcp.tsval'], '123456'); assert.equal(v['pkt.tcp.tsecr'], '654321')
  assert.equal(v['pkt.tcp.payload'], '"data!"'); assert.equal(v['pkt.tcp.len'], '5'); assert.equal(v['pkt.payload'], '"data!"')
  assert.equal(v['pkt.tcp.options'], '{1={data="\\5\\180",kind=2},2={data="",kind=4},3={data="\\0\\1\\226@\\0\\9\\251\\241",kind=8},' +
    '4={data="",kind=1},5={data="\\7",kind=3}}')
})

test('TCP without options: option fields are nil, sack_perm false', async () => {
  const v = await values(['pkt.tcp.mss', 'pkt.tcp.wscale', 'pkt.tcp.sack_perm', 'pkt.tcp.tsval', '#pkt.tcp.options', 'pkt.tcp.payload'],
    ipv6({}, tcp({ flags: 'A' })))
  assert.equal(v, { 'pkt.tcp.mss': 'nil', 'pkt.tcp.wscale': 'nil', 'pkt.tcp.sack_perm': 'false', 'pkt.tcp.tsval': 'nil',
    '#pkt.tcp.options': '0', 'pkt.tcp.payload': '""' })
})

test('ICMP and ICMPv6: echo id/seq, errors, mtu; no transport on an ICMP error', async () => {
  const echo = ipv4({}, icmpEcho({ id: 0x1234, seq: 9, payload: 'ping' }))
  const quoted = ipv4({ src: '198.51.100.2', dst: '192.0.2.1' }, udp({ sport: 5000, dport: 53, payload: 'q' }))
  const unreach = ipv4({}, icmpEcho({ type: 3, code: 4, id: 0, seq: 1400, payload: quoted }))
  const echo6 = ipv6({}, icmp6Echo({ reply: true, id: 77, seq: 2, payload: 'pong' }))
  const ptb = ipv6({}, icmp6Echo({ type: 2, code: 0, id: 0, seq: 1280, payload: 'x'.repeat(40) }))
  const body = `function handle(pkt)
    local i = pkt.icmp or pkt.icmp6
    print(pkt.icmp ~= nil, pkt.icmp6 ~= nil, i.type, i.code, i.id, i.seq, i.mtu, i.payload == pkt.payload, #i.payload, pkt.udp, pkt.tcp)
  end`
  const out = await lines(body, [echo, unreach, echo6, ptb])
  assert.equal(out.map((l) => l[0]), [
    'true\tfalse\t8\t0\t4660\t9\tnil\ttrue\t4\tnil\tnil',
    `true\tfalse\t3\t4\tnil\tnil\t1400\ttrue\t${quoted.length}\tnil\tnil`,
    'false\ttrue\t129\t0\t77\t2\tnil\ttrue\t4\tnil\tnil',
    'false\ttrue\t2\t0\tnil\tnil\t1280\ttrue\t40\tnil\tnil',
  ])
})

test('DNS query and response: names, types, records with compression', async () => {
  const query = ipv4({}, udp({ sport: 33000, dport: 53, payload: dnsQuery({ id: 0xabcd, qname: 'www.Example.org', qtype: 28 }) }))
  const resp = ipv6({}, udp({ sport: 53, dport: 33000, payload: dnsResponse({ id: 7, qname: 'a.example', qtype: 1, answers: [
    { type: 5, ttl: 60, data: 'b.example' }, { type: 1, ttl: 30, data: '192.0.2.9' }, { type: 28, data: '2001:db8::9' }] }) }))
  // the same over TCP: 2-byte length first
  const msg = dnsQuery({ id: 1, qname: 'tcp.example', qtype: 16 })
  const overTcp = ipv4({}, tcp({ sport: 40000, dport: 53, flags: 'PA', payload: concat(Uint8Array.from(u16(msg.length)), msg) }))
  const body = `function handle(pkt)
    local d = pkt.dns
    print(d.id, d.qr, d.opcode, d.rcode, d.rd, d.ra, d.aa, d.tc, d.qname, d.qtype, d.qclass, d.qdcount, d.ancount, #d.questions, ser(d.answers))
  end`
  const out = await lines(body, [query, resp, overTcp])
  assert.equal(out[0][0], `${0xabcd}\tfalse\t0\t0\ttrue\tfalse\tfalse\tfalse\twww.Example.org\t28\t1\t1\t0\t1\t{}`)
  assert.equal(out[1][0], '7\ttrue\t0\t0\ttrue\ttrue\tfalse\tfalse\ta.example\t1\t1\t1\t3\t1\t' +
    '{1={class=1,data="b.example",name="a.example",ttl=60,type=5},2={class=1,data="192.0.2.9",name="a.example",ttl=30,type=1},' +
    '3={class=1,data="2001:db8::9",name="a.example",ttl=300,type=28}}')
  assert.equal(out[2][0], '1\tfalse\t0\t0\ttrue\tfalse\tfalse\tfalse\ttcp.example\t16\t1\t1\t0\t1\t{}')
})

test('DNS only on port 53; other ports and short messages give nil', async () => {
  const other = ipv4({}, udp({ sport: 1000, dport: 5353, payload: dnsQuery({ qname: 'x.example' }) }))
  const short = ipv4({}, udp({ sport: 1000, dport: 53, payload: 'abcdefghijk' }))
  const out = await lines(`function handle(pkt) print(pkt.dns) end`, [other, short])
  assert.equal(out.map((l) => l[0]), ['nil', 'nil'])
})

test('HTTP requests and responses', async () => {
  const get = ipv4({}, tcp({ dport: 8000, flags: 'PA', payload: httpGet('Example.COM:8000', '/a/b?c=d', { 'X-Two': 'one', 'x-two': 'two' }) }))
  const resp = ipv6({}, tcp({ sport: 80, flags: 'PA', payload: 'HTTP/1.0 404 Not Found\r\nContent-Length: 12\r\nServer:  t \r\n\r\nhello world!' }))
  const notHttp = ipv4({}, tcp({ dport: 80, flags: 'PA', payload: 'GETTING / HTTP/1.1\r\n' }))
  const lfOnly = ipv4({}, tcp({ dport: 80, flags: 'PA', payload: 'POST /x HTTP/1.1\nHost: h\n\nbody' }))
  const body = `function handle(pkt)
    local h = pkt.http
    if not h then print('nil') return end
    print(h.request, h.method, h.uri, h.version, h.status, h.reason, h.host, h.user_agent, h.content_length, ser(h.headers), ser(h.body))
  end`
  const out = await lines(body, [get, resp, notHttp, lfOnly])
  assert.equal(out[0][0], 'true\tGET\t/a/b?c=d\tHTTP/1.1\tnil\tnil\tExample.COM:8000\tpsd-test/1.0\tnil\t' +
    '{accept="*/*",host="Example.COM:8000",["user-agent"]="psd-test/1.0",["x-two"]="one, two"}\t""'.replace(/\["([^"]+)"\]/g, '$1'))
  assert.equal(out[1][0], 'false\tnil\tnil\tHTTP/1.0\t404\tNot Found\tnil\tnil\t12\t{content-length="12",server="t"}\t"hello world!"')
  assert.equal(out[2][0], 'nil')
  assert.equal(out[3][0], 'true\tPOST\t/x\tHTTP/1.1\tnil\tnil\th\tnil\tnil\t{host="h"}\t"body"')
})

test('TLS ClientHello: SNI, ALPN, versions', async () => {
  const hello = tlsClientHello({ sni: 'secure.example.net', alpn: ['h2', 'http/1.1'], versions: [0x0304, 0x0303] })
  const p = ipv4({}, tcp({ dport: 443, flags: 'PA', payload: hello }))
  const cut = ipv4({}, tcp({ dport: 443, flags: 'PA', payload: hello.subarray(0, 60) }))
  const notHello = ipv4({}, tcp({ dport: 443, flags: 'PA', payload: concat(bytes([0x17, 3, 3, 0, 20]), new Uint8Array(20)) }))
  const body = `function handle(pkt)
    local t = pkt.tls
    if not t then print('nil') return end
    print(t.version, t.record_version, t.handshake_type, t.sni, ser(t.alpn), ser(t.versions), ser(t.ciphers), ser(t.groups), #t.extensions)
  end`
  const out = await lines(body, [p, cut, notHello])
  assert.equal(out[0][0], `${0x0303}\t${0x0301}\t1\tsecure.example.net\t{1="h2",2="http/1.1"}\t{1=772,2=771}\t{1=4865,2=4866,3=49199}\t{1=29,2=23}\t6`)
  assert.equal(out[1][0], `${0x0303}\t${0x0301}\t1\tnil\t{}\t{}\t{}\t{}\t0`)
  assert.equal(out[2][0], 'nil')
})

test('truncated or malformed headers give nil objects, never an error', async () => {
  const full = ipv4({}, tcp({ dport: 80, flags: 'PA', options: [{ kind: 'mss', value: 1000 }], payload: httpGet('h') }))
  const v6 = ipv6({ ext: [{ type: 0 }] }, udp({ dport: 53, payload: dnsQuery({ qname: 'a.b' }) }))
  const cases = [
    full.subarray(0, 19), full.subarray(0, 20), full.subarray(0, 39), full.subarray(0, 43), full.subarray(0, 50),
    v6.subarray(0, 39), v6.subarray(0, 47), v6.subarray(0, 55), v6.subarray(0, 60),
    (() => { const b = full.slice(); b[0] = 0x44; return b })(),        // IHL 16 bytes: bad
    (() => { const b = full.slice(); b[32] = 0x40; return b })(),       // TCP data offset 16: bad
    (() => { const b = full.slice(); b[0] = 0x55; return b })(),        // version 5
    new Uint8Array(0),
  ]
  const body = `function handle(pkt)
    local function has(x) return x and 1 or 0 end
    print(has(pkt.ip), has(pkt.tcp), has(pkt.udp), has(pkt.http), has(pkt.dns), pkt.payload and #pkt.payload or 'nil')
  end`
  const out = await lines(body, cases)
  assert.equal(out.map((l) => l[0]), [
    '0\t0\t0\t0\t0\tnil', '1\t0\t0\t0\t0\t0', '1\t0\t0\t0\t0\t19', '1\t0\t0\t0\t0\t23', '1\t1\t0\t0\t0\t6',
    '0\t0\t0\t0\t0\tnil', '1\t0\t0\t0\t0\t7', '1\t0\t0\t0\t0\t7', '1\t0\t1\t0\t0\t4',
    '0\t0\t0\t0\t0\tnil', '1\t0\t0\t0\t0\t' + (full.length - 20), '0\t0\t0\t0\t0\tnil', '0\t0\t0\t0\t0\tnil',
  ])
})

test('objects are cached per packet; metatables are locked', async () => {
  const body = `function handle(pkt)
    local t = pkt.tcp
    print(t == pkt.tcp, pkt.ip == pkt.ip4, getmetatable(t), getmetatable(pkt.ip), pcall(setmetatable, t, {}))
    print(tostring(t), tostring(pkt.ip))
    local names = {}
    for k, v in pairs(pkt.udp or pkt.tcp) do names[#names + 1] = k end
    print(table.concat(names, ','))
  end`
  const [out] = await lines(body, [ipv4({}, tcp({ dport: 80 }))])
  assert.equal(out[0].split('\t').slice(0, 5), ['true', 'true', 'false', 'false', 'false'])
  assert.equal(out[1], 'pkt.tcp (offset 20)\tpkt.ip (IPv4, header 20 bytes, protocol 6)')
  assert.equal(out[2], 'ack,ack_flag,ae,checksum,cwr,dport,dstport,ece,fin,flags,hdr_len,len,ns,options,payload,psh,rst,' +
    'sack_perm,seq,sport,srcport,syn,urg,urgent,window')
})

test('writes edit the packet; psd makes lengths and checksums right', async () => {
  const body = `function handle(pkt)
    local ip, t = pkt.ip, pkt.tcp or pkt.udp or pkt.icmp or pkt.icmp6
    ip.ttl = 1
    if ip.version == 4 then ip.dst = '10.0.0.2'; ip.id = 4242; ip.df = false; ip.dsfield = 0x20
    else ip.dst = '2001:db8:ffff::2'; ip.flow = 0xfffff; ip.dsfield = 0x20 end
    if pkt.tcp then
      t.dstport = 80; t.syn = false; t.fin = true; t.seq = 5; t.ack = 6; t.window = 100; t.mss = 1200
      print(t.dstport, t.syn, t.fin, t.flags, t.seq, t.ack, t.window, t.mss, t.hdr_len, t.payload, ip.len)
    elseif pkt.udp then
      t.srcport = 1; t.dstport = 2
      print(t.srcport, t.dstport, t.payload)
    else
      t.type = pkt.icmp and 0 or 129; t.code = 0; t.id = 99; t.seq = 100
      print(t.type, t.code, t.id, t.seq)
    end
    print(ip.ttl, ip.dst, ip.dsfield)
    pkt:checksum()
  end`
  const pkts = [
    ipv4({}, tcp({ flags: 'S', options: [{ kind: 'mss', value: 1460 }], payload: 'abc' })),
    ipv4({}, tcp({ flags: 'S', payload: 'abc' })),                 // no MSS option: one is added
    ipv6({ ext: [{ type: 60 }] }, tcp({ flags: 'SA', options: [{ kind: 'sackperm' }], payload: 'xyz' })),
    ipv4({}, udp({ payload: 'u' })), ipv6({}, udp({ payload: 'u6' })),
    ipv4({}, icmpEcho({})), ipv6({}, icmp6Echo({})),
  ]
  const vm = await ProtoVM.create(wrapScript(SER_LUA + body))
  const r = vm.run(pkts)
  vm.close()
  for (const x of r) assert.equal(x.fault, null, x.message ?? '')
  assert.equal(r[0].lines[0], `80\tfalse\ttrue\t1\t5\t6\t100\t1200\t24\tabc\t${pkts[0].length}`)
  assert.equal(r[1].lines[0], `80\tfalse\ttrue\t1\t5\t6\t100\t1200\t24\tabc\t${pkts[1].length + 4}`)
  assert.equal(r[2].lines[0], `80\tfalse\ttrue\t${0x11}\t5\t6\t100\t1200\t28\txyz\t${pkts[2].length + 4}`)
  assert.equal(r[3].lines, ['1\t2\tu', '1\t10.0.0.2\t32'])
  assert.equal(r[4].lines, ['1\t2\tu6', '1\t2001:db8:ffff::2\t32'])
  assert.equal(r[5].lines, ['0\t0\t99\t100', '1\t10.0.0.2\t32'])
  assert.equal(r[6].lines, ['129\t0\t99\t100', '1\t2001:db8:ffff::2\t32'])
  for (const x of r) {
    assert.ok(x.data, 'edited')
    const st = verify(x.data!)
    assert.ok(st.ok, JSON.stringify(st))
  }
  const ts = tsharkChecksums(r.map((x) => x.data!), tmp, 'field-writes')
  if (ts) { assert.equal(ts.bad, []); assert.equal(ts.good, r.length) }
  // the bytes: TTL, addresses, ports where the header says
  assert.equal(r[0].data![8], 1); assert.equal(Array.from(r[0].data!.subarray(16, 20)), [10, 0, 0, 2])
  assert.equal(r[1].data!.length, pkts[1].length + 4); assert.equal((r[1].data![32] >> 4) * 4, 24)
  assert.equal(Array.from(r[1].data!.subarray(40, 44)), [2, 4, 1200 >> 8, 1200 & 255])
})

test('write errors name the script line; bad values are refused', async () => {
  const bad: [string, RegExp][] = [
    ['pkt.ip.ttl = 256', /test\.lua:2: pkt\.ip\.ttl must be an integer in 0\.\.255, got 256/],
    ['pkt.ip.ttl = 1.5', /test\.lua:2: pkt\.ip\.ttl must be an integer/],
    ['pkt.ip.dst = "10.0.0.256"', /test\.lua:2: pkt\.ip\.dst must be an IPv4 address/],
    ['pkt.ip.dst = "2001:db8::1"', /test\.lua:2: pkt\.ip\.dst must be an IPv4 address/],
    ['pkt.tcp.dstport = -1', /test\.lua:2: pkt\.tcp\.dstport must be an integer in 0\.\.65535/],
    ['pkt.tcp.syn = 1', /test\.lua:2: pkt\.tcp\.syn must be a boolean/],
    ['pkt.tcp.hdr_len = 20', /test\.lua:2: pkt\.tcp\.hdr_len is read-only/],
    ['pkt.tcp.nosuch = 1', /test\.lua:2: pkt\.tcp has no field nosuch/],
    ['pkt.ip.proto = 17', /test\.lua:2: pkt\.ip\.proto is read-only/],
  ]
  for (const [stmt, re] of bad) {
    const r = await run1(`function handle(pkt)\n  ${stmt}\nend`, ipv4({}, tcp({})))
    assert.equal(r.fault, 'error', stmt)
    assert.match(r.message ?? '', re)
  }
  const v6 = await run1(`function handle(pkt)\n  pkt.ip.dst = "10.0.0.1"\nend`, ipv6({}, udp({})))
  assert.match(v6.message ?? '', /test\.lua:2: pkt\.ip\.dst must be an IPv6 address/)
  const id6 = await run1(`function handle(pkt)\n  pkt.ip.id = 1\nend`, ipv6({}, udp({})))
  assert.match(id6.message ?? '', /test\.lua:2: pkt\.ip\.id: this IPv6 packet has no fragment header/)
  const full = await run1(`function handle(pkt)\n  pkt.tcp.mss = 1000\nend`,
    ipv4({}, tcp({ options: Array.from({ length: 10 }, () => ({ kind: 'ts' as const, val: 1, ecr: 2 })).slice(0, 4) })))
  assert.match(full.message ?? '', /test\.lua:2: pkt\.tcp\.mss: no MSS option and no room/)
})

test('a held object follows edits; one of a finished packet raises an error', async () => {
  const body = `
local kept
function handle(pkt)
  if kept then
    local ok, err = pcall(function() return kept.ttl end)
    print(ok, err)
    return
  end
  local t = pkt.tcp
  local before = t.payload
  t.mss = 900                    -- grows the header: t is decoded again on its next use
  print(t == pkt.tcp, t.hdr_len, t.payload == before, t.mss)
  pkt:remove(20, pkt.len - 20)   -- no TCP left
  print(t.dstport, pkt.tcp)
  kept = pkt.ip
end`
  const out = await lines(body, [ipv4({}, tcp({ flags: 'S', payload: 'zz' })), ipv4({}, udp({}))])
  assert.equal(out[0], ['true\t24\ttrue\t900', 'nil\tnil'])
  assert.match(out[1][0], /^false\t.*used after its call returned/)
})

test('protocol objects keep working when a script replaces globals', async () => {
  const body = `
string, table, math, pairs, ipairs, next, type, tostring, tonumber, setmetatable, error, select, pcall = nil
function handle(pkt)
  print(pkt.ip.src .. ' ' .. pkt.tcp.dstport .. ' ' .. pkt.http.host .. ' ' .. #pkt.tcp.options)
  pkt.ip.dst = '10.9.9.9'
  pkt.tcp.mss = 1000
end`
  const vm = await ProtoVM.create(body.replace('function handle', 'function on_packet').replace(/\nend$/, '\nprint("\\1end")\nend'))
  const r = vm.run([ipv4({ src: '192.0.2.77' }, tcp({ dport: 81, flags: 'PA', payload: httpGet('h.example') }))])
  vm.close()
  assert.equal(r[0].fault, null, r[0].message ?? '')
  assert.equal(r[0].lines, ['192.0.2.77 81 h.example 0'])
})

test('rawL4 helper sanity: unknown transport gives the IP payload', async () => {
  const out = await lines(`function handle(pkt) print(pkt.ip.proto, pkt.payload, pkt.tcp, pkt.udp) end`, [ipv4({}, rawL4(132, 'sctp!'))])
  assert.equal(out[0][0], '132\tsctp!\tnil\tnil')
})

test('protocol objects work on pkt:copy(); edits to the copy leave the packet alone', async () => {
  const body = `function handle(pkt)
    local c = pkt:copy()
    c.ip.ttl = 9
    c.tcp.dstport = 8443
    print(pkt.ip.ttl, pkt.tcp.dstport, c.ip.ttl, c.tcp.dstport, c.tcp == c.tcp, c.tcp ~= pkt.tcp)
  end`
  const [out] = await lines(body, [ipv4({ ttl: 64 }, tcp({ dport: 443 }))])
  assert.equal(out, ['64\t443\t9\t8443\ttrue\ttrue'])
})

test.after(() => rmSync(tmp, { recursive: true, force: true }))
void q
test.run()
