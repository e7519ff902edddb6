// The four comparison filters (bench/compare/filters/*.lua) in plain JavaScript over Buffers: no
// VM, no sandbox, no budget. Each decodes what its Lua twin asks psd's protocol objects for,
// the way psd decodes it (wasm/lua/proto-ip.lua, proto-app.lua): the IP header (IPv4 IHL and
// total length, the IPv6 extension header walk, first fragments only), addresses as text
// (memoised, RFC 5952 for IPv6), TCP/UDP headers, the HTTP start line and headers (names
// lower-cased, values trimmed), the DNS header and the first question's name. Verdicts: 1
// accept, 0 drop (the kernel's codes, as in psd's verdict log).

export type JsFilter = (p: Buffer) => number

const ACCEPT = 1, DROP = 0

// ---- IP

interface Ip { family: 4 | 6; l4: number; proto: number; end: number; ok: boolean }

function decodeIp(p: Buffer): Ip | null {
  const len = p.length
  if (len < 20) return null
  const v = p[0] >> 4
  if (v === 4) {
    const hl = (p[0] & 15) << 2
    if (hl < 20 || hl > len) return null
    const tl = p[2] << 8 | p[3]
    let end = len, ok = true
    if (tl < len) { if (tl >= hl) end = tl; else if (tl !== 0) ok = false }
    if (((p[6] & 0x1f) | p[7]) !== 0) ok = false // not the first fragment
    return { family: 4, l4: hl, proto: p[9], end, ok }
  }
  if (v === 6) {
    if (len < 40) return null
    const pl = p[4] << 8 | p[5]
    let end = len
    if (pl !== 0 && pl + 40 < len) end = pl + 40
    let nh = p[6], off = 40, ok = true, frag = false
    while (nh === 0 || nh === 43 || nh === 60 || nh === 51 || nh === 44) {
      if (off + 8 > end) { ok = false; break }
      if (nh === 44) {
        if (frag) { ok = false; break }
        frag = true
        const fo = p[off + 2] << 8 | p[off + 3]
        nh = p[off]
        off += 8
        if (fo & 0xfff8) { ok = false; break }
      } else {
        const hlen = nh === 51 ? (p[off + 1] + 2) << 2 : (p[off + 1] + 1) << 3
        if (off + hlen > end) { ok = false; break }
        nh = p[off]
        off += hlen
      }
    }
    return { family: 6, l4: off, proto: nh, end, ok }
  }
  return null
}

const memo4 = new Map<number, string>()
function ip4text(p: Buffer, o: number): string {
  const key = (p[o] << 24 | p[o + 1] << 16 | p[o + 2] << 8 | p[o + 3]) >>> 0
  let s = memo4.get(key)
  if (s === undefined) {
    s = `${p[o]}.${p[o + 1]}.${p[o + 2]}.${p[o + 3]}`
    if (memo4.size >= 4096) memo4.clear()
    memo4.set(key, s)
  }
  return s
}

const memo6 = new Map<string, string>()
function ip6text(p: Buffer, o: number): string {
  const key = p.toString('latin1', o, o + 16)
  let s = memo6.get(key)
  if (s !== undefined) return s
  const w: number[] = []
  for (let i = 0; i < 8; i++) w.push(p[o + 2 * i] << 8 | p[o + 2 * i + 1])
  if (w[0] === 0 && w[1] === 0 && w[2] === 0 && w[3] === 0 && w[4] === 0 && w[5] === 0xffff) {
    s = `::ffff:${w[6] >> 8}.${w[6] & 255}.${w[7] >> 8}.${w[7] & 255}`
  } else {
    let bs = 0, bl = 0, cs = 0, cl = 0
    for (let i = 0; i < 8; i++) {
      if (w[i] === 0) { if (cl === 0) cs = i; cl++; if (cl > bl) { bs = cs; bl = cl } } else cl = 0
    }
    s = bl < 2 ? w.map((x) => x.toString(16)).join(':')
      : w.slice(0, bs).map((x) => x.toString(16)).join(':') + '::' + w.slice(bs + bl).map((x) => x.toString(16)).join(':')
  }
  if (memo6.size >= 4096) memo6.clear()
  memo6.set(key, s)
  return s
}

const src = (p: Buffer, ip: Ip) => ip.family === 4 ? ip4text(p, 12) : ip6text(p, 8)
const dst = (p: Buffer, ip: Ip) => ip.family === 4 ? ip4text(p, 16) : ip6text(p, 24)

/** TCP header offset and length, or -1 when the packet has no decodable TCP header. */
function tcpHeader(p: Buffer, ip: Ip): [number, number] | null {
  if (ip.proto !== 6 || !ip.ok) return null
  const l4 = ip.l4
  if (l4 + 20 > ip.end) return null
  const hl = (p[l4 + 12] >> 4) << 2
  if (hl < 20 || l4 + hl > ip.end) return null
  return [l4, hl]
}

// ---- filters

const acceptAll: JsFilter = () => ACCEPT

const blockedAddr = new Set(['192.0.2.7', '203.0.113.13', '10.0.3.57', '2001:db8:2::5', '2001:db8:1::2a'])
const blockedPort = new Set([22, 23, 5201])
const ipTcp: JsFilter = (p) => {
  const ip = decodeIp(p)
  if (ip === null) return ACCEPT
  const ttl = ip.family === 4 ? p[8] : p[7]
  if (ttl <= 1) return DROP
  if (blockedAddr.has(src(p, ip)) || blockedAddr.has(dst(p, ip))) return DROP
  const t = tcpHeader(p, ip)
  if (t !== null) {
    const l4 = t[0]
    if (blockedPort.has(p[l4 + 2] << 8 | p[l4 + 3])) return DROP
    const flags = p[l4 + 13]
    if ((flags & 2) && (flags & 1)) return DROP
  }
  return ACCEPT
}

