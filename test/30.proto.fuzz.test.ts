// Property test (seeded generator): random, mutated and truncated bytes through every decoder
// (every built-in layer and a few defined protocols, every field of each, lists included).
// Properties: no packet ever faults, and what a packet decodes to never depends on the bytes
// around it in the batch (the records before and after it, the padding, the metadata), so no
// decoder reads outside its packet.
import { test } from 'uvu'
import * as assert from 'uvu/assert'
import {
  ipv4, ipv6, tcp, udp, icmpEcho, icmp6Echo, dnsQuery, dnsResponse, httpGet, tlsClientHello, fragments4,
  fragments6, mixedPackets, prng, bytes, concat, u16, type L4,
} from './lib/packets.js'
import { ProtoVM, wrapScript, SER_LUA, type PacketResult } from './lib/proto-vm.js'

const SEED = Number(process.env.PSD_FUZZ_SEED ?? 20261126)
const COUNT = Number(process.env.PSD_FUZZ_COUNT ?? 6000)

const SCRIPT = SER_LUA + `
proto.define{ name = "bits", over = "udp", port = 9999, fields = {
  a = { bit = 0, bits = 3 }, b = { bit = 3, bits = 13 }, c = { bit = 16, bits = 64 - 16 }, w = { bit = 5, bits = 59 },
  n = { offset = 1, size = 1 }, s = { offset = 2, len = "n" }, t = { offset = 3 }, q = { offset = 4, size = 8, le = true },
  ip = { offset = 2, type = "ipv4" }, ip6 = { offset = 2, type = "ipv6" }, flag = { bit = 7, type = "bool" } },
  payload = "t" }
proto.define{ name = "inner", over = "bits", fields = { x = { offset = 0, size = 2 }, rest = { offset = 2 } } }
proto.define{ name = "text", over = "tcp", match = function(t, s) return #s > 0 end,
  fields = { first = { offset = 0, size = 1 } },
  parse = function(s, o) o.line = s:match('^([^\\r\\n]*)') o.words = select(2, s:gsub('%S+', '')) end }
proto.define{ name = "onip", over = "ip", fields = { b0 = { offset = 0, size = 1 }, all = { offset = 0 } } }
proto.define{ name = "ondns", over = "dns", fields = { id = { offset = 0, size = 2 } } }

local LAYERS = { 'ip', 'ip4', 'ip6', 'tcp', 'udp', 'icmp', 'icmp6', 'payload', 'dns', 'http', 'tls',
                 'bits', 'inner', 'text', 'onip', 'ondns' }
function handle(pkt)
  local out = {}
  for _, name in ipairs(LAYERS) do
    local o = pkt[name]
    if o == nil then
      out[#out + 1] = name .. '=nil'
    elseif type(o) == 'string' then
      out[#out + 1] = name .. '=' .. ser(o)
    else
      local f = {}
      for k, v in pairs(o) do f[#f + 1] = k .. ':' .. ser(v) end
      out[#out + 1] = name .. '={' .. table.concat(f, ';') .. '}'
    end
  end
  print(table.concat(out, ' '))
end`

/** Valid packets of every kind the decoders know, to mutate and cut. */
function seeds(): Uint8Array[] {
  const s: Uint8Array[] = []
  for (const p of mixedPackets(300, 7)) s.push(p.data)
  const hello = tlsClientHello({ sni: 'fuzz.example', alpn: ['h2', 'http/1.1'] })
  const dnsR = dnsResponse({ qname: 'a.fuzz.example', answers: [{ type: 5, data: 'b.fuzz.example' }, { type: 1, data: '192.0.2.1' },
    { type: 28, data: '2001:db8::1' }, { type: 15, data: bytes([0, 10, 0xc0, 12]) }, { type: 16, data: bytes([3, 97, 98, 99, 1, 100]) },
    { type: 33, data: bytes([0, 1, 0, 2, 0, 80, 0xc0, 12]) }] })
  const l4s: L4[] = [
    tcp({ dport: 443, flags: 'PA', payload: hello }),
    tcp({ sport: 8080, flags: 'PA', payload: 'HTTP/1.1 200 OK\r\nA: b\r\n c\r\nContent-Length: 5\r\n\r\nhello' }),
    tcp({ dport: 80, flags: 'PA', payload: httpGet('fuzz.example', '/x', { Cookie: 'a=b' }) }),
    tcp({ dport: 53, flags: 'PA', payload: concat(Uint8Array.from(u16(dnsR.length)), dnsR) }),
    udp({ sport: 53, payload: dnsR }), udp({ dport: 53, payload: dnsQuery({ qname: 'q.example', qtype: 28 }) }),
    udp({ dport: 9999, payload: bytes([0x5a, 4, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17, 18]) }),
    tcp({ flags: 'S', options: [{ kind: 'mss', value: 1400 }, { kind: 'sack', blocks: [[1, 2]] }, { kind: 'ts', val: 1, ecr: 2 }, { kind: 'ws', shift: 3 }] }),
    icmpEcho({ payload: 'x' }), icmpEcho({ type: 3, code: 4, seq: 1400, payload: ipv4({}, udp({ dport: 53 })) }),
  ]
  for (const l4 of l4s) {
    s.push(ipv4({ options: bytes([7, 7, 4, 0, 0, 0, 0]) }, l4))
    s.push(ipv6({ ext: [{ type: 0, options: [5, 2, 0, 0] }, { type: 60 }, { type: 43, segmentsLeft: 0, addresses: ['2001:db8::5'] }] },
      l4.proto === 1 ? icmp6Echo({ type: 135, payload: 'x'.repeat(20) }) : l4))
    s.push(ipv6({ ext: [{ type: 51 }] }, l4))
  }
  s.push(...fragments4({}, udp({ dport: 53, payload: dnsR }), 32), ...fragments6({}, tcp({ payload: hello }), 64))
  return s
}

