// Packet and capture-file builders for tests, fixtures and benchmarks.
//
//   const p = ipv4({ src: '10.0.0.1', dst: '10.0.0.2', ttl: 5 },
//                  tcp({ sport: 1234, dport: 80, flags: 'S', options: [{ kind: 'mss', value: 1460 }] }))
//   const f = ethernet(p, { vlan: 100 })
//   writeFileSync(path, pcapBytes([{ sec: 1, nsec: 0, data: f }], { linktype: LINK.ETHERNET }))
//
// IP builders return complete packets with right lengths and checksums (src/packet/checksum.ts
// fixup) unless `fix: false`. Everything is deterministic: no clock, no Math.random.
import { openSync, writeSync, closeSync } from 'node:fs'
import { fixup, checksum16 } from '../../src/packet/checksum.js'

export type Bytes = Uint8Array | string | readonly number[]

/** Link types used by the tests. */
export const LINK = { NULL: 0, ETHERNET: 1, RAW: 101, LINUX_SLL: 113, IPV4: 228, IPV6: 229, LINUX_SLL2: 276 } as const

const latin1 = (s: string): Uint8Array => Uint8Array.from(Buffer.from(s, 'latin1'))

/** Bytes from a latin1 string (so '\x16\x03' works), an array of byte values, or a Uint8Array (not copied). */
export function bytes(b: Bytes | undefined): Uint8Array {
  if (b === undefined) return new Uint8Array(0)
  if (typeof b === 'string') return latin1(b)
  if (b instanceof Uint8Array) return b
  return Uint8Array.from(b as ArrayLike<number>)
}

export function concat(...parts: Uint8Array[]): Uint8Array {
  let n = 0
  for (const p of parts) n += p.length
  const out = new Uint8Array(n)
  let o = 0
  for (const p of parts) { out.set(p, o); o += p.length }
  return out
}

export function u16(v: number): number[] { return [(v >>> 8) & 0xff, v & 0xff] }
export function u32(v: number): number[] { return [(v >>> 24) & 0xff, (v >>> 16) & 0xff, (v >>> 8) & 0xff, v & 0xff] }

// ---- addresses ----

const addrCache = new Map<string, Uint8Array>()

function cachedAddr(s: string, parse: (s: string) => Uint8Array): Uint8Array {
  let a = addrCache.get(s)
  if (a === undefined) {
    a = parse(s)
    if (addrCache.size > 10000) addrCache.clear()
    addrCache.set(s, a)
  }
  return a.slice()
}

export function ip4addr(s: string): Uint8Array { return cachedAddr(s, parse4) }
export function ip6addr(s: string): Uint8Array { return cachedAddr(s, parse6) }

function parse4(s: string): Uint8Array {
  const parts = s.split('.').map(Number)
  if (parts.length !== 4 || parts.some((x) => !(x >= 0 && x <= 255 && Number.isInteger(x)))) throw new Error(`bad IPv4 address ${s}`)
  return Uint8Array.from(parts)
}

function parse6(s: string): Uint8Array {
  const out = new Uint8Array(16)
  let tail: number[] = []
  let str = s
  const v4 = /(\d+\.\d+\.\d+\.\d+)$/.exec(str)
  if (v4) {
    tail = Array.from(parse4(v4[1]))
    str = str.slice(0, -v4[1].length)
    if (str.endsWith(':') && !str.endsWith('::')) str = str.slice(0, -1)
  }
  const words = (x: string): number[] => (x === '' ? [] : x.split(':').map((w) => {
    const v = parseInt(w, 16)
    if (!/^[0-9a-fA-F]{1,4}$/.test(w)) throw new Error(`bad IPv6 address ${s}`)
    return v
  }))
  let head: number[], rest: number[]
  const dbl = str.indexOf('::')
  if (dbl >= 0) { head = words(str.slice(0, dbl)); rest = words(str.slice(dbl + 2)) } else { head = words(str); rest = [] }
  const all: number[] = []
  for (const w of head) all.push(w >> 8, w & 0xff)
  const back: number[] = []
  for (const w of rest) back.push(w >> 8, w & 0xff)
  back.push(...tail)
  if (dbl < 0 && all.length + back.length !== 16) throw new Error(`bad IPv6 address ${s}`)
  if (all.length + back.length > 16) throw new Error(`bad IPv6 address ${s}`)
  out.set(all, 0)
  out.set(back, 16 - back.length)
  return out
}

// ---- transport ----

/** A transport segment ready to be put in an IP packet. */
export interface L4 {
  proto: number
  bytes: Uint8Array
}

export type TcpOption =
  | { kind: 'eol' } | { kind: 'nop' }
  | { kind: 'mss'; value: number }
  | { kind: 'ws'; shift: number }
  | { kind: 'sackperm' }
  | { kind: 'sack'; blocks: [number, number][] }
  | { kind: 'ts'; val: number; ecr: number }
  | { kind: number; data?: Bytes }

export interface TcpOptions {
  sport?: number; dport?: number
  seq?: number; ack?: number
  /** Integer, or letters: F S R P A U E C (FIN SYN RST PSH ACK URG ECE CWR), e.g. 'SA', 'PA'. */
  flags?: number | string
  window?: number; urgent?: number
  options?: TcpOption[]
  payload?: Bytes
}

