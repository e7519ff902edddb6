// Live, net.send goes to the wire through raw sockets (the raw-socket package): one IPv4 and
// one IPv6 socket per tenant, opened on first use, with the IP header included (IPPROTO_RAW),
// so the script's packet leaves exactly as built (psd has fixed its lengths and checksums).
// Every packet carries SO_MARK = SEND_MARK (0x5053), so a rule can keep psd's own packets out
// of its queue:  iptables -A OUTPUT -m mark ! --mark 0x5053 -j NFQUEUE --queue-num 0
// Needs CAP_NET_RAW (sockets) and CAP_NET_ADMIN (the mark), which live psd has anyway.
import { createRequire } from 'node:module'
import { SEND_MARK, type PacketSender } from '../engine/services.js'
import type { Logger } from '../log.js'

const require = createRequire(import.meta.url)
const SOL_SOCKET = 1
const SO_MARK = 36
const IPPROTO_RAW = 255

let rawModule: any

function ip4(b: Uint8Array, o: number): string {
  return `${b[o]}.${b[o + 1]}.${b[o + 2]}.${b[o + 3]}`
}

function ip6(b: Uint8Array, o: number): string {
  const w: string[] = []
  for (let i = 0; i < 16; i += 2) w.push(((b[o + i] << 8) | b[o + i + 1]).toString(16))
  return w.join(':')
}

export class RawSender implements PacketSender {
  private sockets: (any | null)[] = [null, null]
  /** packets handed to the kernel, and packets that failed (counted, logged without flooding) */
  sent = 0
  errors = 0
  private logged = 0

  constructor(private log: Logger, private mark = SEND_MARK) {}

  private socket(v6: boolean): any {
    const i = v6 ? 1 : 0
    let s = this.sockets[i]
    if (s) return s
    rawModule ??= require('raw-socket')
    s = rawModule.createSocket({ protocol: IPPROTO_RAW, addressFamily: v6 ? rawModule.AddressFamily.IPv6 : rawModule.AddressFamily.IPv4 })
    s.pauseRecv() // send only: an IPPROTO_RAW socket receives nothing anyway
    try {
      s.setOption(SOL_SOCKET, SO_MARK, this.mark)
    } catch (e) {
      this.log.warn(`net.send: cannot set SO_MARK ${this.mark} on the raw socket (${(e as Error).message}); sent packets are not marked and may come back through psd's queue`)
    }
    s.on('error', (e: Error) => {
      this.fail(e) // raw-socket closes the socket after an error: open a new one next time
      if (this.sockets[i] === s) this.sockets[i] = null
    })
    this.sockets[i] = s
    return s
  }

  send(packet: Uint8Array, _timeNs: bigint): void {
    const v6 = packet[0] >> 4 === 6
    const dst = v6 ? ip6(packet, 24) : ip4(packet, 16)
    const buf = Buffer.from(packet.buffer, packet.byteOffset, packet.byteLength)
    try {
      this.socket(v6).send(buf, 0, buf.length, dst, (err: Error | null) => {
        if (err) this.fail(err)
        else this.sent++
      })
    } catch (e) {
      this.fail(e as Error)
    }
  }

  private fail(e: Error): void {
    this.errors++
    if (this.logged < 20 || this.errors % 1000 === 0) {
      this.logged++
      this.log.warn(`net.send: the raw socket failed: ${e.message}`, { send_errors: this.errors })
    }
  }

  close(): void {
    for (const s of this.sockets) { try { s?.close() } catch { /* closing anyway */ } }
    this.sockets = [null, null]
  }
}
