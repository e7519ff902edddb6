// A/B timing of the VM's per-packet cost between two or more builds of psd, in one process,
// interleaved, so both see the same machine load (the box is shared: runs seconds apart differ
// by more than the changes being measured).
//
//   node dist/bench/vm-ab.js [--dirs /tmp/base,/tmp/new] [--scripts a.lua,b.lua] [--rounds 200]
//       [--packets 20000]
//
// Each dir is a built checkout (dist/wasm/vm.js, wasm/lua/). Every round runs one pass of each
// build's VM over the same batches (order alternating round by round) and notes CPU ns per
// packet (process.cpuUsage: user+system, this thread being the only busy one). Passes are short
// (~15 ms) so the two builds see the same load; other work on the box only adds time, so the
// low percentiles (p10, p25) are the steadiest figures. Also reported: the median of the
// per-round ratios to the first build.
// Memory held after the first pass is printed too.
import { parseArgs } from 'node:util'
import { existsSync, readFileSync } from 'node:fs'
import { join, resolve } from 'node:path'
import { tmpdir } from 'node:os'
import { makeMixedCapture } from '../test/lib/packets.js'
import { loadBatches } from '../src/cli/bench.js'

const { values } = parseArgs({
  options: {
    dirs: { type: 'string' },
    scripts: { type: 'string', default: 'bench/live-accept-all.lua,bench/compare/filters/ip-tcp.lua' },
    rounds: { type: 'string', default: '200' },
    packets: { type: 'string', default: '20000' },
  },
})
const here = resolve(join(import.meta.dirname, '..', '..'))
const dirs = values.dirs ? values.dirs.split(',') : [here]
const rounds = Number(values.rounds), N = Number(values.packets)
const pcap = join(tmpdir(), `psd-vm-ab-${N}.pcap`)
if (!existsSync(pcap)) makeMixedCapture(pcap, N, 1)
const { batches, packets } = loadBatches(pcap)

const med = (a: number[]) => { const s = [...a].sort((x, y) => x - y); return s[Math.floor(s.length / 2)] }
const q = (a: number[], p: number) => { const s = [...a].sort((x, y) => x - y); return s[Math.min(s.length - 1, Math.floor(p * s.length))] }

for (const script of values.scripts!.split(',')) {
  const source = readFileSync(script, 'utf8')
  const vms: any[] = []
  for (const d of dirs) {
    const mod = await import(join(resolve(d), 'dist', 'wasm', 'vm.js'))
    const vm = await mod.LuaVM.create({
      scriptPath: script, source, fuel: 1_000_000, memory: 16 << 20, timeoutMs: 1000,
      host: { clock: 'capture', log: () => {}, stat: () => {} },
    })
    const out = new mod.BatchOutput(128)
    let fuel = 0
    vm.measureFuel = true
    const verdicts: number[] = []
    for (const b of batches) {
      vm.runBatch(b.bytes, b.count, out)
      for (let k = 0; k < b.count; k++) { fuel += out.fuel[k]; verdicts.push(out.verdict[k]) }
    }
    vm.measureFuel = false
    vms.push({ dir: d, vm, out, fuel: fuel / packets, mem: vm.memoryUsed, verdicts, ns: [] as number[] })
  }
  for (const v of vms) if (v.verdicts.join() !== vms[0].verdicts.join()) throw new Error(`${v.dir}: verdicts differ`)
  // warm-up
  for (const v of vms) for (let i = 0; i < 5; i++) for (const b of batches) v.vm.runBatch(b.bytes, b.count, v.out)
  // one pass per build in turn, the order alternating, `rounds` passes each
  for (let r = 0; r < rounds; r++) {
    const order = r % 2 ? [...vms].reverse() : vms
    for (const v of order) {
      const c0 = process.cpuUsage()
      for (const b of batches) v.vm.runBatch(b.bytes, b.count, v.out)
      const c = process.cpuUsage(c0)
      v.ns.push(((c.user + c.system) * 1000) / packets)
    }
  }
  console.log(`${script}: ${packets} packets, ${rounds} rounds`)
  for (const v of vms) {
    const ratios = v.ns.map((x: number, i: number) => x / vms[0].ns[i])
    console.log(`  ${v.dir.padEnd(14)} p10 ${q(v.ns, 0.1).toFixed(0)}  p25 ${q(v.ns, 0.25).toFixed(0)}  median ${med(v.ns).toFixed(0)} ns/packet` +
      `  paired ratio median ${med(ratios).toFixed(3)}  fuel ${v.fuel.toFixed(1)}  mem ${v.mem}`)
    v.vm.close()
  }
}