const TCP_FLAG_LETTERS: Record<string, number> = { F: 0x01, S: 0x02, R: 0x04, P: 0x08, A: 0x10, U: 0x20, E: 0x40, C: 0x80, N: 0x100 }

export function tcpFlags(f: number | string | undefined): number {
  if (f === undefined) return 0x10
  if (typeof f === 'number') return f
  let v = 0
  for (const c of f.toUpperCase()) {
    if (!(c in TCP_FLAG_LETTERS)) throw new Error(`bad TCP flag letter ${c}`)
    v |= TCP_FLAG_LETTERS[c]
  }
  return v
}

export function tcpOptionBytes(opts: TcpOption[]): Uint8Array {
  const out: number[] = []
  for (const o of opts) {
    switch (o.kind) {
      case 'eol': out.push(0); break
      case 'nop': out.push(1); break
      case 'mss': out.push(2, 4, ...u16((o as { value: number }).value)); break
      case 'ws': out.push(3, 3, (o as { shift: number }).shift); break
      case 'sackperm': out.push(4, 2); break
      case 'sack': {
        const bl = (o as { blocks: [number, number][] }).blocks
        out.push(5, 2 + 8 * bl.length)
        for (const [l, r] of bl) out.push(...u32(l), ...u32(r))
        break
      }
      case 'ts': out.push(8, 10, ...u32((o as { val: number }).val), ...u32((o as { ecr: number }).ecr)); break
      default: {
        const d = bytes((o as { data?: Bytes }).data)
        out.push(o.kind as number, 2 + d.length, ...d)
      }
    }
  }
  while (out.length % 4) out.push(0) // pad with EOL to a 4-byte boundary
  return Uint8Array.from(out)
}

export function tcp(o: TcpOptions = {}): L4 {
  const opt = tcpOptionBytes(o.options ?? [])
  const pl = bytes(o.payload)
  const hl = 20 + opt.length
  if (hl > 60) throw new Error('TCP options longer than 40 bytes')
  const b = new Uint8Array(hl + pl.length)
  const f = tcpFlags(o.flags)
  b.set([...u16(o.sport ?? 40000), ...u16(o.dport ?? 80), ...u32(o.seq ?? 1000), ...u32(o.ack ?? 0),
    ((hl / 4) << 4) | ((f >> 8) & 0x0f), f & 0xff, ...u16(o.window ?? 65535), 0, 0, ...u16(o.urgent ?? 0)])
  b.set(opt, 20)
  b.set(pl, hl)
  return { proto: 6, bytes: b }
}

export interface UdpOptions {
  sport?: number; dport?: number; payload?: Bytes
  /** false: an IPv4 datagram without checksum (0). */
  checksum?: boolean
}

export function udp(o: UdpOptions = {}): L4 {
  const pl = bytes(o.payload)
  const b = new Uint8Array(8 + pl.length)
  // A non-zero placeholder checksum makes fixup compute it (0 would mean "none" on IPv4).
  const ck = o.checksum === false ? 0 : 0xffff
  b.set([...u16(o.sport ?? 40000), ...u16(o.dport ?? 53), ...u16(b.length & 0xffff), ...u16(ck)])
  b.set(pl, 8)
  return { proto: 17, bytes: b }
}

export interface EchoOptions { reply?: boolean; id?: number; seq?: number; payload?: Bytes; type?: number; code?: number }

/** ICMP (v4) echo request (type 8) or reply (type 0); `type` makes any other ICMP message. */
export function icmpEcho(o: EchoOptions = {}): L4 {
  return icmpLike(1, o.type ?? (o.reply ? 0 : 8), o)
}

/** ICMPv6 echo request (type 128) or reply (129). */
export function icmp6Echo(o: EchoOptions = {}): L4 {
  return icmpLike(58, o.type ?? (o.reply ? 129 : 128), o)
}

function icmpLike(proto: number, type: number, o: EchoOptions): L4 {
  const pl = bytes(o.payload ?? 'abcdefghijklmnopqrstuvwabcdefghi')
  const b = new Uint8Array(8 + pl.length)
  b.set([type, o.code ?? 0, 0, 0, ...u16(o.id ?? 1), ...u16(o.seq ?? 1)])
  b.set(pl, 8)
  if (proto === 1) { const c = checksum16(b); b[2] = c >> 8; b[3] = c & 0xff }
  return { proto, bytes: b }
}

/** Any other transport (or none): the bytes are used as they are. */
export function rawL4(proto: number, data: Bytes): L4 { return { proto, bytes: bytes(data) } }

// ---- IP ----

export interface IPv4Options {
  src?: string; dst?: string
  id?: number; df?: boolean; mf?: boolean
  /** Fragment offset in 8-byte units, as in the header. */
  fragOffset?: number
  ttl?: number; dscp?: number; ecn?: number
  /** IP options (padded with EOL to a multiple of 4 bytes). */
  options?: Bytes
  /** Overrides the protocol number of the transport. */
  proto?: number
  /** false: leave lengths and checksums as built (all zero). */
  fix?: boolean
}

