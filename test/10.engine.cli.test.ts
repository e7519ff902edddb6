// The offline command end to end: verdict forms, marks, load errors, faults, exit statuses,
// the verdict log and the summary (API.md sections 1, 2 and 9).
import { test } from 'uvu'
import * as assert from 'uvu/assert'
import { join } from 'node:path'
import { writeFileSync } from 'node:fs'
import { runPsd, psd, tempDir, writeRawPcap } from './lib/psd.js'
import { ipv4, udp, icmpEcho } from './lib/packets.js'

const dir = tempDir()
// 12 UDP packets whose first payload byte is the packet's index 1..12
const packets = Array.from({ length: 12 }, (_, i) =>
  ipv4({ src: '192.0.2.1', dst: '192.0.2.2', ttl: 64 }, udp({ sport: 1000 + i, dport: 9999, payload: new Uint8Array([i + 1, 0x41]) })))
const pcap = writeRawPcap(join(dir, 'udp12.pcap'), packets)

function scriptLogs(run: { logs: any[] }): string[] {
  return run.logs.filter((l) => l.source === 'script').map((l) => l.msg)
}

test('every verdict form of section 2 maps to its verdict', () => {
  const forms = ['ACCEPT', 'nil', 'true', '"accept"', 'NF_ACCEPT', 'DROP', 'false', '"drop"', 'NF_DROP', 'REPEAT', '"repeat"', 'queue(3)']
  const script = `
local forms = { ${forms.map((f) => `function() return ${f} end`).join(', ')} }
function on_packet(pkt) return forms[pkt:u8(28)]() end`
  const r = runPsd({ script, pcap, dir })
  assert.is(r.status, 0, r.stderr)
  assert.equal(r.verdicts.map((v) => v.verdict), [
    'accept', 'accept', 'accept', 'accept', 'accept', 'drop', 'drop', 'drop', 'drop', 'repeat', 'repeat', 'queue'])
  assert.ok(r.verdicts.every((v) => v.fault === null))
  assert.equal(r.summary, { ...r.summary, packets: 12, accepted: 8, dropped: 4, faults: 0, skipped: 0, modified: 0 })
})

test('a plain integer equal to a verdict constant is that verdict; other values are verdict faults', () => {
  const script = `
function on_packet(pkt)
  local i = pkt:u8(28)
  if i == 1 then return 1 elseif i == 2 then return 0 elseif i == 3 then return 4
  elseif i == 4 then return 7 elseif i == 5 then return "maybe" elseif i == 6 then return {}
  elseif i == 7 then return 1.0 elseif i == 8 then return ACCEPT, -1
  elseif i == 9 then return ACCEPT, "x" elseif i == 10 then return ACCEPT, 2^32 end
  return DROP
end`
  const r = runPsd({ script, pcap, dir, args: ['--on-fault', 'drop'] })
  assert.is(r.status, 0, r.stderr)
  const v = r.verdicts
  assert.equal(v.slice(0, 3).map((x) => x.verdict), ['accept', 'drop', 'repeat'])
  assert.is(v[6].verdict, 'accept')
  for (const i of [3, 4, 5, 7, 8, 9]) {
    assert.is(v[i].fault, 'verdict', `packet ${i + 1}`)
    assert.is(v[i].verdict, 'drop', `packet ${i + 1} gets the fault verdict`)
  }
  assert.is(r.summary.faults, 6)
  const errs = r.logs.filter((l) => l.fault === 'verdict')
  assert.ok(errs.length === 6 && errs.every((l) => l.msg.includes('script.lua')), 'each verdict fault is logged with the script')
})

test('marks: set through pkt.mark, returned with the verdict, 0 when never set', () => {
  const script = `
function on_packet(pkt)
  local i = pkt:u8(28)
  if i == 1 then pkt.mark = 0x20 end
  if i == 2 then return ACCEPT, 0xffffffff end
  if i == 3 then pkt.mark = 5; return DROP, 6 end
  if i == 4 then assert(pkt.mark == 0); pkt.mark = 9; assert(pkt.mark == 9) end
  if i == 5 then pkt.mark = -1 end
  if i == 6 then pkt.mark = 1.5 end
  return ACCEPT
end`
  const r = runPsd({ script, pcap, dir })
  assert.is(r.status, 0, r.stderr)
  assert.equal(r.verdicts.slice(0, 7).map((v) => [v.verdict, v.mark, v.fault]), [
    ['accept', 32, null], ['accept', 4294967295, null], ['drop', 6, null], ['accept', 9, null],
    ['accept', 0, 'error'], ['accept', 0, 'error'], ['accept', 0, null]])
  const msg = r.logs.find((l) => l.fault === 'error')?.msg ?? ''
  assert.match(msg, /script\.lua:8: pkt\.mark must be an integer/)
})

