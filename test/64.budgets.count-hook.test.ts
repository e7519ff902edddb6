// The patched count hook (wasm/count-hook-patch.ts): it must count what Lua's own count hook
// counts, closely, for every shape of code, and never let a loop run uncharged. Lua's stock
// function (PSD_COUNT_HOOK=stock) is the reference, run over the same scripts and packets.
import { test } from 'uvu'
import * as assert from 'uvu/assert'
import { join } from 'node:path'
import { writeFileSync, readFileSync } from 'node:fs'
import { createRequire } from 'node:module'
import { psd, tempDir, writeRawPcap } from './lib/psd.js'
import { ipv4, udp, tcp } from './lib/packets.js'
import { patchCountHook } from '../wasm/count-hook-patch.js'

const dir = tempDir()
const pcap = writeRawPcap(join(dir, 'mix.pcap'), Array.from({ length: 40 }, (_, i) => i % 2
  ? ipv4({ src: '192.0.2.1', dst: '192.0.2.9' }, udp({ sport: i + 1, dport: 53 }))
  : ipv4({ src: '192.0.2.2', dst: '192.0.2.8' }, tcp({ sport: 1000 + i, dport: 80 }))))

// shapes: straight code, numeric/generic/while/repeat loops, calls, recursion, tail calls,
// metamethods, closures, string library calls, branches taken and not
const SHAPES: Record<string, string> = {
  straight: 'local x = pkt.len x = x + 1 x = x * 2 x = x - 3 x = x // 2 x = x | 1 x = x ~ 5 if x < 0 then return DROP end',
  forloop: 'local s = 0 for i = 1, 300 do s = s + i end if s < 0 then return DROP end',
  whileloop: 'local i, s = 0, 0 while i < 100 do i = i + 1 if i % 3 == 0 then s = s + 1 elseif i % 3 == 1 then s = s - 1 else s = s ~ i end end',
  repeatloop: 'local i = 0 repeat i = i + 2 until i > 150',
  generic: 'local t = {3, 1, 4, 1, 5, 9, 2, 6} local s = 0 for k, v in ipairs(t) do s = s + v * k end for k, v in pairs(t) do s = s - v end',
  calls: 'local s = 0 for i = 1, 60 do s = s + f(i) end',
  recursion: 'local s = fib(10)',
  tailcalls: 'local s = count(80)',
  metamethods: 'local v = setmetatable({}, { __index = function(t, k) return k * 2 end, __add = function(a, b) return 7 end }) local s = 0 for i = 1, 40 do s = s + v[i] + (v + 1) end',
  strings: 'local s = "" for i = 1, 20 do s = s .. string.format("%d,", i) end local n = 0 for w in s:gmatch("%d+") do n = n + #w end',
}
const PRELUDE = `
function f(x) if x % 2 == 0 then return x // 2 end return 3 * x + 1 end
function fib(n) if n < 2 then return n end return fib(n - 1) + fib(n - 2) end
function count(n, acc) acc = acc or 0 if n == 0 then return acc end return count(n - 1, acc + 1) end
`

function fuelPerPacket(body: string, stock: boolean): number {
  const script = join(dir, `s-${Math.random().toString(36).slice(2)}.lua`)
  writeFileSync(script, `${PRELUDE}\nfunction on_packet(pkt) ${body} return ACCEPT end`)
  const r = psd(['bench', '--script', script, '--pcap', pcap, '--json', '--time', '50'], { env: { PSD_COUNT_HOOK: stock ? 'stock' : 'patched' } })
  assert.is(r.status, 0, r.stderr)
  const o = JSON.parse(r.stdout)
  assert.is(o.faults, 0)
  return o.fuel_per_packet
}

test('the patch applies to the wasm wasmoon ships, and the result is a valid module', () => {
  const glue = join(createRequire(import.meta.url).resolve('wasmoon'), '..', 'glue.wasm')
  const patched = patchCountHook(new Uint8Array(readFileSync(glue)))
  assert.ok(patched, 'the count hook patch found luaG_traceexec')
  const mod = new WebAssembly.Module(patched as Uint8Array<ArrayBuffer>)
  const names = WebAssembly.Module.exports(mod).map((e) => e.name)
  assert.ok(names.includes('psd_trace_frame') && names.includes('psd_trace_cache'))
})

test('a module that is not the expected build is left alone', () => {
  const tiny = Uint8Array.from([0, 0x61, 0x73, 0x6d, 1, 0, 0, 0])
  assert.is(patchCountHook(tiny), null)
})

for (const [name, body] of Object.entries(SHAPES)) {
  test(`${name}: the patched hook charges what Lua counts, -10 % to +25 %`, () => {
    const exact = fuelPerPacket(body, true), patched = fuelPerPacket(body, false)
    assert.ok(patched >= exact * 0.9 && patched <= exact * 1.25, `stock ${exact}, patched ${patched}`)
  })
}

test('a loop of long straight bodies runs out of fuel when Lua would (it is not charged per turn)', () => {
  // 1000 turns of ~60 instructions: ~60,000 instructions, against a budget of 20,000
  const script = join(dir, 'long-body.lua')
  const stmts = Array.from({ length: 30 }, (_, i) => `x = x + ${i} x = x ~ ${i}`).join(' ')
  writeFileSync(script, `function on_packet(pkt) local x = 0 for i = 1, 1000 do ${stmts} end return DROP end`)
  const r = psd(['--script', script, '--pcap', pcap, '--fuel', '20000'])
  assert.is(r.status, 0, r.stderr)
  assert.ok(r.logs.some((l) => /fuel budget exhausted \(20000 instructions\)/.test(l.msg ?? '')), r.stderr.slice(0, 400))
  assert.is(r.summary.packets, 40)
  assert.is(r.summary.faults, 40, 'every packet ran out of fuel')
  assert.is(r.summary.dropped, 0, 'no packet got as far as its DROP')
})

test.run()
