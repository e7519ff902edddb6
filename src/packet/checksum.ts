// Internet checksums (RFC 1071) and the length/checksum fix-up psd applies to edited packets.
//
// Everything here works on a raw IP packet (layer 3, no link header) held in a Uint8Array.
// No function allocates per call, throws, or reads or writes outside the array, whatever the
// bytes say: a malformed or truncated packet just gets fewer fields fixed. Any Uint8Array view
// works, including views into wasm memory.
//
// Rules (API.md section 3):
//  - IPv4: total length and header checksum. IPv6: payload length.
//  - IPv6 extension headers hop-by-hop (0), routing (43), fragment (44), destination options (60)
//    and AH (51) are walked to find the transport. ESP (50) and anything unknown stop the walk.
//  - Transport: UDP length always (unless a fragment); TCP, UDP, ICMP (v4) and ICMPv6 checksums
//    only when the whole packet is held and it is not a fragment (IPv4 MF or offset, IPv6
//    fragment header with M or offset; an "atomic" fragment header with neither is whole).
//  - An IPv4 UDP checksum of 0 means "none" and stays 0; a computed 0 is sent as 0xffff (both
//    families).
//  - A routing header with segments left > 0 puts the final destination into the pseudo-header
//    (types 0 and 2: the last address; type 4, SRH: segment list[0]), as RFC 8200 8.1 says.

const P_ICMP = 1, P_TCP = 6, P_UDP = 17, P_ICMP6 = 58

// Long ranges are summed as 32-bit big-endian words through a DataView (about twice as fast as
// byte loads); the view is cached per ArrayBuffer, so a call allocates only when the buffer
// changes (a new buffer, or wasm memory that grew). Summing 32-bit words and folding gives the
// same ones' complement sum, since 2^16 = 1 (mod 0xffff).
let dvBuf: ArrayBufferLike | null = null
let dv: DataView | null = null

/**
 * Adds the 16-bit big-endian words of bytes[start, end) to `initial` without folding. An odd
 * final byte counts as its word's high byte (padded with zero). The range is clamped to the
 * array. The result is exact for any input below 2^37 bytes; fold it with fold().
 */
export function sum16(bytes: Uint8Array, start: number, end: number, initial = 0): number {
  if (start < 0) start = 0
  if (end > bytes.length) end = bytes.length
  let s = initial, i = start
  if (end - start >= 128) {
    const buf = bytes.buffer
    if (buf !== dvBuf) { dvBuf = buf; dv = new DataView(buf) }
    const d = dv!, o = bytes.byteOffset
    const e4 = end + o - 3
    let j = start + o
    for (; j < e4; j += 4) s += d.getUint32(j)
    i = j - o
  }
  const end8 = end - 7
  for (; i < end8; i += 8) {
    s += ((bytes[i] << 8) | bytes[i + 1]) + ((bytes[i + 2] << 8) | bytes[i + 3])
      + ((bytes[i + 4] << 8) | bytes[i + 5]) + ((bytes[i + 6] << 8) | bytes[i + 7])
  }
  for (; i + 1 < end; i += 2) s += (bytes[i] << 8) | bytes[i + 1]
  if (i < end) s += bytes[i] << 8
  return s
}

/** Folds a sum of 16-bit words to 16 bits with end-around carry (ones' complement sum). */
export function fold(sum: number): number {
  // Reduce a double above 2^32 first (each step divides it by about 2^16), then the usual
  // end-around carries on 32 bits.
  while (sum > 0xffffffff) sum = (sum % 0x10000) + Math.floor(sum / 0x10000)
  sum = (sum & 0xffff) + (sum >>> 16)
  sum = (sum & 0xffff) + (sum >>> 16)
  return (sum & 0xffff) + (sum >>> 16)
}

/** The Internet checksum of bytes[start, end): the ones' complement of the ones' complement sum. */
export function checksum16(bytes: Uint8Array, start = 0, end = bytes.length): number {
  return ~fold(sum16(bytes, start, end)) & 0xffff
}