export function ipv4(o: IPv4Options, l4: L4 | Bytes = new Uint8Array(0)): Uint8Array {
  const t = isL4(l4) ? l4 : { proto: o.proto ?? 59, bytes: bytes(l4) }
  const opt = bytes(o.options)
  const ol = (opt.length + 3) & ~3
  const hl = 20 + ol
  if (hl > 60) throw new Error('IPv4 options longer than 40 bytes')
  const b = new Uint8Array(hl + t.bytes.length)
  const fo = o.fragOffset ?? 0
  b[0] = 0x40 | (hl >> 2)
  b[1] = ((o.dscp ?? 0) << 2) | ((o.ecn ?? 0) & 3)
  b.set(u16(o.id ?? 0), 4)
  b[6] = (o.df ? 0x40 : 0) | (o.mf ? 0x20 : 0) | ((fo >> 8) & 0x1f)
  b[7] = fo & 0xff
  b[8] = o.ttl ?? 64
  b[9] = o.proto ?? t.proto
  b.set(ip4addr(o.src ?? '192.0.2.1'), 12)
  b.set(ip4addr(o.dst ?? '198.51.100.2'), 16)
  b.set(opt, 20)
  b.set(t.bytes, hl)
  if (o.fix !== false) fixup(b)
  return b
}

export type Ext6 =
  | { type: 0 | 60; options?: Bytes }
  | { type: 43; routingType?: number; segmentsLeft?: number; addresses?: string[]; data?: Bytes }
  | { type: 44; offset?: number; more?: boolean; id?: number }
  | { type: 51; spi?: number; seq?: number; icv?: Bytes }

export interface IPv6Options {
  src?: string; dst?: string
  tclass?: number; flow?: number; hopLimit?: number
  /** Same as hopLimit (the name psd's scripts use for both families). */
  ttl?: number
  /** Extension headers in order, between the fixed header and the transport. */
  ext?: Ext6[]
  /** Overrides the next-header value of the last header. */
  proto?: number
  fix?: boolean
}

function extBytes(e: Ext6, next: number): Uint8Array {
  if (e.type === 44) {
    const off = e.offset ?? 0
    return Uint8Array.from([next, 0, (off >> 5) & 0xff, ((off & 0x1f) << 3) | (e.more ? 1 : 0), ...u32(e.id ?? 1)])
  }
  if (e.type === 51) {
    const icv = bytes(e.icv ?? new Uint8Array(12))
    const len = 12 + icv.length
    if (len % 8) throw new Error('AH length must be a multiple of 8 on IPv6')
    return Uint8Array.from([next, len / 4 - 2, 0, 0, ...u32(e.spi ?? 0x100), ...u32(e.seq ?? 1), ...icv])
  }
  let body: number[]
  if (e.type === 43) {
    const addrs = (e.addresses ?? []).flatMap((a) => Array.from(ip6addr(a)))
    body = [e.routingType ?? 0, e.segmentsLeft ?? 0, 0, 0, 0, 0, ...addrs, ...bytes(e.data)]
  } else {
    body = Array.from(bytes(e.options))
  }
  // Pad options headers with PadN (or Pad1) to a multiple of 8 (2 bytes of header come first).
  const padLen = (8 - ((body.length + 2) % 8)) % 8
  if (e.type !== 43) {
    if (padLen === 1) body.push(0)
    else if (padLen > 1) body.push(1, padLen - 2, ...new Array(padLen - 2).fill(0))
  } else body.push(...new Array(padLen).fill(0))
  const total = body.length + 2
  return Uint8Array.from([next, total / 8 - 1, ...body])
}

function isL4(x: unknown): x is L4 {
  return typeof x === 'object' && x !== null && 'proto' in x && 'bytes' in x
}

export function ipv6(o: IPv6Options, l4: L4 | Bytes = new Uint8Array(0)): Uint8Array {
  const t = isL4(l4) ? l4 : { proto: o.proto ?? 59, bytes: bytes(l4) }
  const ext = o.ext ?? []
  const parts: Uint8Array[] = []
  for (let i = 0; i < ext.length; i++) {
    const next = i + 1 < ext.length ? ext[i + 1].type : (o.proto ?? t.proto)
    parts.push(extBytes(ext[i], next))
  }
  const eh = concat(...parts)
  const b = new Uint8Array(40 + eh.length + t.bytes.length)
  const tc = o.tclass ?? 0, fl = o.flow ?? 0
  b[0] = 0x60 | (tc >> 4)
  b[1] = ((tc & 15) << 4) | ((fl >> 16) & 15)
  b[2] = (fl >> 8) & 0xff
  b[3] = fl & 0xff
  b[6] = ext.length ? ext[0].type : (o.proto ?? t.proto)
  b[7] = o.hopLimit ?? o.ttl ?? 64
  b.set(ip6addr(o.src ?? '2001:db8::1'), 8)
  b.set(ip6addr(o.dst ?? '2001:db8::2'), 24)
  b.set(eh, 40)
  b.set(t.bytes, 40 + eh.length)
  if (o.fix !== false) fixup(b)
  return b
}

/**
 * Builds the whole datagram (right checksums), then cuts its transport bytes into IPv4
 * fragments of at most `size` bytes of payload (rounded down to a multiple of 8).
 */
export function fragments4(o: IPv4Options, l4: L4, size: number): Uint8Array[] {
  const whole = ipv4(o, l4)
  const hl = (whole[0] & 15) * 4
  const body = whole.subarray(hl)
  const step = Math.max(8, size & ~7)
  const out: Uint8Array[] = []
  for (let off = 0; off < body.length; off += step) {
    const chunk = body.subarray(off, Math.min(body.length, off + step))
    out.push(ipv4({ ...o, proto: l4.proto, mf: off + step < body.length, fragOffset: off / 8 }, chunk))
  }
  return out
}