test('a runtime error on some packets gives those the fault verdict and leaves the rest untouched', () => {
  const script = `
local seen = 0
function on_packet(pkt)
  seen = seen + 1
  if pkt:u8(28) % 3 == 0 then
    local t = nil
    return t.field
  end
  pkt.mark = seen
  return ACCEPT
end`
  const r = runPsd({ script, pcap, dir, args: ['--on-fault', 'drop'] })
  assert.is(r.status, 0, r.stderr)
  for (const v of r.verdicts) {
    if (v.n % 3 === 0) assert.equal([v.verdict, v.fault, v.mark], ['drop', 'error', 0])
    else assert.equal([v.verdict, v.fault, v.mark], ['accept', null, v.n], `packet ${v.n}`)
  }
  const err = r.logs.filter((l) => l.fault === 'error')
  assert.is(err.length, 4)
  assert.match(err[0].msg, /script\.lua:7: attempt to index a nil value/)
  assert.is(err[0].packet, 3, 'the log line names the packet')
  assert.is(r.summary.faults, 4)
})

test('globals persist between packets; on_start and on_stop run once', () => {
  const script = `
count = 0
function on_start() print("start") end
function on_packet(pkt) count = count + 1; pkt.mark = count end
function on_stop() print("stop", count) end`
  const r = runPsd({ script, pcap, dir })
  assert.is(r.status, 0, r.stderr)
  assert.equal(r.verdicts.map((v) => v.mark), [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12])
  assert.equal(scriptLogs(r), ['start', 'stop\t12'])
})

test('--function picks the entry; process_packet is accepted when on_packet is absent', () => {
  let r = runPsd({ script: 'function mine(p) return DROP end function on_packet(p) return ACCEPT end', pcap, dir, args: ['--function', 'mine'] })
  assert.ok(r.verdicts.every((v) => v.verdict === 'drop'))
  r = runPsd({ script: 'function process_packet(p) return DROP end', pcap, dir })
  assert.ok(r.verdicts.length === 12 && r.verdicts.every((v) => v.verdict === 'drop'))
  r = runPsd({ script: 'function process_packet(p) return DROP end function on_packet(p) return ACCEPT end', pcap, dir })
  assert.ok(r.verdicts.every((v) => v.verdict === 'accept'), 'on_packet wins')
})

test('load errors: syntax error, missing entry, top-level error, missing file name the file and line; exit 1', () => {
  const cases: [string, RegExp][] = [
    ['local x = = 1\nfunction on_packet() end', /script\.lua:1: unexpected symbol near '='/],
    ['function other() end', /script\.lua: no global function on_packet \(or process_packet\)/],
    ['local a = 1\nerror("nope")\nfunction on_packet() end', /script\.lua:2: nope/],
    ['function on_start() local t = nil; t.x = 1 end\nfunction on_packet() end', /script\.lua:1: attempt to index a nil value.*on_start/],
  ]
  for (const [script, re] of cases) {
    // a generous clock: on a loaded machine a worker may wait for a core (time is not the point)
    const r = runPsd({ script, pcap, dir, args: ['--timeout-ms', '5000'] })
    assert.is(r.status, 1, script)
    assert.match(r.stderr, re)
    assert.is(r.verdicts.length, 0, 'no packet ran')
  }
  const r = psd(['--script', join(dir, 'missing.lua'), '--pcap', pcap])
  assert.is(r.status, 1)
  assert.match(r.stderr, /missing\.lua: cannot read script: no such file/)
  const r2 = runPsd({ script: 'function on_packet() end', pcap, dir, args: ['--function', 'nothere'] })
  assert.is(r2.status, 1)
  assert.match(r2.stderr, /no global function nothere/)
})

test('check: prints FILE:LINE: message for each broken script, exit 1; ok scripts exit 0', () => {
  const good = join(dir, 'good.lua'), bad = join(dir, 'bad.lua'), bad2 = join(dir, 'bad2.lua')
  writeFileSync(good, 'function on_packet(p) return ACCEPT end')
  writeFileSync(bad, 'function on_packet(p)\n  return ACCEPT\nedn\n')
  writeFileSync(bad2, 'x = 1\ny = nil + 1\nfunction on_packet() end')
  let r = psd(['check', good])
  assert.is(r.status, 0, r.stderr)
  r = psd(['check', good, bad, bad2])
  assert.is(r.status, 1)
  const lines = r.stderr.trim().split('\n')
  assert.is(lines.length, 2)
  assert.match(lines[0], new RegExp(`^${bad.replace(/[.*+?^${}()|[\]\\]/g, '\\$&')}:3: `))
  assert.match(lines[1], new RegExp(`^${bad2.replace(/[.*+?^${}()|[\]\\]/g, '\\$&')}:2: attempt to perform arithmetic on a nil value`))
})

test('wrong usage exits 2 with a message', () => {
  for (const args of [['--pcap', pcap], ['--script'], ['--bogus'], ['--script', 'x.lua', '--pcap', pcap, '--on-fault', 'maybe'],
    ['--script', 'x.lua', '--pcap', pcap, '--memory', 'lots'], ['frobnicate']]) {
    const r = psd(args)
    assert.is(r.status, 2, args.join(' '))
    assert.match(r.stderr, /^psd: /)
  }
})

