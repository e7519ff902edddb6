// tshark as the independent dissector for the protocol-object tests: every packet of a capture
// dissected by tshark, and the same fields psd's protocol objects give, side by side.
//
//   const rows = tsharkRows(pcap)                 // one Record<field, string[]> per frame
//   const expected = rows.map(expectFromTshark)   // psd's field names and value types
//   compare(expected[i], fromPsd[i])              // list of mismatches
//
// tshark dissects each packet on its own here (no TCP/IP reassembly, no HTTP/TLS/DNS
// desegmentation), which is how psd sees packets.
import { spawnSync } from 'node:child_process'
import { runPsd, writeRawPcap } from './psd.js'
import { readFileSync } from 'node:fs'
import { join } from 'node:path'

/** Preferences that make tshark dissect every packet alone, as psd does. */
export const PER_PACKET = [
  'ip.defragment:FALSE', 'ipv6.defragment:FALSE', 'tcp.desegment_tcp_streams:FALSE', 'tcp.analyze_sequence_numbers:FALSE',
  'http.desegment_headers:FALSE', 'http.desegment_body:FALSE', 'tls.desegment_ssl_records:FALSE',
  'tls.desegment_ssl_application_data:FALSE', 'dns.desegment_dns_messages:FALSE',
]
/** Preferences that make tshark check the checksums it otherwise leaves unverified. */
export const CHECK_CHECKSUMS = ['ip.check_checksum:TRUE', 'tcp.check_checksum:TRUE', 'udp.check_checksum:TRUE']

export const FIELDS = [
  'frame.number', 'ip.version', 'ip.src', 'ip.dst', 'ip.ttl', 'ip.len', 'ip.hdr_len', 'ip.id', 'ip.flags.df', 'ip.flags.mf',
  'ip.frag_offset', 'ip.dsfield', 'ip.proto', 'ip.checksum.status',
  'ipv6.version', 'ipv6.src', 'ipv6.dst', 'ipv6.hlim', 'ipv6.plen', 'ipv6.tclass', 'ipv6.flow', 'ipv6.nxt',
  'ipv6.hopopts.nxt', 'ipv6.dstopts.nxt', 'ipv6.routing.nxt', 'ipv6.fraghdr.nxt', 'ipv6.fraghdr.ident', 'ipv6.fraghdr.more',
  'ipv6.fraghdr.offset',
  'tcp.srcport', 'tcp.dstport', 'tcp.seq_raw', 'tcp.ack_raw', 'tcp.hdr_len', 'tcp.flags', 'tcp.flags.syn', 'tcp.flags.ack',
  'tcp.flags.fin', 'tcp.flags.reset', 'tcp.flags.push', 'tcp.flags.urg', 'tcp.flags.ece', 'tcp.flags.cwr', 'tcp.flags.ae',
  'tcp.window_size_value', 'tcp.urgent_pointer', 'tcp.option_kind', 'tcp.options.mss_val', 'tcp.options.wscale.shift',
  'tcp.options.timestamp.tsval', 'tcp.options.timestamp.tsecr', 'tcp.len', 'tcp.checksum.status',
  'udp.srcport', 'udp.dstport', 'udp.length', 'udp.checksum.status',
  'icmp.type', 'icmp.code', 'icmp.ident', 'icmp.seq', 'icmp.mtu', 'icmp.checksum.status',
  'icmpv6.type', 'icmpv6.code', 'icmpv6.echo.identifier', 'icmpv6.echo.sequence_number', 'icmpv6.mtu', 'icmpv6.checksum.status',
  'dns.id', 'dns.flags.response', 'dns.flags.opcode', 'dns.flags.rcode', 'dns.flags.recdesired', 'dns.qry.name', 'dns.qry.type',
  'dns.qry.class', 'dns.count.queries', 'dns.count.answers', 'dns.count.auth_rr', 'dns.count.add_rr', 'dns.resp.name',
  'dns.resp.type', 'dns.resp.ttl', 'dns.a', 'dns.aaaa', 'dns.cname', 'dns.mx.mail_exchange', 'dns.txt',
  'http.request.method', 'http.request.uri', 'http.request.version', 'http.response.version', 'http.response.code',
  'http.response.phrase', 'http.host', 'http.user_agent',
  'tls.record.version', 'tls.handshake.type', 'tls.handshake.version', 'tls.handshake.extensions_server_name',
  'tls.handshake.extensions_alpn_str', 'tls.handshake.extensions.supported_version', 'tls.handshake.ciphersuite',
]

