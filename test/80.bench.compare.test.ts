// The comparison benchmark stays honest (bench/compare/, docs/benchmarks.md): every engine gives
// the same verdict on every packet for every comparison filter. No timing is asserted here.
import { test } from 'uvu'
import * as assert from 'uvu/assert'
import { join } from 'node:path'
import { readFileSync } from 'node:fs'
import { execFileSync } from 'node:child_process'
import { tempDir } from './lib/psd.js'
import { makeMixedCapture } from './lib/packets.js'
import {
  FILTERS, ENGINES, EXTRA_ENGINES, LUA, ROOT, filterPath, loadPackets, createEngine, disagreements, preludeFiles, type Engine,
} from '../bench/compare/engines.js'

const dir = tempDir()
const pcap = join(dir, 'mixed.pcap')
makeMixedCapture(pcap, 600, 42)
const packets = loadPackets(pcap)
/** every engine a figure in docs/benchmarks.md comes from (the no-VM baseline accepts all) */
const engineNames = [...ENGINES, ...EXTRA_ENGINES.filter((e) => e !== 'baseline')]

test(`${LUA} is installed (CI installs Debian's lua5.4)`, () => {
  let v = ''
  try { v = execFileSync(LUA, ['-v'], { encoding: 'utf8' }) } catch (e) { assert.unreachable(`${LUA}: ${(e as Error).message}`) }
  assert.match(v, /^Lua 5\.4/)
})

test('the native shim loads the prelude files psd loads, in the same order', () => {
  const files = preludeFiles()
  assert.ok(files.length >= 5, files.join(','))
  assert.is(files[0], 'packet.lua')
  assert.is(files[files.length - 1], 'sandbox.lua')
  assert.match(readFileSync(join(ROOT, 'wasm', 'vm.ts'), 'utf8'), `'${files.join("', '")}'`)
})

for (const filter of FILTERS) {
  test(`${filter}: ${engineNames.join(', ')} agree on every verdict`, async () => {
    const engines: Engine[] = []
    try {
      for (const e of engineNames) engines.push(await createEngine(e, filter, packets))
      assert.equal(await disagreements(engines), [])
      const v = await engines[0].verdicts()
      assert.is(v.length, packets.count)
      assert.ok(v.every((x) => x === 0 || x === 1), 'only accept and drop, no faults')
      const drops = v.filter((x) => x === 0).length
      // the capture must exercise the filter: some drops (except accept-all), mostly accepts
      if (filter === 'accept-all') assert.is(drops, 0)
      else assert.ok(drops > 0 && drops < packets.count / 2, `${filter}: ${drops} drops of ${packets.count}`)
      // and a timed pass reports the same counts as the verdicts
      for (const e of engines) {
        const r = await e.pass()
        assert.equal([r.accepted, r.dropped, r.faults], [packets.count - drops, drops, 0], e.name)
      }
    } finally {
      for (const e of engines) await e.close()
    }
  })
}

test('a script that differs is caught: the check is not vacuous', async () => {
  // the native engine runs the filter file; psd given another script must disagree
  const { Psd, Native } = await import('../bench/compare/engines.js')
  const a = await Native.create('ip-tcp', packets)
  const b = await Psd.create('accept-all', packets)
  try {
    const d = await disagreements([a, b])
    assert.is(d.length, 1)
    assert.match(d[0], /differs from native on \d+ packets/)
  } finally {
    await a.close(); await b.close()
  }
  assert.ok(filterPath('ip-tcp').endsWith('ip-tcp.lua'))
})

test.run()
