// `node psd.js rules [--config FILE | --queue N | --queues A-B] [--chain C] [--match ARGS]`:
// prints the iptables and ip6tables commands that send traffic to psd's queues, one rule per
// tenant, for an operator to read, adapt and run (psd never changes the firewall itself).
//
// Each rule has --queue-bypass (while psd is not running the rule lets packets pass unseen: see
// docs/operations.md for the fail-closed choice), a comment naming the tenant, and, when any
// tenant may send packets (net.send), a mark exception: psd marks what it sends with SEND_MARK
// so its own packets never come back into its queues.
import { loadConfigFile, parseQueues, parseChain, parseMatch, ConfigError, type TenantConfig } from '../config.js'
import { SEND_MARK } from '../engine/services.js'
import { UsageError, type RunValues } from './options.js'

export function queueTarget(queues: number[]): string {
  const q = [...queues].sort((a, b) => a - b)
  if (q.length > 1 && q[q.length - 1] - q[0] === q.length - 1) return `--queue-balance ${q[0]}:${q[q.length - 1]}`
  if (q.length > 1) throw new ConfigError(`queues ${q.join(',')} are not one range: iptables can balance over a range A-B only`)
  return `--queue-num ${q[0]}`
}

export interface RulesInput {
  tenants: Pick<TenantConfig, 'name' | 'queues' | 'send' | 'chain' | 'match'>[]
  source: string
}

/** The commands, as text (shell comments and one command a line). */
export function rulesText(input: RulesInput): string {
  const anySend = input.tenants.some((t) => t.send)
  const mark = `0x${SEND_MARK.toString(16)}`
  const lines: string[] = [
    `# iptables rules for psd (${input.source}): each sends a tenant's traffic to its queues.`,
    '# Change -A CHAIN and the matches to choose which packets each script sees; with --queue-bypass',
    '# packets pass unseen while psd is not running (remove it to drop them instead: fail-closed).',
  ]
  if (anySend) lines.push(`# The mark exception (! --mark ${mark}) keeps the packets psd itself sends (net.send) out of its queues.`)
  lines.push('# Remove a rule again with -D instead of -A.')
  for (const t of input.tenants) {
    const chain = t.chain ?? 'INPUT'
    const parts = [`-A ${chain}`]
    if (t.match) parts.push(t.match)
    if (anySend) parts.push(`-m mark ! --mark ${mark}`)
    parts.push(`-m comment --comment psd:${t.name}`)
    parts.push(`-j NFQUEUE ${queueTarget(t.queues)} --queue-bypass`)
    const rule = parts.join(' ')
    lines.push('', `# tenant ${t.name}: queue${t.queues.length > 1 ? 's' : ''} ${t.queues.length > 1 ? `${t.queues[0]}-${t.queues[t.queues.length - 1]}` : t.queues[0]}`)
    lines.push(`iptables  ${rule}`)
    // a match naming IPv4-only things (icmp, addresses with dots) has no IPv6 twin
    if (!/\bicmp\b|\d+\.\d+\.\d+\.\d+/.test(t.match ?? '')) lines.push(`ip6tables ${rule}`)
  }
  return lines.join('\n') + '\n'
}

export function runRules(args: string[], v: RunValues): number {
  if (args.length) throw new UsageError(`rules: unexpected argument "${args[0]}"`)
  try {
    let input: RulesInput
    if (v.config !== undefined) {
      if (v.queue !== undefined || v.queues !== undefined || v.script !== undefined) throw new UsageError('rules: give --config or --queue/--queues, not both')
      const cfg = loadConfigFile(v.config)
      input = { source: v.config, tenants: cfg.tenants }
      if (v.chain !== undefined || v.match !== undefined) {
        input.tenants = input.tenants.map((t) => ({ ...t, chain: t.chain ?? (v.chain !== undefined ? parseChain(v.chain, '--chain') : undefined), match: t.match ?? (v.match !== undefined ? parseMatch(v.match, '--match') : undefined) }))
      }
    } else {
      if (v.queue !== undefined && v.queues !== undefined) throw new UsageError('give --queue or --queues, not both')
      const queues = v.queues !== undefined ? parseQueues(v.queues, '--queues') : parseQueues(v.queue ?? '0', '--queue')
      input = {
        source: v.queues !== undefined ? `--queues ${v.queues}` : `--queue ${queues[0]}`,
        tenants: [{
          name: v.name ?? 'default', queues, send: v['allow-send'] === true,
          chain: v.chain !== undefined ? parseChain(v.chain, '--chain') : undefined,
          match: v.match !== undefined ? parseMatch(v.match, '--match') : undefined,
        }],
      }
    }
    process.stdout.write(rulesText(input))
    return 0
  } catch (e) {
    if (e instanceof ConfigError) {
      if (v.config !== undefined && e.message.startsWith(v.config)) { process.stderr.write(`psd: ${e.message}\n`); return 1 }
      throw new UsageError(e.message)
    }
    throw e
  }
}