export type Row = Record<string, string[]>

let available: boolean | undefined
export function hasTshark(): boolean {
  if (available === undefined) available = spawnSync('tshark', ['--version'], { encoding: 'utf8' }).status === 0
  return available
}

const AGG = '\x1f'

/** Every frame of `file` as field -> values (all occurrences, in order; [] when absent). */
export function tsharkRows(file: string, o: { fields?: string[]; prefs?: string[]; decodeAs?: string[] } = {}): Row[] {
  const fields = o.fields ?? FIELDS
  const args = ['-r', file, '-n', '-T', 'fields', '-E', 'separator=/t', '-E', `aggregator=${AGG}`, '-E', 'occurrence=a']
  for (const p of o.prefs ?? PER_PACKET) args.push('-o', p)
  for (const d of o.decodeAs ?? []) args.push('-d', d)
  for (const f of fields) args.push('-e', f)
  const r = spawnSync('tshark', args, { encoding: 'utf8', maxBuffer: 512 << 20 })
  if (r.status !== 0) throw new Error(`tshark failed (${r.status}): ${r.stderr}`)
  return r.stdout.split('\n').filter((l) => l.length).map((line) => {
    const cols = line.split('\t')
    const row: Row = {}
    fields.forEach((f, i) => { row[f] = cols[i] ? cols[i].split(AGG) : [] })
    return row
  })
}

// ---- tshark's values in psd's terms ----

const num = (s: string | undefined): number | undefined => (s === undefined || s === '' ? undefined : Number(s))
const bool = (s: string | undefined): boolean | undefined =>
  s === undefined || s === '' ? undefined : s === '1' || s.toLowerCase() === 'true'
const first = (r: Row, f: string): string | undefined => r[f][0]
const EXT6 = new Set([0, 43, 44, 60, 51])

/** A flat record of the fields psd must give for this frame, in psd's names (absent: not there). */
export type Fields = Record<string, string | number | boolean | null | (string | number)[]>

/**
 * What psd's objects must say about a frame, from tshark's dissection. Keys are psd's
 * expressions (`ip.src`, `tcp.options` ...); `null` means "this object must be nil".
 */
