// `psd bench`: the per-packet cost report of a script, human and --json (API.md section 9).
import { test } from 'uvu'
import * as assert from 'uvu/assert'
import { join } from 'node:path'
import { writeFileSync } from 'node:fs'
import { psd, tempDir, writeRawPcap } from './lib/psd.js'
import { ipv4, udp } from './lib/packets.js'

const dir = tempDir()
const script = join(dir, 'loop.lua')
// costs a known number of extra instructions per packet: a loop of 100 iterations
writeFileSync(script, 'function on_packet(p) local s = 0 for i = 1, 100 do s = s + i end return ACCEPT end')
const cheap = join(dir, 'cheap.lua')
writeFileSync(cheap, 'function on_packet(p) return ACCEPT end')
const pcap = writeRawPcap(join(dir, 'u.pcap'), Array.from({ length: 50 }, (_, i) => ipv4({ src: '192.0.2.1', dst: '192.0.2.9' }, udp({ sport: i + 1, dport: 53 }))))

test('bench --json prints one object with the documented keys, measured on the given capture', () => {
  const r = psd(['bench', '--script', script, '--pcap', pcap, '--json', '--time', '200'])
  assert.is(r.status, 0, r.stderr)
  const o = JSON.parse(r.stdout)
  assert.is(o.script, script)
  assert.is(o.packets, 50)
  for (const k of ['mean', 'p50', 'p99']) assert.ok(Number.isInteger(o.ns_per_packet[k]) && o.ns_per_packet[k] > 0, k)
  assert.ok(o.ns_per_packet.p99 >= o.ns_per_packet.p50)
  assert.ok(o.pps > 0 && o.baseline.pps > o.pps, 'the loop without a VM is faster than with it')
  assert.ok(o.vm_memory_bytes > 0 && o.vm_memory_bytes < 16 * 1024 * 1024)
  assert.is(o.faults, 0)
  const c = JSON.parse(psd(['bench', '--script', cheap, '--pcap', pcap, '--json', '--time', '200']).stdout)
  // the loop body runs 100 times: 4 instructions an iteration (FORLOOP, ADD, ...), give or take
  const extra = o.fuel_per_packet - c.fuel_per_packet
  assert.ok(extra >= 200 && extra <= 600, `fuel difference ${extra}`)
})

test('bench without --pcap uses the bundled capture; human output names the figures', () => {
  const r = psd(['bench', '--script', cheap, '--time', '100'])
  assert.is(r.status, 0, r.stderr)
  assert.match(r.stdout, /sample\.pcap \(\d+ IP packets/)
  assert.match(r.stdout, /throughput\s+[\d,]+ packets\/s\s+\(baseline with no VM: [\d,]+ packets\/s\)/)
  assert.match(r.stdout, /fuel\s+\d+ VM instructions per packet/)
})

test('bench reports faults and exits 1 on a script that does not load', () => {
  const bad = join(dir, 'bad.lua')
  writeFileSync(bad, 'function on_packet(p) error("x") end')
  const r = psd(['bench', '--script', bad, '--pcap', pcap, '--json', '--time', '50'])
  assert.is(r.status, 0)
  assert.equal(JSON.parse(r.stdout).fault_kinds, { error: 50 })
  writeFileSync(bad, 'function on_packet(p')
  const r2 = psd(['bench', '--script', bad, '--pcap', pcap, '--json'])
  assert.is(r2.status, 1)
  assert.match(r2.stderr, /bad\.lua:1:/)
})

test.run()
