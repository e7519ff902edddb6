// Interface names for the indexes NFQUEUE gives (record fields indev/outdev), for pkt.indev and
// pkt.outdev. The kernel sends indexes only; names come from /sys/class/net/<name>/ifindex.
//
// The table is read once and re-read on a miss (a new interface, or one renamed or re-created
// with a new index), at most once per MISS_REFRESH_MS so a flood of packets from an unknown index
// costs one directory read, not one per packet. It is also re-read when older than MAX_AGE_MS, so
// a rename shows up. Synchronous on purpose: the VM asks from inside a packet call, and the reads
// are a few small sysfs files. Works in any thread (no state shared between threads).
//
// /sys shows the network namespace of whoever mounted it: `ip netns exec` remounts it for the
// namespace it enters, but a bare `unshare -n` does not. Names are therefore only believed when
// /proc/self/net/dev (always this process's namespace) lists them too.
import { readdirSync, readFileSync } from 'node:fs'

const MISS_REFRESH_MS = 1000
const MAX_AGE_MS = 10_000

export interface IfnameSource {
  /** Names of the interfaces in this network namespace. */
  names(): string[]
  /** The ifindex of an interface, or undefined. */
  index(name: string): number | undefined
  /** Names this network namespace really has (null: unknown, believe names()). */
  present(): Set<string> | null
}

const SYSFS: IfnameSource = {
  names: () => readdirSync('/sys/class/net'),
  index: (name) => {
    const v = Number(readFileSync(`/sys/class/net/${name}/ifindex`, 'utf8'))
    return Number.isInteger(v) && v > 0 ? v : undefined
  },
  present: () => {
    try {
      const out = new Set<string>()
      for (const line of readFileSync('/proc/self/net/dev', 'utf8').split('\n').slice(2)) {
        const i = line.indexOf(':')
        if (i > 0) out.add(line.slice(0, i).trim())
      }
      return out
    } catch {
      return null
    }
  },
}

export class InterfaceNames {
  private map = new Map<number, string>()
  private readAt = -Infinity
  /** Times the table was read (for tests and stats). */
  reads = 0

  constructor(private src: IfnameSource = SYSFS, private now: () => number = () => performance.now()) {}

  /** The name of interface `index`, or undefined when this namespace has none with that index. */
  name(index: number): string | undefined {
    const t = this.now()
    let name = this.map.get(index)
    if (name !== undefined ? t - this.readAt > MAX_AGE_MS : t - this.readAt >= MISS_REFRESH_MS) {
      this.refresh(t)
      name = this.map.get(index)
    }
    return name
  }

  private refresh(t: number): void {
    this.readAt = t
    this.reads++
    const map = new Map<number, string>()
    try {
      const present = this.src.present()
      for (const n of this.src.names()) {
        if (present && !present.has(n)) continue
        try {
          const i = this.src.index(n)
          if (i !== undefined) map.set(i, n)
        } catch {
          // the interface went away while we looked
        }
      }
    } catch {
      // no sysfs: names stay unknown (nil in the script)
    }
    this.map = map
  }
}

let shared: InterfaceNames | undefined

/** The process-wide (per thread) lookup: what HostServices.ifname of a live tenant calls. */
export function interfaceName(index: number): string | undefined {
  shared ??= new InterfaceNames()
  return shared.name(index)
}
