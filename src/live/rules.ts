// Is there a rule that sends packets to psd's queues? At start psd asks iptables-save and
// ip6tables-save (when installed) and warns about each queue no NFQUEUE rule names, with the
// exact rule to add. Only iptables can feed a queue on kernels without nft_queue, and that is
// what docs/operations.md tells people to use; a rule made some other way (native nftables
// `queue`) is not seen here, which is why this is a warning and never an error.
import { execFile } from 'node:child_process'

/** Queue numbers that the NFQUEUE targets in `iptables-save` text send to. */
export function queuesInRules(text: string): Set<number> {
  const out = new Set<number>()
  for (const line of text.split('\n')) {
    if (!line.startsWith('-A ') || !/-j NFQUEUE\b/.test(line)) continue
    const bal = /--queue-balance (\d+):(\d+)/.exec(line)
    if (bal) {
      for (let q = Number(bal[1]); q <= Number(bal[2]) && q <= 65535; q++) out.add(q)
      continue
    }
    const num = /--queue-num (\d+)/.exec(line)
    out.add(num ? Number(num[1]) : 0) // iptables-save prints --queue-num 0; older ones may omit it
  }
  return out
}

/** The rule to suggest for a tenant's queues (a contiguous range gets --queue-balance). */
export function suggestedRule(queues: number[]): string {
  const sorted = [...queues].sort((a, b) => a - b)
  const target = sorted.length > 1 && sorted[sorted.length - 1] - sorted[0] === sorted.length - 1
    ? `--queue-balance ${sorted[0]}:${sorted[sorted.length - 1]}`
    : `--queue-num ${sorted[0]}`
  return `iptables -A INPUT -j NFQUEUE ${target} --queue-bypass`
}

function runSave(cmd: string, timeoutMs: number): Promise<string | null> {
  return new Promise((resolve) => {
    execFile(cmd, [], { timeout: timeoutMs, maxBuffer: 64 << 20 }, (err, stdout) => resolve(err ? null : stdout))
  })
}

/**
 * The queues that iptables and ip6tables rules send to in this network namespace, or null when
 * neither tool could be run. Legacy tables are read only when iptables-nft says they exist
 * (listing them with iptables-legacy would create them).
 */
export async function queuesWithRules(timeoutMs = 5000): Promise<Set<number> | null> {
  const texts = await Promise.all(['iptables-save', 'ip6tables-save'].map((c) => runSave(c, timeoutMs)))
  if (texts.every((t) => t === null)) return null
  const legacy = texts.map((t, i) => t !== null && t.includes('legacy tables present') ? (i ? 'ip6tables-legacy-save' : 'iptables-legacy-save') : null)
  for (const cmd of legacy) if (cmd) texts.push(await runSave(cmd, timeoutMs))
  const out = new Set<number>()
  for (const t of texts) if (t) for (const q of queuesInRules(t)) out.add(q)
  return out
}