export function expectFromTshark(r: Row): Fields {
  const e: Fields = {}
  // (the IPv6 dissector also fills ip.version; the first header decides)
  const v6 = r['ip.version'][0] === '6' || (r['ipv6.version'].length > 0 && r['ip.version'].length === 0)
  const v4 = r['ip.version'][0] === '4'
  if (!v4 && !v6) { e.ip = null; return e }
  if (v4) {
    e['ip.version'] = 4
    e['ip.src'] = first(r, 'ip.src')!
    e['ip.dst'] = first(r, 'ip.dst')!
    e['ip.ttl'] = num(first(r, 'ip.ttl'))!
    e['ip.len'] = num(first(r, 'ip.len'))!
    e['ip.hdr_len'] = num(first(r, 'ip.hdr_len'))!
    e['ip.id'] = num(first(r, 'ip.id'))!
    e['ip.df'] = bool(first(r, 'ip.flags.df'))!
    e['ip.mf'] = bool(first(r, 'ip.flags.mf'))!
    e['ip.frag_offset'] = num(first(r, 'ip.frag_offset'))!
    e['ip.dsfield'] = num(first(r, 'ip.dsfield'))!
    e['ip.proto'] = num(first(r, 'ip.proto'))!
  } else {
    e['ip.version'] = 6
    e['ip.src'] = first(r, 'ipv6.src')!
    e['ip.dst'] = first(r, 'ipv6.dst')!
    e['ip.ttl'] = num(first(r, 'ipv6.hlim'))!
    e['ip.len'] = 40 + num(first(r, 'ipv6.plen'))!
    e['ip.dsfield'] = num(first(r, 'ipv6.tclass'))!
    e['ip.flow'] = num(first(r, 'ipv6.flow'))!
    // the protocol after the extension headers: the one next-header value that is none
    const nexts = ['ipv6.nxt', 'ipv6.hopopts.nxt', 'ipv6.dstopts.nxt', 'ipv6.routing.nxt', 'ipv6.fraghdr.nxt']
      .flatMap((f) => r[f].slice(0, f === 'ipv6.nxt' ? 1 : 4)).map(Number)
    const last = nexts.filter((x) => !EXT6.has(x))
    e['ip.proto'] = last.length ? last[0] : nexts[nexts.length - 1]
    if (r['ipv6.fraghdr.ident'].length) {
      e['ip.id'] = num(first(r, 'ipv6.fraghdr.ident'))!
      e['ip.mf'] = bool(first(r, 'ipv6.fraghdr.more'))!
      e['ip.frag_offset'] = num(first(r, 'ipv6.fraghdr.offset'))!
    } else {
      e['ip.id'] = null; e['ip.mf'] = null; e['ip.frag_offset'] = null
    }
  }
  const fragment = (e['ip.frag_offset'] as number | null ?? 0) > 0
  const icmp = r['icmp.type'].length > 0 && v4
  const icmp6 = r['icmpv6.type'].length > 0 && v6
  // transport (an ICMP error quotes headers: those are not the packet's transport)
  if (r['tcp.srcport'].length && !icmp && !icmp6 && !fragment) {
    e['tcp.srcport'] = num(first(r, 'tcp.srcport'))!
    e['tcp.dstport'] = num(first(r, 'tcp.dstport'))!
    e['tcp.seq'] = num(first(r, 'tcp.seq_raw'))!
    e['tcp.ack'] = num(first(r, 'tcp.ack_raw'))!
    e['tcp.hdr_len'] = num(first(r, 'tcp.hdr_len'))!
    e['tcp.flags'] = num(first(r, 'tcp.flags'))!
    for (const [psd, ts] of [['syn', 'syn'], ['ack_flag', 'ack'], ['fin', 'fin'], ['rst', 'reset'], ['psh', 'push'],
      ['urg', 'urg'], ['ece', 'ece'], ['cwr', 'cwr'], ['ae', 'ae']]) e[`tcp.${psd}`] = bool(first(r, `tcp.flags.${ts}`))!
    e['tcp.window'] = num(first(r, 'tcp.window_size_value'))!
    e['tcp.urgent'] = num(first(r, 'tcp.urgent_pointer'))!
    e['tcp.options'] = r['tcp.option_kind'].map(Number)
    e['tcp.mss'] = num(first(r, 'tcp.options.mss_val')) ?? null
    e['tcp.wscale'] = num(first(r, 'tcp.options.wscale.shift')) ?? null
    e['tcp.sack_perm'] = r['tcp.option_kind'].includes('4')
    e['tcp.tsval'] = num(first(r, 'tcp.options.timestamp.tsval')) ?? null
    e['tcp.tsecr'] = num(first(r, 'tcp.options.timestamp.tsecr')) ?? null
    // (tshark gives no tcp.len on a first fragment; psd gives the bytes the fragment holds)
    if (r['tcp.len'].length) e['tcp.len'] = num(first(r, 'tcp.len'))!
  } else {
    e.tcp = null
  }
  if (r['udp.srcport'].length && !icmp && !icmp6 && !fragment) {
    e['udp.srcport'] = num(first(r, 'udp.srcport'))!
    e['udp.dstport'] = num(first(r, 'udp.dstport'))!
    e['udp.length'] = num(first(r, 'udp.length'))!
  } else {
    e.udp = null
  }
  if (icmp && !fragment) {
    const type = num(first(r, 'icmp.type'))!
    e['icmp.type'] = type
    e['icmp.code'] = num(first(r, 'icmp.code'))!
    const echo = type === 0 || type === 8
    e['icmp.id'] = echo ? num(first(r, 'icmp.ident'))! : null
    e['icmp.seq'] = echo ? num(first(r, 'icmp.seq'))! : null
    e['icmp.mtu'] = num(first(r, 'icmp.mtu')) ?? null
  } else {
    e.icmp = null
  }
  if (icmp6 && !fragment) {
    const type = num(first(r, 'icmpv6.type'))!
    e['icmp6.type'] = type
    e['icmp6.code'] = num(first(r, 'icmpv6.code'))!
    const echo = type === 128 || type === 129
    e['icmp6.id'] = echo ? num(first(r, 'icmpv6.echo.identifier'))! : null
    e['icmp6.seq'] = echo ? num(first(r, 'icmpv6.echo.sequence_number'))! : null
    e['icmp6.mtu'] = num(first(r, 'icmpv6.mtu')) ?? null
  } else {
    e.icmp6 = null
  }
  // DNS (tshark's dns.resp.* lists cover answers, authorities and additionals, in order)
  if (r['dns.id'].length && !icmp && !icmp6 && !fragment) {
    e['dns.id'] = num(first(r, 'dns.id'))!
    e['dns.qr'] = bool(first(r, 'dns.flags.response'))!
    e['dns.opcode'] = num(first(r, 'dns.flags.opcode'))!
    e['dns.rcode'] = num(first(r, 'dns.flags.rcode')) ?? 0
    e['dns.rd'] = bool(first(r, 'dns.flags.recdesired'))!
    e['dns.qname'] = (first(r, 'dns.qry.name') === '<Root>' ? '' : first(r, 'dns.qry.name')) ?? null
    e['dns.qtype'] = num(first(r, 'dns.qry.type')) ?? null
    e['dns.qclass'] = num(first(r, 'dns.qry.class')) ?? null
    e['dns.qdcount'] = num(first(r, 'dns.count.queries'))!
    e['dns.ancount'] = num(first(r, 'dns.count.answers'))!
    e['dns.nscount'] = num(first(r, 'dns.count.auth_rr'))!
    e['dns.arcount'] = num(first(r, 'dns.count.add_rr'))!
    e['dns.rr.names'] = r['dns.resp.name'].map((n) => (n === '<Root>' ? '' : n))
    e['dns.rr.types'] = r['dns.resp.type'].map(Number)
    e['dns.rr.ttls'] = r['dns.resp.ttl'].map(Number)
    e['dns.a'] = r['dns.a']
    e['dns.aaaa'] = r['dns.aaaa']
    e['dns.cname'] = r['dns.cname']
    e['dns.mx'] = r['dns.mx.mail_exchange']
    e['dns.txt'] = r['dns.txt']
  } else {
    e.dns = null
  }
  // HTTP: a segment that starts a request or a response
  if (r['http.request.method'].length || r['http.response.code'].length) {
    const req = r['http.request.method'].length > 0
    e['http.request'] = req
    e['http.method'] = first(r, 'http.request.method') ?? null
    e['http.uri'] = first(r, 'http.request.uri') ?? null
    e['http.version'] = (req ? first(r, 'http.request.version') : first(r, 'http.response.version'))!
    e['http.status'] = num(first(r, 'http.response.code')) ?? null
    e['http.reason'] = req ? null : first(r, 'http.response.phrase') ?? ''
    // a repeated header: psd joins the values with ", " (RFC 9110 5.3), tshark lists each
    e['http.host'] = r['http.host'].length ? r['http.host'].join(', ') : null
    e['http.user_agent'] = r['http.user_agent'].length ? r['http.user_agent'].join(', ') : null
  } else {
    e.http = null
  }
  // TLS: a segment that starts with a ClientHello record
  if (first(r, 'tls.handshake.type') === '1') {
    e['tls.record_version'] = num(first(r, 'tls.record.version'))!
    e['tls.version'] = num(first(r, 'tls.handshake.version'))!
    e['tls.sni'] = first(r, 'tls.handshake.extensions_server_name') ?? null
    e['tls.alpn'] = r['tls.handshake.extensions_alpn_str']
    e['tls.versions'] = r['tls.handshake.extensions.supported_version'].map(Number)
    e['tls.ciphers'] = r['tls.handshake.ciphersuite'].map(Number)
  } else {
    e.tls = null
  }
  return e
}