/** IPv6 fragments (a Fragment header with `id`) of the datagram's transport bytes. */
export function fragments6(o: IPv6Options, l4: L4, size: number, id = 0x1234): Uint8Array[] {
  const whole = ipv6(o, l4)
  const body = whole.subarray(whole.length - l4.bytes.length)
  const step = Math.max(8, size & ~7)
  const out: Uint8Array[] = []
  for (let off = 0; off < body.length; off += step) {
    const chunk = body.subarray(off, Math.min(body.length, off + step))
    const ext: Ext6[] = [...(o.ext ?? []), { type: 44, offset: off / 8, more: off + step < body.length, id }]
    out.push(ipv6({ ...o, ext, proto: l4.proto }, chunk))
  }
  return out
}

// ---- application payloads ----

/** DNS name in wire format (labels, then a zero byte). */
export function dnsName(name: string): Uint8Array {
  const out: number[] = []
  for (const label of name.split('.').filter((l) => l.length)) {
    const l = latin1(label)
    if (l.length > 63) throw new Error(`DNS label too long: ${label}`)
    out.push(l.length, ...l)
  }
  out.push(0)
  return Uint8Array.from(out)
}

export function dnsQuery(o: { id?: number; qname: string; qtype?: number; qclass?: number; rd?: boolean }): Uint8Array {
  return concat(Uint8Array.from([...u16(o.id ?? 0x1234), o.rd === false ? 0 : 1, 0, 0, 1, 0, 0, 0, 0, 0, 0]),
    dnsName(o.qname), Uint8Array.from([...u16(o.qtype ?? 1), ...u16(o.qclass ?? 1)]))
}

export interface DnsAnswer { type: number; ttl?: number; data: string | Uint8Array }

/** A response repeating the question, with answers named by a pointer to it (A/AAAA data as text). */
export function dnsResponse(o: { id?: number; qname: string; qtype?: number; rcode?: number; answers?: DnsAnswer[] }): Uint8Array {
  const ans = o.answers ?? []
  const head = Uint8Array.from([...u16(o.id ?? 0x1234), 0x81, 0x80 | (o.rcode ?? 0), 0, 1, ...u16(ans.length), 0, 0, 0, 0])
  const q = concat(dnsName(o.qname), Uint8Array.from([...u16(o.qtype ?? 1), 0, 1]))
  const rr = ans.map((a) => {
    const d = typeof a.data !== 'string' ? a.data : a.type === 1 ? ip4addr(a.data) : a.type === 28 ? ip6addr(a.data) : dnsName(a.data)
    return concat(Uint8Array.from([0xc0, 12, ...u16(a.type), 0, 1, ...u32(a.ttl ?? 300), ...u16(d.length)]), d)
  })
  return concat(head, q, ...rr)
}

export function httpGet(host: string, path = '/', headers: Record<string, string> = {}): Uint8Array {
  let s = `GET ${path} HTTP/1.1\r\nHost: ${host}\r\nUser-Agent: psd-test/1.0\r\nAccept: */*\r\n`
  for (const [k, v] of Object.entries(headers)) s += `${k}: ${v}\r\n`
  return latin1(s + '\r\n')
}

/** A TLS record holding a ClientHello (client_version 0x0303) with SNI and optional ALPN. */
export function tlsClientHello(o: { sni?: string; alpn?: string[]; versions?: number[]; seed?: number }): Uint8Array {
  const rnd = prng(o.seed ?? 7)
  const rb = (n: number): number[] => Array.from({ length: n }, () => rnd.u32() & 0xff)
  const ext = (type: number, body: number[]): number[] => [...u16(type), ...u16(body.length), ...body]
  const exts: number[] = []
  if (o.sni !== undefined) {
    const n = Array.from(latin1(o.sni))
    const entry = [0, ...u16(n.length), ...n]
    exts.push(...ext(0, [...u16(entry.length), ...entry]))
  }
  exts.push(...ext(10, [0, 4, 0, 0x1d, 0, 0x17]))                 // supported_groups: x25519, P-256
  exts.push(...ext(13, [0, 4, 0x04, 0x03, 0x08, 0x04]))           // signature_algorithms
  if (o.alpn && o.alpn.length) {
    const list = o.alpn.flatMap((p) => { const b = Array.from(latin1(p)); return [b.length, ...b] })
    exts.push(...ext(16, [...u16(list.length), ...list]))
  }
  const vers = o.versions ?? [0x0304, 0x0303]
  exts.push(...ext(43, [vers.length * 2, ...vers.flatMap(u16)]))  // supported_versions
  exts.push(...ext(51, [0, 36, 0, 0x1d, 0, 32, ...rb(32)]))        // key_share: x25519
  const body = [0x03, 0x03, ...rb(32), 32, ...rb(32),
    0, 6, 0x13, 0x01, 0x13, 0x02, 0xc0, 0x2f, 1, 0, ...u16(exts.length), ...exts]
  const hs = [1, (body.length >> 16) & 0xff, (body.length >> 8) & 0xff, body.length & 0xff, ...body]
  return Uint8Array.from([0x16, 0x03, 0x01, ...u16(hs.length), ...hs])
}

// ---- layer 2 ----