// ---- packet walk (shared by fixup and verify; results in module state, no allocation) ----

let wFamily = 0       // 4 or 6, 0 when not an IP packet we can handle
let wIpHdr = 0        // IPv4: header length; IPv6: 40
let wL4Off = -1       // offset of the transport header, -1 when not found
let wProto = -1       // transport protocol number, -1 when unknown
let wFragment = false // a fragment (transport checksums cannot be computed)
let wFinalDst = 24    // IPv6: offset of the 16-byte final destination used in the pseudo-header

function walk(b: Uint8Array): void {
  wFamily = 0; wIpHdr = 0; wL4Off = -1; wProto = -1; wFragment = false; wFinalDst = 24
  const len = b.length
  if (len < 1) return
  const v = b[0] >> 4
  if (v === 4) {
    if (len < 20) return
    const ihl = (b[0] & 15) << 2
    if (ihl < 20 || ihl > len) return
    wFamily = 4; wIpHdr = ihl
    wFragment = (b[6] & 0x20) !== 0 || (((b[6] & 0x1f) << 8) | b[7]) !== 0
    wProto = b[9]; wL4Off = ihl
    return
  }
  if (v !== 6 || len < 40) return
  wFamily = 6; wIpHdr = 40
  let nh = b[6], off = 40
  for (;;) {
    if (nh === 0 || nh === 43 || nh === 60) {
      if (off + 2 > len) return
      const hlen = (b[off + 1] + 1) << 3
      if (nh === 43 && off + 8 <= len && off + hlen <= len && b[off + 3] > 0) {
        const type = b[off + 2], n = b[off + 1] >> 1 // addresses held (16 bytes = 2 units each)
        if ((type === 0 || type === 2) && n > 0) wFinalDst = off + 8 + 16 * (n - 1)
        else if (type === 4 && n > 0) wFinalDst = off + 8
      }
      nh = b[off]; off += hlen
    } else if (nh === 44) {
      if (off + 8 > len) return
      if ((b[off + 3] & 1) !== 0 || ((b[off + 2] << 5) | (b[off + 3] >> 3)) !== 0) wFragment = true
      nh = b[off]; off += 8
    } else if (nh === 51) {
      if (off + 2 > len) return
      const hlen = (b[off + 1] + 2) << 2
      nh = b[off]; off += hlen
    } else break
    if (off > len) return
  }
  wProto = nh; wL4Off = off
}

function pseudoSum(b: Uint8Array, proto: number, l4len: number, initial: number): number {
  // Callers have checked the addresses are inside the array (IPv4 header >= 20, IPv6 >= 40, and
  // the routing header that gave wFinalDst was checked to be held).
  let s = initial + proto + (l4len & 0xffff) + Math.floor(l4len / 0x10000)
  if (wFamily === 4) return sum16(b, 12, 20, s)
  s = sum16(b, 8, 24, s)
  return sum16(b, wFinalDst, wFinalDst + 16, s)
}

/** Where the transport checksum field is, relative to the transport header; -1 if none. */
function csumField(proto: number, family: number): number {
  if (proto === P_TCP) return 16
  if (proto === P_UDP) return 6
  if (proto === P_ICMP && family === 4) return 2
  if (proto === P_ICMP6 && family === 6) return 2
  return -1
}

function l4Checksum(b: Uint8Array, field: number): number {
  const off = wL4Off, len = b.length, proto = wProto
  let s = sum16(b, off, off + field)
  s = sum16(b, off + field + 2, len, s)
  if (proto !== P_ICMP) s = pseudoSum(b, proto, len - off, s)
  return ~fold(s) & 0xffff
}

/**
 * Makes the lengths and checksums of the IP packet in `bytes` right, in place.
 *
 * `wireLength` is the packet's length on the wire (default: all of it is held). When it is
 * larger than bytes.length (a truncated capture record or a live copy range) the length fields
 * are set from it and transport checksums are left alone, as they cannot be computed. Lengths
 * that do not fit their field (IPv4 > 65535, IPv6 payload > 65535, i.e. GSO/jumbo packets) are
 * left as they are.
 */
