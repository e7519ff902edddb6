// Buffered writer of classic pcap files: nanosecond magic (0xa1b23c4d), version 2.4, the host's
// byte order (little-endian on every platform psd runs on), link type 101 (raw IP) unless told
// otherwise. Timestamps and original lengths are kept as given (API.md section 9).
//
//   const w = new PcapWriter('accepted.pcap')
//   w.write(sec, nsec, ipPacket, origlen)
//   w.close()
import { openSync, writeSync, closeSync } from 'node:fs'

export const LINKTYPE_RAW = 101
export const PCAP_SNAPLEN = 262144

export interface PcapWriterOptions {
  /** Link type written in the file header (default 101, raw IP). */
  linktype?: number
  /** Snap length in the header (default 262144); longer packets are cut to it, origlen kept. */
  snaplen?: number
  /** Bytes buffered before a write to the file (default 1 MiB). */
  bufferSize?: number
}

export class PcapWriter {
  /** The path, or the descriptor, as given. */
  readonly file: string | number
  /** Records written so far. */
  count = 0
  private fd: number
  private ownsFd: boolean
  private buf: Uint8Array
  private dv: DataView
  private pos = 0
  private snaplen: number
  private closed = false

  /** Creates (truncates) `file` and writes the header; a number is an open descriptor to use. */
  constructor(file: string | number, opts: PcapWriterOptions = {}) {
    this.file = file
    this.snaplen = opts.snaplen ?? PCAP_SNAPLEN
    const size = Math.max(opts.bufferSize ?? 1 << 20, 16 + this.snaplen)
    this.buf = new Uint8Array(size)
    this.dv = new DataView(this.buf.buffer)
    if (typeof file === 'number') { this.fd = file; this.ownsFd = false }
    else { this.fd = openSync(file, 'w'); this.ownsFd = true }
    const dv = this.dv
    dv.setUint32(0, 0xa1b23c4d, true)
    dv.setUint16(4, 2, true)
    dv.setUint16(6, 4, true)
    dv.setInt32(8, 0, true)
    dv.setUint32(12, 0, true)
    dv.setUint32(16, this.snaplen, true)
    dv.setUint32(20, opts.linktype ?? LINKTYPE_RAW, true)
    this.pos = 24
  }

  /**
   * Appends one record. `nsec` may be >= 1e9 (carried into sec). `origlen` defaults to
   * data.length and is never written smaller than the bytes held.
   */
  write(sec: number, nsec: number, data: Uint8Array, origlen: number = data.length): void {
    if (this.closed) throw new Error(`PcapWriter: write after close (${this.file})`)
    if (nsec >= 1e9 || nsec < 0) { sec += Math.floor(nsec / 1e9); nsec = ((nsec % 1e9) + 1e9) % 1e9 }
    const caplen = data.length > this.snaplen ? this.snaplen : data.length
    if (!(origlen >= data.length)) origlen = data.length
    if (this.pos + 16 + caplen > this.buf.length) this.flush()
    const dv = this.dv, p = this.pos
    dv.setUint32(p, sec >>> 0, true)
    dv.setUint32(p + 4, nsec >>> 0, true)
    dv.setUint32(p + 8, caplen, true)
    dv.setUint32(p + 12, origlen >>> 0, true)
    this.buf.set(caplen === data.length ? data : data.subarray(0, caplen), p + 16)
    this.pos = p + 16 + caplen
    this.count++
  }

  /** Writes the buffered records to the file. */
  flush(): void {
    let off = 0
    while (off < this.pos) off += writeSync(this.fd, this.buf, off, this.pos - off)
    this.pos = 0
  }

  /** Flushes and closes the file (a descriptor given to the constructor is left open). */
  close(): void {
    if (this.closed) return
    this.flush()
    this.closed = true
    if (this.ownsFd) closeSync(this.fd)
  }
}