export interface EthernetOptions {
  src?: Bytes; dst?: Bytes
  /** VLAN ids, outermost first; one tag uses TPID 0x8100, with more the outer ones use 0x88a8. */
  vlan?: number | number[]
  /** Ethertype (default from the IP version nibble). */
  ethertype?: number
  /** Pad the frame to 60 bytes (default true). */
  pad?: boolean
  /** Append a 4-byte frame check sequence (zeros; its value is not checked). */
  fcs?: boolean
}

function etherTypeOf(ip: Uint8Array): number {
  return ip.length > 0 && ip[0] >> 4 === 6 ? 0x86dd : 0x0800
}

export function ethernet(ip: Uint8Array, o: EthernetOptions = {}): Uint8Array {
  const tags = o.vlan === undefined ? [] : Array.isArray(o.vlan) ? o.vlan : [o.vlan]
  const hl = 14 + 4 * tags.length
  let len = hl + ip.length
  if (o.pad !== false && len < 60) len = 60
  const b = new Uint8Array(len + (o.fcs ? 4 : 0))
  b.set(o.dst ? bytes(o.dst) : [0x02, 0, 0, 0, 0, 0x02], 0)
  b.set(o.src ? bytes(o.src) : [0x02, 0, 0, 0, 0, 0x01], 6)
  let p = 12
  tags.forEach((id, i) => {
    b.set([...u16(i < tags.length - 1 ? 0x88a8 : 0x8100), ...u16(id & 0x0fff)], p)
    p += 4
  })
  b.set(u16(o.ethertype ?? etherTypeOf(ip)), p)
  b.set(ip, hl)
  return b
}

/** An ARP request in an Ethernet frame (a non-IP frame). */
export function arpFrame(): Uint8Array {
  const arp = Uint8Array.from([0, 1, 8, 0, 6, 4, 0, 1, 2, 0, 0, 0, 0, 1, 192, 0, 2, 1, 0, 0, 0, 0, 0, 0, 192, 0, 2, 2])
  return ethernet(arp, { ethertype: 0x0806 })
}

/** Linux cooked capture v1 (link type 113): 16-byte header, protocol at byte 14. */
export function sll(ip: Uint8Array, o: { packetType?: number; protocol?: number; addr?: Bytes } = {}): Uint8Array {
  const b = new Uint8Array(16 + ip.length)
  const a = o.addr ? bytes(o.addr) : Uint8Array.from([0x02, 0, 0, 0, 0, 0x01])
  b.set([...u16(o.packetType ?? 0), ...u16(1), ...u16(a.length)], 0)
  b.set(a.subarray(0, 8), 6)
  b.set(u16(o.protocol ?? etherTypeOf(ip)), 14)
  b.set(ip, 16)
  return b
}

/** Linux cooked capture v2 (link type 276): 20-byte header, protocol at byte 0. */
export function sll2(ip: Uint8Array, o: { protocol?: number; ifindex?: number; packetType?: number } = {}): Uint8Array {
  const b = new Uint8Array(20 + ip.length)
  b.set([...u16(o.protocol ?? etherTypeOf(ip)), 0, 0, ...u32(o.ifindex ?? 2), 0, 1, o.packetType ?? 0, 6,
    0x02, 0, 0, 0, 0, 0x01, 0, 0], 0)
  b.set(ip, 20)
  return b
}

/** BSD loopback (link type 0): the address family in the capturing host's byte order. */
export function loopback(ip: Uint8Array, o: { le?: boolean; family?: number } = {}): Uint8Array {
  const fam = o.family ?? (ip[0] >> 4 === 6 ? 30 : 2)
  const b = new Uint8Array(4 + ip.length)
  new DataView(b.buffer).setUint32(0, fam, o.le !== false)
  b.set(ip, 4)
  return b
}

// ---- capture files ----

export interface Rec {
  sec?: number; nsec?: number
  /** The frame as the link type has it. */
  data: Uint8Array
  /** Original length (default data.length). */
  origlen?: number
}

export interface PcapOptions {
  linktype?: number
  /** Little-endian (default) or big-endian. */
  le?: boolean
  /** Nanosecond magic (default false: microseconds; nsec is then cut to whole µs). */
  nano?: boolean
  snaplen?: number
}

export function pcapHeader(o: PcapOptions = {}): Uint8Array {
  const b = new Uint8Array(24), d = new DataView(b.buffer), le = o.le !== false
  d.setUint32(0, o.nano ? 0xa1b23c4d : 0xa1b2c3d4, le)
  d.setUint16(4, 2, le); d.setUint16(6, 4, le)
  d.setUint32(16, o.snaplen ?? 262144, le)
  d.setUint32(20, o.linktype ?? LINK.RAW, le)
  return b
}

export function pcapRecord(r: Rec, o: PcapOptions = {}): Uint8Array {
  const b = new Uint8Array(16 + r.data.length), d = new DataView(b.buffer), le = o.le !== false
  const nsec = r.nsec ?? 0
  d.setUint32(0, r.sec ?? 0, le)
  d.setUint32(4, o.nano ? nsec : Math.floor(nsec / 1000), le)
  d.setUint32(8, r.data.length, le)
  d.setUint32(12, r.origlen ?? r.data.length, le)
  b.set(r.data, 16)
  return b
}

/** A whole classic pcap file. */
export function pcapBytes(recs: Rec[], o: PcapOptions = {}): Uint8Array {
  return concat(pcapHeader(o), ...recs.map((r) => pcapRecord(r, o)))
}