/**
 * Lua (a function `fields(pkt)` returning a JSON line) that gives, for one packet, the same
 * keys as expectFromTshark from psd's protocol objects. Every key of every present object is
 * filled, so comparing key by key also catches fields psd has and tshark does not.
 */
export const PSD_FIELDS_LUA = String.raw`
local function jstr(s)
  return '"' .. s:gsub('[%c"\\\128-\255]', function(c) return string.format('\\u%04x', c:byte()) end) .. '"'
end
local function json(v)
  local t = type(v)
  if v == nil then return 'null' end
  if t == 'boolean' or t == 'number' then return tostring(v) end
  if t == 'string' then return jstr(v) end
  local parts = {}
  for i = 1, #v do parts[i] = json(v[i]) end
  return '[' .. table.concat(parts, ',') .. ']'
end
local function put(out, obj, prefix, names)
  if not obj then out[#out + 1] = jstr(prefix) .. ':null' return end
  for _, n in ipairs(names) do
    local key = prefix .. '.' .. n
    out[#out + 1] = jstr(key) .. ':' .. json(obj[n])
  end
end
local IP4 = { 'version', 'src', 'dst', 'ttl', 'len', 'hdr_len', 'id', 'df', 'mf', 'frag_offset', 'dsfield', 'proto' }
local IP6 = { 'version', 'src', 'dst', 'ttl', 'len', 'dsfield', 'flow', 'proto', 'id', 'mf', 'frag_offset' }
local TCP = { 'srcport', 'dstport', 'seq', 'ack', 'hdr_len', 'flags', 'syn', 'ack_flag', 'fin', 'rst', 'psh', 'urg', 'ece', 'cwr',
              'ae', 'window', 'urgent', 'mss', 'wscale', 'sack_perm', 'tsval', 'tsecr', 'len' }
local UDP = { 'srcport', 'dstport', 'length' }
local ICMP = { 'type', 'code', 'id', 'seq', 'mtu' }
local DNS = { 'id', 'qr', 'opcode', 'rcode', 'rd', 'qname', 'qtype', 'qclass', 'qdcount', 'ancount', 'nscount', 'arcount' }
local HTTP = { 'request', 'method', 'uri', 'version', 'status', 'reason', 'host', 'user_agent' }
local TLS = { 'record_version', 'version', 'sni', 'alpn', 'versions', 'ciphers' }
function fields(pkt)
  local out = { '"n":' .. pkt.id }
  local ip = pkt.ip
  if not ip then out[#out + 1] = '"ip":null' return '{' .. table.concat(out, ',') .. '}' end
  put(out, ip, 'ip', ip.version == 4 and IP4 or IP6)
  local tcp = pkt.tcp
  put(out, tcp, 'tcp', TCP)
  if tcp then
    local kinds = {}
    for i, o in ipairs(tcp.options) do kinds[i] = o.kind end
    out[#out + 1] = '"tcp.options":' .. json(kinds)
  end
  put(out, pkt.udp, 'udp', UDP)
  put(out, pkt.icmp, 'icmp', ICMP)
  put(out, pkt.icmp6, 'icmp6', ICMP)
  local d = pkt.dns
  put(out, d, 'dns', DNS)
  if d then
    local names, types, ttls, lists = {}, {}, {}, { a = {}, aaaa = {}, cname = {}, mx = {}, txt = {} }
    for _, sec in ipairs { d.answers, d.authorities, d.additionals } do
      for _, rr in ipairs(sec) do
        names[#names + 1] = rr.name
        types[#types + 1] = rr.type
        if rr.type ~= 41 then ttls[#ttls + 1] = rr.ttl end
        local l = ({ [1] = 'a', [28] = 'aaaa', [5] = 'cname', [15] = 'mx' })[rr.type]
        if l then table.insert(lists[l], rr.data) end
        if rr.type == 16 then for _, s in ipairs(rr.strings) do table.insert(lists.txt, s) end end
      end
    end
    out[#out + 1] = '"dns.rr.names":' .. json(names)
    out[#out + 1] = '"dns.rr.types":' .. json(types)
    out[#out + 1] = '"dns.rr.ttls":' .. json(ttls)
    for k, l in pairs(lists) do out[#out + 1] = '"dns.' .. k .. '":' .. json(l) end
  end
  put(out, pkt.http, 'http', HTTP)
  put(out, pkt.tls, 'tls', TLS)
  return '{' .. table.concat(out, ',') .. '}'
end
`

