// The config file (API.md section 9): every mistake is a load error that names the file and
// the key, through `psd --config` as an operator meets it; `psd rules` prints rules that
// iptables takes (checked in a network namespace of its own when root).
import { test } from 'uvu'
import * as assert from 'uvu/assert'
import { writeFileSync } from 'node:fs'
import { join } from 'node:path'
import { spawnSync } from 'node:child_process'
import { parseConfig, ConfigError } from '../src/config.js'
import { rulesText } from '../src/cli/rules.js'
import { psd, tempDir, writeRawPcap } from './lib/psd.js'
import { ipv4, udp } from './lib/packets.js'
import { createPair, deletePair, liveUnavailable, nsRun } from './lib/netns.js'

const dir = tempDir('psd-ops-config-')
const script = join(dir, 'ok.lua')
writeFileSync(script, 'function on_packet() return ACCEPT end')
const pcap = join(dir, 'empty.pcap')
{
  const head = Buffer.alloc(24)
  head.writeUInt32LE(0xa1b2c3d4, 0); head.writeUInt16LE(2, 4); head.writeUInt16LE(4, 6); head.writeUInt32LE(65535, 16); head.writeUInt32LE(101, 20)
  writeFileSync(pcap, head)
}

function runConfig(cfg: unknown, raw?: string) {
  const path = join(dir, 'psd.json')
  writeFileSync(path, raw ?? JSON.stringify(cfg))
  return { path, r: psd(['--config', path, '--pcap', pcap]) }
}

const T = (o: object = {}) => ({ name: 'web', script, ...o })

for (const [what, cfg, message] of [
  ['an unknown top-level key', { tenants: [T()], metric: '1.2.3.4:5' }, /psd\.json: unknown key "metric" \(did you mean "metrics"\?\)/],
  ['an unknown tenant key', { tenants: [T({ fule: 5 })] }, /psd\.json: tenants\[0\]: unknown key "fule" \(did you mean "fuel"\?\)/],
  ['a key nothing like a known one', { tenants: [T({ colour: 'red' })] }, /tenants\[0\]: unknown key "colour"$/],
  ['no tenants', { tenants: [] }, /psd\.json: "tenants" must be a non-empty list/],
  ['a tenant without a script', { tenants: [{ name: 'web' }] }, /tenants\[0\]\.script: expected a file path/],
  ['a bad name', { tenants: [T({ name: 'we b' })] }, /tenants\[0\]\.name: expected 1-64 letters/],
  ['a name used twice', { tenants: [T(), T({ queue: 1 })] }, /tenants\[1\]\.name: "web" is used twice/],
  ['fuel that is not a count', { tenants: [T({ fuel: 'lots' })] }, /tenants\[0\]\.fuel: expected an integer in 100\.\./],
  ['memory without a unit it knows', { tenants: [T({ memory: '16 parsecs' })] }, /tenants\[0\]\.memory: expected a size such as 16MiB/],
  ['memory too small', { tenants: [T({ memory: '64KiB' })] }, /tenants\[0\]\.memory: must be between 1MiB and 1GiB/],
  ['a bad timeout', { tenants: [T({ timeout_ms: 0 })] }, /tenants\[0\]\.timeout_ms: expected an integer in 1\.\.600000/],
  ['a bad fault verdict', { tenants: [T({ on_fault: 'reject' })] }, /tenants\[0\]\.on_fault: expected "accept" or "drop", got "reject"/],
  ['send that is not a boolean', { tenants: [T({ send: 'yes' })] }, /tenants\[0\]\.send: expected true or false/],
  ['queue and queues both', { tenants: [T({ queue: 1, queues: '2-3' })] }, /tenants\[0\]: give "queue" or "queues", not both/],
  ['a bad queue range', { tenants: [T({ queues: '5-2' })] }, /tenants\[0\]\.queues: expected a queue number or a range A-B, got "5-2"/],
  ['a queue out of range', { tenants: [T({ queue: 70000 })] }, /tenants\[0\]\.queue: expected an integer in 0\.\.65535/],
  ['one queue for two tenants', { tenants: [T({ queues: '0-3' }), T({ name: 'dns', queue: 2 })] }, /queue 2 is given to both "web" and "dns"/],
  ['a bad function name', { tenants: [T({ function: 'on-packet' })] }, /tenants\[0\]\.function: expected a Lua function name/],
  ['too many workers', { tenants: [T({ workers: 100 })] }, /tenants\[0\]\.workers: expected an integer in 1\.\.64/],
  ['a bad queue_maxlen', { tenants: [T({ queue_maxlen: 100000 })] }, /tenants\[0\]\.queue_maxlen: expected an integer in 1\.\.65536/],
  ['a bad fail_open', { tenants: [T({ fail_open: 1 })] }, /tenants\[0\]\.fail_open: expected true or false/],
  ['a chain iptables has no NFQUEUE use for', { tenants: [T({ chain: 'NAT' })] }, /tenants\[0\]\.chain: expected one of PREROUTING, INPUT/],
  ['a match with shell syntax', { tenants: [T({ match: '-p udp; rm -rf /' })] }, /tenants\[0\]\.match: expected iptables match arguments/],
  ['a match with its own jump', { tenants: [T({ match: '-p udp -j ACCEPT' })] }, /tenants\[0\]\.match: .*no -j/],
  ['metrics that is not HOST:PORT', { tenants: [T()], metrics: 9464 }, /psd\.json: "metrics": expected HOST:PORT/],
  ['control that is not a path', { tenants: [T()], control: '' }, /psd\.json: "control": expected a socket path/],
  ['a list at the top', [T()], /psd\.json: the config must be a JSON object/],
] as const) {
  test(`config: ${what} is a load error naming the key`, () => {
    const { r } = runConfig(cfg)
    assert.is(r.status, 1, r.stderr)
    const err = r.logs.find((l) => l.level === 'error')
    assert.ok(err, r.stderr)
    assert.match(err.msg, message)
    assert.ok(err.msg.startsWith(join(dir, 'psd.json')), err.msg)
  })
}