function generate(n: number, seed: number): Uint8Array[] {
  const r = prng(seed)
  const base = seeds()
  const out: Uint8Array[] = []
  while (out.length < n) {
    const kind = r.int(0, 9)
    if (kind <= 1) {                                   // random bytes, mostly with an IP version nibble
      const b = new Uint8Array(r.int(0, 120))
      for (let i = 0; i < b.length; i++) b[i] = r.u32() & 0xff
      if (b.length && r.float() < 0.8) b[0] = (r.float() < 0.5 ? 0x40 : 0x60) | (b[0] & 15)
      out.push(b)
    } else if (kind <= 3) {                            // a valid packet cut short
      const p = r.pick(base)
      out.push(p.slice(0, r.int(0, p.length)))
    } else if (kind <= 7) {                            // a valid packet with a few bytes changed
      const p = r.pick(base).slice()
      const flips = r.int(1, 6)
      for (let i = 0; i < flips && p.length; i++) {
        const at = r.float() < 0.6 ? r.int(0, Math.min(p.length - 1, 80)) : r.int(0, p.length - 1)
        p[at] = r.float() < 0.3 ? r.pick([0, 0xff, 0x40, 0x45, 0x60, 6, 17, 53, 0xc0, 0x16, 1, 44, 0, 43, 60]) : r.u32() & 0xff
      }
      out.push(r.float() < 0.3 ? p.slice(0, r.int(0, p.length)) : p)
    } else {                                           // a valid IP header, random transport bytes
      const body = new Uint8Array(r.int(0, 80))
      for (let i = 0; i < body.length; i++) body[i] = r.u32() & 0xff
      if (body.length >= 4 && r.float() < 0.5) body.set(u16(r.pick([53, 80, 443, 9999, 8080])), r.float() < 0.5 ? 0 : 2)
      const proto = r.pick([6, 17, 1, 58, 0, 43, 44, 60, 51, 59, 132])
      out.push(r.float() < 0.5 ? ipv4({ proto, fragOffset: r.float() < 0.1 ? 1 : 0 }, body) : ipv6({ proto }, body))
    }
  }
  return out
}

function check(results: PacketResult[], what: string): void {
  results.forEach((x, i) => {
    if (x.fault) throw new Error(`${what}: packet ${i} faulted: ${x.fault} ${x.message}`)
    if (x.lines.length !== 1) throw new Error(`${what}: packet ${i} printed ${x.lines.length} lines`)
  })
}