/** Key-by-key differences between tshark's view (expected) and psd's (actual). */
export function compare(expected: Fields, actual: Fields): string[] {
  const bad: string[] = []
  const same = (a: unknown, b: unknown): boolean => JSON.stringify(a ?? null) === JSON.stringify(b ?? null)
  for (const [k, v] of Object.entries(expected)) {
    if (v === null && !k.includes('.')) {
      // the object must be nil: psd says so with the bare key null, or has no key of it
      if (actual[k] !== null && Object.keys(actual).some((a) => a.startsWith(k + '.'))) bad.push(`${k}: tshark has none, psd has one`)
      continue
    }
    if (!same(v, actual[k])) bad.push(`${k}: tshark ${JSON.stringify(v)}, psd ${JSON.stringify(actual[k] ?? null)}`)
  }
  // objects psd has that tshark does not
  for (const k of Object.keys(actual)) {
    const obj = k.split('.')[0]
    if (k.includes('.') && expected[obj] === null) bad.push(`${obj}: psd has one (${k}), tshark has none`)
  }
  return [...new Set(bad)]
}

/** Checksum statuses tshark reports (0 bad, 1 good, 2 unverified) per frame, only those present. */
export function checksumStatuses(file: string): { frame: number; bad: string[]; good: string[] }[] {
  const fields = ['frame.number', 'ip.checksum.status', 'tcp.checksum.status', 'udp.checksum.status', 'icmp.checksum.status', 'icmpv6.checksum.status', '_ws.expert.message']
  const rows = tsharkRows(file, { fields, prefs: [...PER_PACKET, ...CHECK_CHECKSUMS] })
  return rows.map((r) => {
    const bad: string[] = [], good: string[] = []
    // An ICMP error quotes the start of another packet, with that packet's (old) checksums:
    // those are not this packet's. Its own are the first IP header's and the ICMP one.
    const icmp = r['icmp.checksum.status'].length > 0 || r['icmpv6.checksum.status'].length > 0
    for (const f of fields.slice(1, 6)) {
      if (icmp && (f === 'tcp.checksum.status' || f === 'udp.checksum.status')) continue
      const v = r[f][0] // the first occurrence: the packet's own header
      if (v === '0') bad.push(f)
      else if (v === '1') good.push(f)
    }
    if (!icmp) for (const m of r['_ws.expert.message']) if (/checksum/i.test(m) && /bad|incorrect/i.test(m)) bad.push(m)
    return { frame: Number(r['frame.number'][0]), bad, good }
  })
}