export function fixup(bytes: Uint8Array, wireLength: number = bytes.length): void {
  const b = bytes, len = b.length
  if (!(wireLength >= len)) wireLength = len
  walk(b)
  if (wFamily === 0) return
  if (wFamily === 4) {
    if (wireLength <= 0xffff) { b[2] = wireLength >> 8; b[3] = wireLength & 0xff }
    b[10] = 0; b[11] = 0
    const c = checksum16(b, 0, wIpHdr)
    b[10] = c >> 8; b[11] = c & 0xff
  } else {
    const plen = wireLength - 40
    if (plen <= 0xffff) { b[4] = plen >> 8; b[5] = plen & 0xff }
  }
  if (wL4Off < 0 || wFragment) return
  const off = wL4Off, proto = wProto
  if (proto === P_UDP && off + 8 <= len) {
    const ulen = wireLength - off
    if (ulen <= 0xffff) { b[off + 4] = ulen >> 8; b[off + 5] = ulen & 0xff }
  }
  if (wireLength !== len) return
  const field = csumField(proto, wFamily)
  if (field < 0) return
  const need = proto === P_TCP ? 20 : proto === P_UDP ? 8 : 4
  if (off + need > len) return
  if (proto === P_UDP && wFamily === 4 && b[off + 6] === 0 && b[off + 7] === 0) return
  let c = l4Checksum(b, field)
  if (c === 0 && proto === P_UDP) c = 0xffff
  b[off + field] = c >> 8; b[off + field + 1] = c & 0xff
}

/** Which checksums and lengths of a packet are right: true/false, or null when not applicable. */
export interface ChecksumStatus {
  family: 0 | 4 | 6
  /** IPv4 header checksum (null on IPv6). */
  ip: boolean | null
  tcp: boolean | null
  udp: boolean | null
  icmp: boolean | null
  icmp6: boolean | null
  /** IPv4 total length / IPv6 payload length / UDP length match the bytes held. */
  lengths: boolean | null
  /** Every non-null field above is true. */
  ok: boolean
}

/**
 * Checks a packet's checksums (for tests; allocates the result). Transport checksums count as
 * null when they cannot be checked (fragment, truncated, unknown protocol); an IPv4 UDP checksum
 * of 0 ("none") counts as right.
 */
export function verify(bytes: Uint8Array): ChecksumStatus {
  const b = bytes, len = b.length
  const r: ChecksumStatus = { family: 0, ip: null, tcp: null, udp: null, icmp: null, icmp6: null, lengths: null, ok: true }
  walk(b)
  if (wFamily === 0) return r
  r.family = wFamily as 4 | 6
  if (wFamily === 4) {
    r.ip = fold(sum16(b, 0, wIpHdr)) === 0xffff
    r.lengths = ((b[2] << 8) | b[3]) === len
  } else {
    r.lengths = ((b[4] << 8) | b[5]) === len - 40
  }
  if (wL4Off >= 0 && !wFragment) {
    const off = wL4Off, proto = wProto, field = csumField(proto, wFamily)
    const need = proto === P_TCP ? 20 : proto === P_UDP ? 8 : 4
    if (field >= 0 && off + need <= len) {
      const stored = (b[off + field] << 8) | b[off + field + 1]
      let c = l4Checksum(b, field)
      if (c === 0 && proto === P_UDP) c = 0xffff
      const good = stored === c || (proto === P_UDP && wFamily === 4 && stored === 0)
      if (proto === P_TCP) r.tcp = good
      else if (proto === P_UDP) {
        r.udp = good
        if (((b[off + 4] << 8) | b[off + 5]) !== len - off) r.lengths = false
      } else if (proto === P_ICMP) r.icmp = good
      else r.icmp6 = good
    }
  }
  r.ok = r.ip !== false && r.tcp !== false && r.udp !== false && r.icmp !== false && r.icmp6 !== false && r.lengths !== false
  return r
}
