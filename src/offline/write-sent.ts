// Offline, net.send goes to a file instead of the wire: --write-sent F, a raw-IP pcap whose
// records carry the tenant's clock when the script sent them (the capture time of the packet,
// timer or deferred call that sent it), so the file lines up with the input.
import { PcapWriter } from '../pcap/writer.js'
import type { PacketSender } from '../engine/services.js'

export class PcapSender implements PacketSender {
  private w: PcapWriter
  constructor(path: string) { this.w = new PcapWriter(path) }

  send(packet: Uint8Array, timeNs: bigint): void {
    const t = timeNs < 0n ? 0n : timeNs
    this.w.write(Number(t / 1_000_000_000n), Number(t % 1_000_000_000n), packet)
  }

  get count(): number { return this.w.count }

  close(): void { this.w.close() }
}