export interface NgInterface {
  linktype: number
  snaplen?: number
  /** if_tsresol byte as written: k for 10^-k seconds, 0x80|k for 2^-k. Omitted: the default (µs). */
  tsresol?: number
  /** if_tsoffset seconds. */
  tsoffset?: number
  name?: string
}

export interface NgPacket extends Rec {
  iface?: number
  /** 'epb' (default), 'spb' (simple: no timestamp, interface 0), or 'pb' (obsolete packet block). */
  kind?: 'epb' | 'spb' | 'pb'
  /** Raw timestamp in the interface's units (overrides sec/nsec). */
  ts?: bigint
}

/** Any other block: written as is (type, body padded to 4 bytes). */
export interface NgOther { block: number; body?: Uint8Array }

function ngBlock(type: number, body: Uint8Array, le: boolean): Uint8Array {
  const pl = (body.length + 3) & ~3
  const b = new Uint8Array(12 + pl), d = new DataView(b.buffer)
  d.setUint32(0, type, le); d.setUint32(4, b.length, le); d.setUint32(b.length - 4, b.length, le)
  b.set(body, 8)
  return b
}

function ngOption(code: number, value: Uint8Array, le: boolean): Uint8Array {
  const b = new Uint8Array(4 + ((value.length + 3) & ~3)), d = new DataView(b.buffer)
  d.setUint16(0, code, le); d.setUint16(2, value.length, le)
  b.set(value, 4)
  return b
}

export function pcapngSHB(le = true): Uint8Array {
  const body = new Uint8Array(16), d = new DataView(body.buffer)
  d.setUint32(0, 0x1a2b3c4d, le); d.setUint16(4, 1, le); d.setUint16(6, 0, le)
  d.setInt32(8, -1, le); d.setInt32(12, -1, le) // section length: unknown
  return ngBlock(0x0a0d0d0a, body, le)
}

export function pcapngIDB(i: NgInterface, le = true): Uint8Array {
  const head = new Uint8Array(8), d = new DataView(head.buffer)
  d.setUint16(0, i.linktype, le); d.setUint32(4, i.snaplen ?? 262144, le)
  const opts: Uint8Array[] = []
  if (i.name !== undefined) opts.push(ngOption(2, latin1(i.name), le))
  if (i.tsresol !== undefined) opts.push(ngOption(9, Uint8Array.of(i.tsresol), le))
  if (i.tsoffset !== undefined) {
    const v = new Uint8Array(8)
    new DataView(v.buffer).setBigInt64(0, BigInt(i.tsoffset), le)
    opts.push(ngOption(14, v, le))
  }
  if (opts.length) opts.push(new Uint8Array(4)) // opt_endofopt
  return ngBlock(1, concat(head, ...opts), le)
}

/** Timestamp of sec/nsec in units of the given if_tsresol byte (default 6: µs). */
export function tsUnits(sec: number, nsec: number, tsresol = 6): bigint {
  if (tsresol & 0x80) {
    const k = BigInt(tsresol & 0x7f)
    return (BigInt(sec) << k) + ((BigInt(nsec) << k) / 1000000000n)
  }
  const k = tsresol
  const per = 10n ** BigInt(k)
  const frac = k <= 9 ? BigInt(nsec) / 10n ** BigInt(9 - k) : BigInt(nsec) * 10n ** BigInt(k - 9)
  return BigInt(sec) * per + frac
}

export function pcapngPacket(p: NgPacket, ifc: NgInterface, le = true): Uint8Array {
  const kind = p.kind ?? 'epb'
  const data = p.data, orig = p.origlen ?? data.length
  if (kind === 'spb') {
    const body = new Uint8Array(4 + data.length)
    new DataView(body.buffer).setUint32(0, orig, le)
    body.set(data, 4)
    return ngBlock(3, body, le)
  }
  const ts = p.ts ?? tsUnits(p.sec ?? 0, p.nsec ?? 0, ifc.tsresol ?? 6)
  const body = new Uint8Array(20 + data.length), d = new DataView(body.buffer)
  if (kind === 'pb') { d.setUint16(0, p.iface ?? 0, le); d.setUint16(2, 0, le) } else d.setUint32(0, p.iface ?? 0, le)
  d.setUint32(4, Number(ts >> 32n), le); d.setUint32(8, Number(ts & 0xffffffffn), le)
  d.setUint32(12, data.length, le); d.setUint32(16, orig, le)
  body.set(data, 20)
  return ngBlock(kind === 'pb' ? 2 : 6, body, le)
}

/**
 * One pcapng section: header, the interfaces, then the items in order. Concatenate several
 * sections for a multi-section file.
 */
export function pcapngBytes(o: { le?: boolean; interfaces: NgInterface[]; packets: (NgPacket | NgOther)[] }): Uint8Array {
  const le = o.le !== false
  const parts = [pcapngSHB(le), ...o.interfaces.map((i) => pcapngIDB(i, le))]
  for (const p of o.packets) {
    if ('block' in p) parts.push(ngBlock(p.block, p.body ?? new Uint8Array(0), le))
    else parts.push(pcapngPacket(p, o.interfaces[(p as NgPacket).iface ?? 0] ?? { linktype: 101 }, le))
  }
  return concat(...parts)
}