test(`${COUNT} random, mutated and truncated packets: no error, nothing read outside the packet (seed ${SEED})`, async () => {
  const packets = generate(COUNT, SEED)
  const vm = await ProtoVM.create(wrapScript(SCRIPT), { fuel: 5_000_000 })
  try {
    // 1: the packets laid end to end, the batch buffer zeroed
    const a = vm.run(packets, { fill: 0 })
    check(a, 'run 1')
    // 2: each packet followed by a junk record, with other metadata, the buffer full of 0xff
    const r = prng(SEED ^ 0x5a5a)
    const junk = (): Uint8Array => { const b = new Uint8Array(r.int(0, 64)); for (let i = 0; i < b.length; i++) b[i] = r.u32() & 0xff; return b }
    const mixed: Uint8Array[] = []
    for (const p of packets) mixed.push(p, junk())
    const b = vm.run(mixed, { fill: 0xff, meta: (i) => ({ origlen: 65535 - i, mark: r.u32(), sec: r.u32(), nsec: r.u32() % 1e9, id: r.u32() }) })
    check(b, 'run 2')
    // 3: the same packets preceded by junk, the buffer random
    const c0: Uint8Array[] = []
    for (const p of packets) c0.push(junk(), p)
    const c = vm.run(c0, { fill: (i) => (i * 2654435761) >>> 24 })
    check(c, 'run 3')
    let decodedTcp = 0, decodedDns = 0, decodedHttp = 0, decodedTls = 0, decodedBits = 0
    packets.forEach((p, i) => {
      const l1 = a[i].lines[0], l2 = b[2 * i].lines[0], l3 = c[2 * i + 1].lines[0]
      if (l1 !== l2 || l1 !== l3) {
        throw new Error(`packet ${i} (${Buffer.from(p).toString('hex')}) decodes differently with other bytes around it:\n${l1}\n${l2}\n${l3}`)
      }
      if (!l1.includes('tcp=nil')) decodedTcp++
      if (!l1.includes('dns=nil')) decodedDns++
      if (!l1.includes('http=nil')) decodedHttp++
      if (!l1.includes('tls=nil')) decodedTls++
      if (!l1.includes('bits=nil')) decodedBits++
    })
    // the generator reaches every decoder
    assert.ok(decodedTcp > COUNT / 60 && decodedDns > COUNT / 120 && decodedHttp > COUNT / 300 && decodedTls > COUNT / 600 && decodedBits > COUNT / 600,
      JSON.stringify({ decodedTcp, decodedDns, decodedHttp, decodedTls, decodedBits }))
  } finally { vm.close() }
})

test('every prefix of every seed packet decodes without error', async () => {
  const vm = await ProtoVM.create(wrapScript(SCRIPT), { fuel: 5_000_000 })
  try {
    const base = seeds().filter((_, i) => i % 7 === 0 || i >= 300)
    const prefixes: Uint8Array[] = []
    for (const p of base) for (let n = 0; n <= p.length; n += p.length > 200 ? 7 : 1) prefixes.push(p.subarray(0, n))
    const a = vm.run(prefixes, { fill: 0x00 })
    check(a, 'prefixes')
    const b = vm.run(prefixes, { fill: 0xa5 })
    check(b, 'prefixes')
    a.forEach((x, i) => assert.equal(x.lines[0], b[i].lines[0], `prefix ${i}`))
  } finally { vm.close() }
})

test('64 KiB segments built to make decoders slow decode in linear time', async () => {
  const big = (payload: string | Uint8Array) => ipv4({}, tcp({ dport: 80, flags: 'PA', payload }))
  const blanks = ' '.repeat(64000)
  const labels = concat(...Array.from({ length: 4000 }, () => bytes([1, 97])), bytes([0]))
  const pointers = concat(bytes([0, 1, 0, 0, 0, 0x7f, 0, 0, 0, 0, 0, 0]), ...Array.from({ length: 8000 }, (_, i) => bytes([0xc0, 12 + 2 * Math.max(0, i - 1)])))
  const packets = [
    big('GET / HTTP/1.1\r\nHost:' + blanks + 'x'),
    big('GET / HTTP/1.1\r\nHost:' + blanks + 'x\r\n\r\n'),
    big('GET / HTTP/1.1\r\nA:' + blanks + '\r\n' + ' \t'.repeat(2000) + '\r\n\r\n'),
    big('HTTP/1.1 200 ' + 'x'.repeat(64000)),
    big('GET /' + 'a'.repeat(64000)),
    big('GET ' + '/ '.repeat(32000)),
    big(concat(bytes([0x16, 3, 1, 0xff, 0xff, 1, 0, 0xff, 0xfb, 3, 3]), new Uint8Array(64000).fill(0x10))),
    ipv4({}, udp({ sport: 53, payload: concat(bytes([0, 1, 0x81, 0x80, 0, 1, 0xff, 0xff, 0, 0, 0, 0]), labels, bytes([0, 1, 0, 1]), pointers) })),
  ]
  const vm = await ProtoVM.create(wrapScript(SCRIPT), { fuel: 50_000_000 })
  try {
    const t0 = performance.now()
    const r = vm.run(packets)
    const ms = performance.now() - t0
    check(r, 'big')
    assert.ok(ms < 3000, `${ms.toFixed(0)} ms for ${packets.length} packets`)
  } finally { vm.close() }
})

test.run()