const METHODS = new Set(['GET', 'HEAD', 'POST', 'PUT', 'DELETE', 'CONNECT', 'OPTIONS', 'TRACE', 'PATCH',
  'PROPFIND', 'PROPPATCH', 'MKCOL', 'COPY', 'MOVE', 'LOCK', 'UNLOCK', 'SEARCH', 'REPORT', 'PURGE'])
const FIRST = new Set([...'GHPDCOTMLUSR'].map((c) => c.charCodeAt(0)))
const REQUEST = /^([A-Z]+) ([^ \r\n]+) (HTTP\/1\.\d)\r?\n/
const RESPONSE = /^(HTTP\/1\.\d) (\d\d\d) ?([^\r\n]*)\r?\n/

/** The headers of an HTTP/1.x message starting this TCP segment (names lower-cased), or null. */
function httpHeaders(p: Buffer): Record<string, string> | null {
  const ip = decodeIp(p)
  if (ip === null) return null
  const t = tcpHeader(p, ip)
  if (t === null) return null
  const s = t[0] + t[1], e = ip.end
  if (e - s < 14) return null
  const c1 = p[s], c2 = p[s + 1]
  if (!FIRST.has(c1) || c2 < 65 || c2 > 90) return null
  const text = p.toString('latin1', s, e)
  let m = REQUEST.exec(text)
  if (m) { if (!METHODS.has(m[1])) return null } else if (!(m = RESPONSE.exec(text))) return null
  // header lines up to the empty line; a line cut by the segment's end is left out
  const h: Record<string, string> = {}
  let pos = m[0].length, last: string | null = null
  for (;;) {
    const nl = text.indexOf('\n', pos)
    if (nl < 0) break
    let line = text.slice(pos, nl)
    pos = nl + 1
    if (line.endsWith('\r')) line = line.slice(0, -1)
    if (line === '') break
    if ((line[0] === ' ' || line[0] === '\t') && last !== null) { h[last] += ' ' + line.trim(); continue }
    const colon = line.indexOf(':')
    if (colon > 0 && !/[\s]/.test(line.slice(0, colon))) {
      const name = line.slice(0, colon).toLowerCase(), value = line.slice(colon + 1).trim()
      h[name] = h[name] !== undefined ? h[name] + ', ' + value : value
      last = name
    } else last = null
  }
  return h
}

const blockedHost = new Set(['blocked.example', 'ads.example.net'])
const httpHost: JsFilter = (p) => {
  const h = httpHeaders(p)
  if (h !== null) {
    const host = h.host
    if (host !== undefined && blockedHost.has(host)) return DROP
  }
  return ACCEPT
}

/** The first question's name of a DNS message over UDP or TCP port 53, '' for the root; null
 *  when there is no DNS message, undefined when the name does not decode. */
function dnsQuery(p: Buffer): { qr: boolean; qname: string | undefined } | null {
  const ip = decodeIp(p)
  if (ip === null || !ip.ok) return null
  let s: number, e = ip.end
  const l4 = ip.l4
  if (ip.proto === 17) {
    if (l4 + 8 > e) return null
    const ul = p[l4 + 4] << 8 | p[l4 + 5]
    if (ul >= 8 && l4 + ul < e) e = l4 + ul
    s = l4 + 8
  } else if (ip.proto === 6) {
    const t = tcpHeader(p, ip)
    if (t === null) return null
    s = t[0] + t[1]
  } else return null
  const sp = p[l4] << 8 | p[l4 + 1], dp = p[l4 + 2] << 8 | p[l4 + 3]
  if (sp !== 53 && dp !== 53) return null
  if (ip.proto === 6) {
    if (s + 2 > e) return null
    const n = p[s] << 8 | p[s + 1]
    s += 2
    if (s + n < e) e = s + n
  }
  if (s + 12 > e) return null
  const qr = (p[s + 2] & 0x80) !== 0
  const qd = p[s + 4] << 8 | p[s + 5]
  if (qd === 0) return { qr, qname: undefined }
  // the name at s + 12: labels, compression pointers (at most 64), at most 255 bytes
  const labels: string[] = []
  let q = s + 12, total = 0, jumps = 0, after = -1
  for (;;) {
    if (q >= e) return { qr, qname: undefined }
    const l = p[q]
    if (l === 0) { q++; break }
    if (l >= 0xc0) {
      if (q + 2 > e || ++jumps > 64) return { qr, qname: undefined }
      if (after < 0) after = q + 2
      q = s + ((l & 0x3f) << 8 | p[q + 1])
    } else if (l >= 0x40) return { qr, qname: undefined }
    else {
      if (q + 1 + l > e) return { qr, qname: undefined }
      total += l + 1
      if (total > 255) return { qr, qname: undefined }
      labels.push(p.toString('latin1', q + 1, q + 1 + l))
      q += 1 + l
    }
  }
  if ((after < 0 ? q : after) + 4 > e) return { qr, qname: undefined } // qtype and qclass must follow
  return { qr, qname: labels.join('.') }
}

const blockedName = new Set(['ads.example.net', 'tracker.example'])
const dnsBlock: JsFilter = (p) => {
  const d = dnsQuery(p)
  if (d === null || d.qr || d.qname === undefined) return ACCEPT
  let name = d.qname.toLowerCase()
  for (;;) {
    if (blockedName.has(name)) return DROP
    const dot = name.indexOf('.')
    if (dot < 0) return ACCEPT
    name = name.slice(dot + 1)
  }
}

export const JS_FILTERS: Record<string, JsFilter> = {
  'accept-all': acceptAll,
  'ip-tcp': ipTcp,
  'http-host': httpHost,
  'dns-block': dnsBlock,
}