/** Streaming capture writer (pcap or single-interface pcapng), for large generated files. */
export class CaptureWriter {
  private fd: number
  private buf = new Uint8Array(1 << 20)
  private pos = 0
  private o: PcapOptions & { format: 'pcap' | 'pcapng'; tsresol?: number }
  private ifc: NgInterface

  constructor(path: string, o: PcapOptions & { format?: 'pcap' | 'pcapng'; tsresol?: number } = {}) {
    this.o = { format: 'pcap', ...o }
    this.fd = openSync(path, 'w')
    this.ifc = { linktype: o.linktype ?? LINK.RAW, tsresol: o.tsresol, snaplen: o.snaplen }
    if (this.o.format === 'pcap') this.put(pcapHeader(o))
    else { this.put(pcapngSHB(o.le !== false)); this.put(pcapngIDB(this.ifc, o.le !== false)) }
  }

  private put(b: Uint8Array): void {
    if (this.pos + b.length > this.buf.length) this.flush()
    if (b.length > this.buf.length) { writeSync(this.fd, b); return }
    this.buf.set(b, this.pos)
    this.pos += b.length
  }

  write(sec: number, nsec: number, frame: Uint8Array, origlen = frame.length): void {
    const r = { sec, nsec, data: frame, origlen }
    this.put(this.o.format === 'pcap' ? pcapRecord(r, this.o) : pcapngPacket(r, this.ifc, this.o.le !== false))
  }

  flush(): void {
    let off = 0
    while (off < this.pos) off += writeSync(this.fd, this.buf, off, this.pos - off)
    this.pos = 0
  }

  close(): void { this.flush(); closeSync(this.fd) }
}

// ---- deterministic generator ----

/** A small deterministic PRNG (mulberry32). */
export function prng(seed: number): { u32(): number; float(): number; int(lo: number, hi: number): number; pick<T>(a: readonly T[]): T } {
  let s = seed >>> 0
  const u32 = (): number => {
    s = (s + 0x6d2b79f5) >>> 0
    let t = s
    t = Math.imul(t ^ (t >>> 15), t | 1)
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61)
    return (t ^ (t >>> 14)) >>> 0
  }
  const float = (): number => u32() / 4294967296
  return {
    u32, float,
    int: (lo, hi) => lo + Math.floor(float() * (hi - lo + 1)),
    pick: (a) => a[Math.floor(float() * a.length)],
  }
}

export interface MixedPacket { sec: number; nsec: number; data: Uint8Array; kind: string }

const HTTP_HOSTS = ['example.com', 'www.example.org', 'api.example.net', 'blocked.example', 'ads.example.net', 'cdn.example.com']
const DNS_NAMES = ['example.com', 'www.example.org', 'mail.example.net', 'ads.example.net', 'tracker.example', 'a.b.c.example.com', 'cdn.example.com']

/**
 * A deterministic stream of mixed IP packets (layer 3): about 60 % TCP (SYNs with options,
 * SYN-ACKs, ACKs, HTTP GETs with Host headers, data), 30 % UDP (DNS queries to 53 with real
 * names, UDP 9999 payloads half of which start with 'X', NTP, QUIC-like 443, other ports),
 * 10 % ICMP/ICMPv6 echo; about 30 % IPv6; IP sizes 40-1500 bytes. `kind` says which.
 */