test('config: not JSON, and a file that is not there', () => {
  const { r } = runConfig(null, '{ "tenants": [ }')
  assert.is(r.status, 1)
  assert.match(r.logs[0].msg, /psd\.json: not valid JSON: /)
  const missing = psd(['--config', join(dir, 'nope.json'), '--pcap', pcap])
  assert.is(missing.status, 1)
  assert.match(missing.logs[0].msg, /nope\.json: cannot read config: ENOENT/)
})

test('config: a good file, with defaults filled in as on the command line', () => {
  const c = parseConfig({
    tenants: [T({ queue: 2, fuel: '2_000_000', memory: '8MiB', timeout_ms: 20, on_fault: 'drop', send: true, function: 'f', workers: 2, queue_maxlen: 1024, fail_open: true, chain: 'forward', match: '-p udp --dport 53' }),
      { name: 'dns', script: 'd.lua', queues: '4-5' }],
    metrics: '127.0.0.1:9464', control: '/run/psd.sock',
  }, 'x.json')
  assert.equal(c.tenants[0], { name: 'web', script, queues: [2], fuel: 2_000_000, memory: 8 << 20, timeoutMs: 20, onFault: 'drop', send: true, entry: 'f', workers: 2, queueMaxlen: 1024, failOpen: true, chain: 'FORWARD', match: '-p udp --dport 53' })
  assert.equal(c.tenants[1], { name: 'dns', script: 'd.lua', queues: [4, 5], fuel: 1_000_000, memory: 16 << 20, timeoutMs: 50, onFault: 'accept', send: false, entry: undefined, workers: 1 })
  assert.is(c.metrics, '127.0.0.1:9464')
  assert.throws(() => parseConfig({ tenants: [T({ memory: 'big' })] }, 'x.json'), (e: unknown) => e instanceof ConfigError)
})

test('the command line: every tenant option, named in its error', () => {
  for (const [args, message] of [
    [['--fuel', 'x'], /--fuel: expected an integer/],
    [['--memory', '1KiB'], /--memory: must be between 1MiB and 1GiB/],
    [['--on-fault', 'maybe'], /--on-fault: expected "accept" or "drop"/],
    [['--name', 'a b'], /--name: expected 1-64 letters/],
    [['--workers', '0'], /--workers: expected an integer in 1\.\.64/],
    [['--chain', 'NOPE'], /--chain: expected one of/],
    [['--match=-p tcp && reboot'], /--match: expected iptables match arguments/],
    [['--queue', '1', '--queues', '2-3'], /give --queue or --queues, not both/],
  ] as const) {
    const r = psd(['--script', script, '--pcap', pcap, ...args])
    assert.is(r.status, 2, `${args.join(' ')}: ${r.stderr}`)
    assert.match(r.stderr, message)
  }
})

