// The packet record layout shared by every packet source (pcap, NFQUEUE) and the VM.
//
// A batch is a byte string of records laid end to end. The VM receives a whole batch as one
// Lua string and walks it, so the layout is read from Lua too (wasm/lua/packet.lua): keep the
// two in step. All integers are little-endian (host order on x86 and wasm).
//
//  off size field
//    0   4  reclen    bytes from this record's start to the next record's start (header + data, padded)
//    4   4  len       bytes of the IP packet held (data length)
//    8   4  origlen   length of the packet on the wire
//   12   4  id        NFQUEUE packet id, or the capture record number (1-based) offline
//   16   4  mark      packet mark (0 offline)
//   20   4  sec       timestamp, seconds since the epoch
//   24   4  nsec      timestamp, nanoseconds
//   28   1  family    4 or 6
//   29   1  hook      0 = unknown (offline), 1 prerouting, 2 input, 3 forward, 4 output, 5 postrouting
//   30   1  flags     bit 0: GSO packet, bit 1: checksum not ready (partial)
//   31   1  (pad)
//   32   4  queue     NFQUEUE number, NONE offline
//   36   4  uid       socket owner uid, NONE when unknown
//   40   4  gid       socket owner gid, NONE when unknown
//   44   4  indev     input interface index, 0 when unknown
//   48   4  outdev    output interface index, 0 when unknown
//   52   .  data      the IP packet (len bytes)
export const HDR = 52
export const NONE = 0xffffffff

export const OFF = {
  reclen: 0, len: 4, origlen: 8, id: 12, mark: 16, sec: 20, nsec: 24,
  family: 28, hook: 29, flags: 30, queue: 32, uid: 36, gid: 40, indev: 44, outdev: 48,
} as const

export const HOOKS = [null, 'prerouting', 'input', 'forward', 'output', 'postrouting'] as const

/** Metadata of one packet as a source delivers it. Absent live-only fields mean "unknown". */
export interface PacketMeta {
  id: number
  origlen: number
  mark?: number
  sec: number
  nsec: number
  family: 4 | 6
  hook?: number
  flags?: number
  queue?: number
  uid?: number
  gid?: number
  indev?: number
  outdev?: number
}

/** Writes one record at pos and returns the position of the next one (4-byte aligned). */
export function writeRecord(dst: Uint8Array, view: DataView, pos: number, data: Uint8Array, m: PacketMeta): number {
  const reclen = (HDR + data.length + 3) & ~3
  view.setUint32(pos + OFF.reclen, reclen, true)
  view.setUint32(pos + OFF.len, data.length, true)
  view.setUint32(pos + OFF.origlen, m.origlen, true)
  view.setUint32(pos + OFF.id, m.id >>> 0, true)
  view.setUint32(pos + OFF.mark, (m.mark ?? 0) >>> 0, true)
  view.setUint32(pos + OFF.sec, m.sec >>> 0, true)
  view.setUint32(pos + OFF.nsec, m.nsec >>> 0, true)
  dst[pos + OFF.family] = m.family
  dst[pos + OFF.hook] = m.hook ?? 0
  dst[pos + OFF.flags] = m.flags ?? 0
  dst[pos + 31] = 0
  view.setUint32(pos + OFF.queue, m.queue ?? NONE, true)
  view.setUint32(pos + OFF.uid, m.uid ?? NONE, true)
  view.setUint32(pos + OFF.gid, m.gid ?? NONE, true)
  view.setUint32(pos + OFF.indev, m.indev ?? 0, true)
  view.setUint32(pos + OFF.outdev, m.outdev ?? 0, true)
  dst.set(data, pos + HDR)
  return pos + reclen
}