// ---- psd against tshark on one capture ----


export interface Comparison {
  frames: number
  /** frames with at least one mismatch, with what differs */
  mismatches: { frame: number; diffs: string[] }[]
  /** how many frames had each object, per tshark */
  seen: Record<string, number>
}

/** Runs psd (the real command, offline) and tshark over `pcap`, and compares every frame. */
export function compareWithTshark(pcap: string, dir?: string): Comparison {
  const script = PSD_FIELDS_LUA + '\nfunction on_packet(pkt) print(fields(pkt)) return ACCEPT end\n'
  // (a generous time budget: these tests check fields, and the test machine may be loaded)
  const run = runPsd({ script, pcap, dir, args: ['--log-format', 'json', '--timeout-ms', '5000'] })
  if (run.status !== 0) throw new Error(`psd failed (${run.status}): ${run.stderr}`)
  const fromPsd = new Map<number, Fields>()
  for (const l of run.logs) {
    if (l.source !== 'script' || typeof l.msg !== 'string') continue
    const f = JSON.parse(l.msg) as Fields
    fromPsd.set(f.n as number, f)
  }
  const rows = tsharkRows(pcap)
  const seen: Record<string, number> = {}
  const mismatches: Comparison['mismatches'] = []
  for (const r of rows) {
    const frame = Number(r['frame.number'][0])
    const e = expectFromTshark(r)
    for (const obj of ['ip', 'tcp', 'udp', 'icmp', 'icmp6', 'dns', 'http', 'tls']) if (e[obj] !== null) seen[obj] = (seen[obj] ?? 0) + 1
    const a = fromPsd.get(frame)
    if (!a) {
      // frames psd skips (not IP) must be frames tshark sees no IP in
      if (e.ip !== null) mismatches.push({ frame, diffs: ['psd did not give this packet to the script'] })
      continue
    }
    const diffs = compare(e, a)
    if (diffs.length) mismatches.push({ frame, diffs })
  }
  return { frames: rows.length, mismatches, seen }
}