export function* mixedPackets(count: number, seed = 1): Generator<MixedPacket> {
  const r = prng(seed)
  const pool = new Uint8Array(65536 + 1500)
  for (let i = 0; i < pool.length; i += 4) { const v = r.u32(); pool[i] = v; pool[i + 1] = v >> 8; pool[i + 2] = v >> 16; pool[i + 3] = v >> 24 }
  const rand = (n: number): Uint8Array => { const o = r.int(0, 65535); return pool.slice(o, o + n) }
  let sec = 1700000000, nsec = 0
  for (let i = 0; i < count; i++) {
    nsec += r.int(1000, 2000000)
    if (nsec >= 1e9) { sec += 1; nsec -= 1e9 }
    const v6 = r.float() < 0.3
    const hdr = v6 ? 40 : 20
    const cl = r.int(1, 250), sv = r.int(1, 20)
    const client = v6 ? `2001:db8:1::${cl.toString(16)}` : `10.0.${cl >> 4}.${cl}`
    const server = v6 ? `2001:db8:2::${sv.toString(16)}` : r.pick(['192.0.2.', '198.51.100.', '203.0.113.']) + sv
    const outbound = r.float() < 0.7
    const [src, dst] = outbound ? [client, server] : [server, client]
    const ip = (l4: L4): Uint8Array => v6
      ? ipv6({ src, dst, hopLimit: r.pick([64, 63, 255]), flow: r.u32() & 0xfffff }, l4)
      : ipv4({ src, dst, id: r.u32() & 0xffff, df: r.float() < 0.8, ttl: r.pick([64, 63, 128, 255]) }, l4)
    const eph = r.int(32768, 60999)
    const x = r.float()
    let data: Uint8Array, kind: string
    if (x < 0.6) {
      const port = r.pick([80, 443, 443, 22, 8080])
      const [sport, dport] = outbound ? [eph, port] : [port, eph]
      const seq = r.u32(), ack = r.u32(), win = r.int(1000, 65535)
      const ts: TcpOption[] = [{ kind: 'nop' }, { kind: 'nop' }, { kind: 'ts', val: r.u32(), ecr: r.u32() }]
      const y = r.float()
      if (y < 0.15) {
        kind = 'tcp-syn'
        data = ip(tcp({ sport: eph, dport: port, seq, ack: 0, flags: 'S', window: 64240, options: [
          { kind: 'mss', value: v6 ? 1440 : 1460 }, { kind: 'sackperm' }, { kind: 'ts', val: r.u32(), ecr: 0 },
          { kind: 'nop' }, { kind: 'ws', shift: 7 }] }))
      } else if (y < 0.25) {
        kind = 'tcp-synack'
        data = ip(tcp({ sport: port, dport: eph, seq, ack, flags: 'SA', window: 65160, options: [
          { kind: 'mss', value: 1460 }, { kind: 'nop' }, { kind: 'nop' }, { kind: 'sackperm' }, { kind: 'nop' }, { kind: 'ws', shift: 7 }] }))
      } else if (y < 0.55) {
        kind = 'tcp-ack'
        data = ip(tcp({ sport, dport, seq, ack, flags: r.float() < 0.1 ? 'FA' : 'A', window: win, options: r.float() < 0.5 ? ts : [] }))
      } else if (y < 0.7) {
        kind = 'http-get'
        const path = r.pick(['/', '/index.html', '/api/v1/items?id=' + r.int(1, 99999), '/static/app.js', '/login'])
        data = ip(tcp({ sport: eph, dport: r.pick([80, 80, 8080]), seq, ack, flags: 'PA', window: win, options: ts,
          payload: httpGet(r.pick(HTTP_HOSTS), path) }))
      } else {
        kind = 'tcp-data'
        const n = r.int(1, 1500 - hdr - 32)
        const dp = r.pick([443, 443, 22, 5201])
        const [sp2, dp2] = outbound ? [eph, dp] : [dp, eph]
        data = ip(tcp({ sport: sp2, dport: dp2, seq, ack, flags: 'PA', window: win, options: ts, payload: rand(n) }))
      }
    } else if (x < 0.9) {
      const y = r.float()
      if (y < 0.5) {
        kind = 'dns-query'
        const name = r.float() < 0.3 ? `h${r.int(1, 9999)}.${r.pick(DNS_NAMES)}` : r.pick(DNS_NAMES)
        data = ip(udp({ sport: eph, dport: 53, payload: dnsQuery({ id: r.u32() & 0xffff, qname: name, qtype: r.pick([1, 1, 28, 28, 15, 16, 65]) }) }))
      } else if (y < 0.65) {
        kind = 'udp-9999'
        const n = r.int(12, 600)
        const p = rand(n)
        if (r.float() < 0.5) p[0] = 0x58 // 'X'
        else if (p[0] === 0x58) p[0] = 0x59
        data = ip(udp({ sport: eph, dport: 9999, payload: p }))
      } else {
        kind = 'udp-other'
        const port = r.pick([123, 443, 443, r.int(10000, 19999), r.int(20000, 29999)])
        const n = port === 123 ? 48 : port === 443 ? r.int(1200, 1500 - hdr - 8) : r.int(12, 1400)
        const p = rand(n)
        if (port === 123) { p.fill(0); p[0] = 0x23; p.set(u32(r.u32()), 40) } // NTP v4 client request
        data = ip(udp({ sport: port === 123 ? 123 : eph, dport: port, payload: p }))
      }
    } else {
      kind = v6 ? 'icmp6-echo' : 'icmp-echo'
      const n = r.float() < 0.7 ? 56 : r.int(12, 1400)
      const o = { reply: !outbound, id: r.int(1, 65535), seq: r.int(1, 5000), payload: rand(n) }
      data = ip(v6 ? icmp6Echo(o) : icmpEcho(o))
    }
    yield { sec, nsec, data, kind }
  }
}

export interface MixedStats { count: number; bytes: number; v4: number; v6: number; kinds: Record<string, number> }

/**
 * Writes `count` packets of mixedPackets(count, seed) to `path`: by default a little-endian
 * nanosecond pcap of Ethernet frames (5 % VLAN tagged, short frames padded to 60 bytes);
 * `linktype: 101` writes raw IP, `format: 'pcapng'` a pcapng file.
 */
export function makeMixedCapture(path: string, count: number, seed = 1,
  o: { linktype?: 1 | 101; format?: 'pcap' | 'pcapng'; nano?: boolean } = {}): MixedStats {
  const linktype = o.linktype ?? LINK.ETHERNET
  const w = new CaptureWriter(path, { linktype, format: o.format ?? 'pcap', nano: o.nano ?? true, tsresol: 9 })
  const st: MixedStats = { count: 0, bytes: 0, v4: 0, v6: 0, kinds: {} }
  let vl = seed >>> 0
  for (const p of mixedPackets(count, seed)) {
    vl = (Math.imul(vl, 1103515245) + 12345) >>> 0
    const frame = linktype === LINK.ETHERNET ? ethernet(p.data, (vl >>> 16) % 20 === 0 ? { vlan: 100 + ((vl >>> 8) & 0xff) } : {}) : p.data
    w.write(p.sec, p.nsec, frame)
    st.count++
    st.bytes += p.data.length
    if (p.data[0] >> 4 === 6) st.v6++; else st.v4++
    st.kinds[p.kind] = (st.kinds[p.kind] ?? 0) + 1
  }
  w.close()
  return st
}