test('rules: from the command line and from a config', () => {
  let r = psd(['rules', '--queue', '3'])
  assert.is(r.status, 0, r.stderr)
  assert.match(r.stdout, /\niptables  -A INPUT -m comment --comment psd:default -j NFQUEUE --queue-num 3 --queue-bypass\n/)
  assert.match(r.stdout, /\nip6tables -A INPUT -m comment --comment psd:default -j NFQUEUE --queue-num 3 --queue-bypass\n/)
  assert.not.match(r.stdout, /--mark/)
  r = psd(['rules', '--queues', '2-5', '--chain', 'forward', '--match=-p tcp --dport 80', '--allow-send'])
  assert.match(r.stdout, /iptables  -A FORWARD -p tcp --dport 80 -m mark ! --mark 0x5053 -m comment --comment psd:default -j NFQUEUE --queue-balance 2:5 --queue-bypass\n/)
  const cfg = join(dir, 'rules.json')
  writeFileSync(cfg, JSON.stringify({ tenants: [T({ queue: 0, match: '-p udp --dport 53' }), { name: 'ping', script, queue: 1, match: '-p icmp', send: true, chain: 'OUTPUT' }] }))
  r = psd(['rules', '--config', cfg])
  assert.is(r.status, 0, r.stderr)
  assert.match(r.stdout, /# tenant web: queue 0\niptables  -A INPUT -p udp --dport 53 -m mark ! --mark 0x5053 -m comment --comment psd:web -j NFQUEUE --queue-num 0 --queue-bypass\nip6tables /)
  assert.match(r.stdout, /# tenant ping: queue 1\niptables  -A OUTPUT -p icmp -m mark ! --mark 0x5053 -m comment --comment psd:ping -j NFQUEUE --queue-num 1 --queue-bypass\n(?!ip6tables)/)
  r = psd(['rules', '--config', cfg, '--queue', '1'])
  assert.is(r.status, 2)
  r = psd(['rules', '--config', join(dir, 'missing.json')])
  assert.is(r.status, 1)
  assert.match(r.stderr, /missing\.json: cannot read config/)
  assert.throws(() => rulesText({ source: 'x', tenants: [{ name: 'a', queues: [1, 3], send: false }] }), /not one range/)
})

test('logs: JSON lines with tenant and script:line; --log-format text for people', () => {
  const bad = join(dir, 'boom.lua')
  writeFileSync(bad, 'function on_packet(pkt)\n  log.info("seen %d", pkt.len)\n  error("boom")\nend\n')
  const one = writeRawPcap(join(dir, 'one.pcap'), [ipv4({}, udp({ payload: 'x' }))])
  const j = psd(['--script', bad, '--pcap', one, '--name', 'web'])
  assert.is(j.status, 0, j.stderr)
  const info = j.logs.find((l) => l.source === 'script')
  assert.equal([info.level, info.tenant, info.msg, info.where], ['info', 'web', 'seen 29', `${bad}:2`])
  assert.ok(typeof info.time === 'string' && info.script === bad)
  const fault = j.logs.find((l) => l.fault === 'error')
  assert.equal([fault.level, fault.tenant, fault.msg], ['error', 'web', `${bad}:3: boom`])
  const t = psd(['--script', bad, '--pcap', one, '--name', 'web', '--log-format', 'text'])
  assert.is(t.status, 0, t.stderr)
  const lines = t.stderr.split('\n')
  assert.ok(lines.some((l) => new RegExp(`^\\d{4}-\\d\\d-\\d\\dT\\S+ INFO  \\[web\\] seen 29 .*where=${bad}:2`).test(l)), t.stderr)
  assert.ok(lines.some((l) => new RegExp(`^\\S+ ERROR \\[web\\] ${bad}:3: boom .*fault=error`).test(l)), t.stderr)
})

const why = liveUnavailable(['ip', 'iptables'])
const CI = process.env.CI === 'true'
const live = why && !CI ? test.skip : test
if (why && !CI) console.log(`SKIPPED: checking the rules with iptables needs root: ${why}`)

live('rules: iptables and ip6tables take every printed command (in a namespace of their own)', () => {
  if (why) throw new Error(why)
  const cfg = join(dir, 'rules2.json')
  writeFileSync(cfg, JSON.stringify({ tenants: [T({ queues: '0-3', match: '-p udp --dport 53', send: true }), { name: 'fw', script, queue: 7, chain: 'FORWARD', match: '-p tcp --dport 443' }] }))
  const r = psd(['rules', '--config', cfg])
  const cmds = r.stdout.split('\n').filter((l) => /^ip6?tables /.test(l))
  assert.is(cmds.length, 4)
  const p = createPair('rules')
  try {
    for (const c of cmds) {
      const [tool, ...args] = c.split(/\s+/)
      nsRun(p.b, tool, args)
    }
    const saved = nsRun(p.b, 'iptables-save', [])
    assert.match(saved, /-A INPUT -p udp -m udp --dport 53 -m mark ! --mark 0x5053 -m comment --comment "?psd:web"? -j NFQUEUE --queue-balance 0:3 --queue-bypass/)
    assert.match(saved, /-A FORWARD -p tcp -m tcp --dport 443 .*--comment "?psd:fw"? -j NFQUEUE --queue-num 7 --queue-bypass/)
  } finally { deletePair(p) }
  void spawnSync
})

test.run()