test('log lines are JSON with level, time, tenant and msg; print and log.info format as documented', () => {
  const r = runPsd({ script: 'function on_start() log.info("x=%d", 3); print("a", 1); log.warn("w") end function on_packet() end', pcap, dir })
  assert.is(r.status, 0)
  for (const l of r.logs) for (const k of ['level', 'time', 'tenant', 'msg']) assert.ok(k in l, `${k} in ${JSON.stringify(l)}`)
  const s = r.logs.filter((l) => l.source === 'script')
  assert.equal(s.map((l) => [l.level, l.msg]), [['info', 'x=3'], ['info', 'a\t1'], ['warn', 'w']])
  assert.match(s[0].where, /script\.lua:1$/)
  const last = r.logs[r.logs.length - 1]
  assert.is(last.msg, 'summary')
  for (const k of ['packets', 'accepted', 'dropped', 'modified', 'faults', 'skipped']) assert.ok(Number.isInteger(last[k]), k)
})

test('--log-format text writes plain lines', () => {
  const r = runPsd({ script: 'function on_packet() end', pcap, dir, args: ['--log-format', 'text'] })
  assert.is(r.status, 0)
  assert.match(r.stderr, /INFO .*summary packets=12 accepted=12/)
})

test('non-IP frames are skipped: accept, skipped:true, not given to the script', () => {
  // An Ethernet capture with an ARP frame between two IPv4 frames
  const eth = (type: number, body: Uint8Array) => Buffer.concat([Buffer.alloc(12, 1), Buffer.from([type >> 8, type & 0xff]), Buffer.from(body)])
  const frames = [eth(0x0800, packets[0]), eth(0x0806, new Uint8Array(28)), eth(0x0800, packets[1])]
  const head = Buffer.alloc(24)
  head.writeUInt32LE(0xa1b2c3d4, 0); head.writeUInt16LE(2, 4); head.writeUInt16LE(4, 6); head.writeUInt32LE(65535, 16); head.writeUInt32LE(1, 20)
  const recs = frames.map((f, i) => { const h = Buffer.alloc(16); h.writeUInt32LE(i, 0); h.writeUInt32LE(f.length, 8); h.writeUInt32LE(f.length, 12); return Buffer.concat([h, f]) })
  const p = join(dir, 'eth.pcap')
  writeFileSync(p, Buffer.concat([head, ...recs]))
  const r = runPsd({ script: 'n = 0 function on_packet(p) n = n + 1; p.mark = n; return DROP end', pcap: p, dir })
  assert.is(r.status, 0, r.stderr)
  assert.equal(r.verdicts, [
    { n: 1, verdict: 'drop', mark: 1, modified: false, fault: null },
    { n: 2, verdict: 'accept', mark: 0, modified: false, fault: null, skipped: true },
    { n: 3, verdict: 'drop', mark: 2, modified: false, fault: null },
  ])
  assert.equal([r.summary.packets, r.summary.skipped, r.summary.dropped, r.summary.accepted], [3, 1, 2, 1])
})

test('a truncated capture: the packets before the bad record get verdicts, then an error with the byte offset, exit 1', () => {
  const full = writeRawPcap(join(dir, 'full.pcap'), packets.slice(0, 5))
  const bytes = require('node:fs').readFileSync(full) as Buffer
  const cut = join(dir, 'cut.pcap')
  // records are 16 + 38 bytes; cut the 4th record in the middle
  const off4 = 24 + 3 * (16 + packets[0].length)
  writeFileSync(cut, bytes.subarray(0, off4 + 20))
  const r = runPsd({ script: 'function on_packet() return DROP end', pcap: cut, dir })
  assert.is(r.status, 1)
  assert.is(r.verdicts.length, 3)
  assert.match(r.stderr, new RegExp(`cut\\.pcap: .*byte offset ${off4}`))
})

test('an empty or non-capture file is a clear input error', () => {
  const p = join(dir, 'notpcap.pcap')
  writeFileSync(p, 'hello world, not a capture at all')
  const r = runPsd({ script: 'function on_packet() end', pcap: p, dir })
  assert.is(r.status, 1)
  assert.match(r.stderr, /notpcap\.pcap/)
})

test('icmp packets and the time of the capture: pkt.time is the record timestamp', () => {
  const ping = ipv4({ src: '10.0.0.1', dst: '10.0.0.2' }, icmpEcho({ id: 7, seq: 1 }))
  const p = writeRawPcap(join(dir, 'icmp.pcap'), [ping], 1_650_000_000)
  const r = runPsd({ script: 'function on_packet(p) print(p.time, time.now(), p.id, p.family, p.len, p.origlen, p.queue, p.hook, p.indev, p.uid) end', pcap: p, dir })
  assert.equal(scriptLogs(r), [`1650000000000000000\t1650000000000000000\t1\t4\t${ping.length}\t${ping.length}\tnil\tnil\tnil\tnil`])
})

import { createRequire } from 'node:module'
const require = createRequire(import.meta.url)

test.run()