/** Scripts that edit packets through protocol-object fields (the checksum tests run each). */
export const EDITS: Record<string, string> = {
  'ttl, addresses, ports, flags, mss': `
function on_packet(pkt)
  local ip = pkt.ip
  if not ip then return end
  ip.ttl = 1
  if ip.version == 4 then ip.dst = '10.0.0.2'; ip.src = '192.0.2.33'; ip.dsfield = 0x28; ip.id = 7 else ip.dst = 'fd00:ffff::2'; ip.src = '2001:db8:1::77'; ip.dsfield = 0x28 end
  local t = pkt.tcp
  if t then
    t.dstport = 80; t.srcport = 12345
    if t.syn then t.syn = false; t.mss = 1200 end
    t.seq = 1; t.window = 1000
  end
  local u = pkt.udp
  if u then u.dstport = 5353; u.srcport = 1 end
  local i = pkt.icmp or pkt.icmp6
  if i and i.id then i.id = 4242 end
  return ACCEPT
end`,
  'mss clamp (adds the option where missing)': `
function on_packet(pkt)
  local t = pkt.tcp
  if t and t.syn and (t.mss == nil or t.mss > 1200) then t.mss = 1200 end
end`,
  'icmp type and code': `
function on_packet(pkt)
  local i = pkt.icmp or pkt.icmp6
  if i then i.type = pkt.icmp and 0 or 129; i.code = 0 end
end`,
}


export interface EditCheck {
  /** the accepted pcap psd wrote */
  out: string
  packets: number
  modified: number
  /** modified packets whose checksums tshark finds good / bad (with what is bad) */
  good: number
  bad: { frame: number; bad: string[] }[]
}

/**
 * Runs an edit script over `pcap` with psd (offline, --write-accepted) and has tshark check the
 * checksums of every packet the script modified (unmodified packets keep the checksums they
 * were captured with, which on a veth with checksum offload are partial sums).
 */
export function editAndCheck(pcap: string, script: string, dir: string, name: string): EditCheck {
  const out = join(dir, `${name.replace(/\W+/g, '-')}.accepted.pcap`)
  const verdicts = join(dir, `${name.replace(/\W+/g, '-')}.verdicts.jsonl`)
  const r = runPsd({ script, pcap, dir, args: ['--write-accepted', out, '--verdicts', verdicts, '--timeout-ms', '5000'] })
  if (r.status !== 0 || r.summary?.faults) throw new Error(`psd ${name}: status ${r.status}, ${r.stderr}`)
  // the accepted pcap holds the accepted packets that were given to the script, in order
  const lines = readFileSync(verdicts, 'utf8').split('\n').filter(Boolean).map((l) => JSON.parse(l))
  const modified = lines.filter((l) => !l.skipped && l.verdict !== 'drop').map((l) => l.modified as boolean)
  const st = checksumStatuses(out)
  if (st.length !== modified.length) throw new Error(`${name}: ${st.length} packets written, ${modified.length} accepted`)
  const res: EditCheck = { out, packets: st.length, modified: 0, good: 0, bad: [] }
  st.forEach((s, i) => {
    if (!modified[i]) return
    res.modified++
    if (s.bad.length) res.bad.push({ frame: s.frame, bad: s.bad })
    else if (s.good.length) res.good++
  })
  return res
}

/**
 * tshark's checksum verdicts on raw IP packets (written to a pcap in `dir`): the packets it
 * finds a bad checksum in, and how many it verified good. Without tshark: null.
 */
export function tsharkChecksums(packets: Uint8Array[], dir: string, name = 'packets'): { bad: { frame: number; bad: string[] }[]; good: number } | null {
  if (!hasTshark()) return null
  const file = writeRawPcap(join(dir, `${name.replace(/\W+/g, '-')}.checksums.pcap`), packets)
  const st = checksumStatuses(file)
  return { bad: st.filter((s) => s.bad.length), good: st.filter((s) => s.good.length && !s.bad.length).length }
}
