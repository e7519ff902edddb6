// Packets made by the host (wasm/vm.ts makePacket writes each next packet's table in place) and
// packets made by the batch loop (packet.lua P.run, when the layout probe fails or is turned off
// with PSD_HOST_PACKETS=0) are the same: the same slots, metadata, API, verdicts, marks, edits,
// faults, and a packet is dead after its call either way.
import { test } from 'uvu'
import * as assert from 'uvu/assert'
import { join, dirname } from 'node:path'
import { fileURLToPath } from 'node:url'
import { LuaVM, BatchOutput, FAULT_KINDS } from '../wasm/vm.js'
import { loadBatches } from '../src/cli/bench.js'

const root = join(dirname(fileURLToPath(import.meta.url)), '..', '..')
const { batches } = loadBatches(join(root, 'test', 'fixtures', 'sample.pcap'))

async function make(source: string, hostPackets: boolean, extra: Partial<{ fuel: number; memory: number }> = {}) {
  const logs: string[] = []
  const old = process.env.PSD_HOST_PACKETS
  if (hostPackets) delete process.env.PSD_HOST_PACKETS
  else process.env.PSD_HOST_PACKETS = '0'
  try {
    const vm = await LuaVM.create({
      scriptPath: 'host-packets.lua', source, fuel: extra.fuel ?? 1_000_000, memory: extra.memory ?? 16 << 20, timeoutMs: 1000,
      host: { clock: 'capture', log: (_l, msg) => logs.push(msg), stat: () => {} },
    })
    return { vm, logs }
  } finally {
    if (old === undefined) delete process.env.PSD_HOST_PACKETS
    else process.env.PSD_HOST_PACKETS = old
  }
}

async function run(source: string, hostPackets: boolean, extra: Partial<{ fuel: number; memory: number }> = {}) {
  const { vm, logs } = await make(source, hostPackets, extra)
  const out = new BatchOutput(128)
  const results: unknown[] = []
  for (const b of batches) {
    vm.runBatch(b.bytes, b.count, out)
    for (let k = 0; k < b.count; k++) {
      results.push([out.verdict[k], out.mark[k], FAULT_KINDS[out.fault[k]], out.message[k], out.data[k] && Buffer.from(out.data[k]!).toString('hex')])
    }
  }
  const layout = (vm as any).pktLayout as boolean
  vm.close()
  return { results, logs, layout }
}

test('the layout probe accepts the wasm psd ships with, and PSD_HOST_PACKETS=0 turns it off', async () => {
  assert.is((await run('function on_packet() end', true)).layout, true)
  assert.is((await run('function on_packet() end', false)).layout, false)
})

const SCRIPT = `
local kept, n = nil, 0
function on_packet(pkt)
  n = n + 1
  local slots = {}
  for i = 1, 7 do
    local v = rawget(pkt, i)
    slots[i] = (math.type(v) or type(v)) .. ':' .. (type(v) == 'string' and 'bytes' or tostring(v))
  end
  local ip = pkt.ip
  print(n, table.concat(slots, ' '), pkt.len, pkt.origlen, pkt.id, pkt.mark, pkt.time, pkt.family, pkt.hook,
    pkt.queue, pkt.uid, pkt.indev, tostring(pkt), #pkt, pkt:bytes(0, 8), ip and ip.src, ip and ip.ttl,
    pkt.tcp and pkt.tcp.dstport, pkt.udp and pkt.udp.dstport)
  if kept then
    local ok, err = pcall(function() return kept.len end)
    print('kept', ok, err)
  end
  kept = pkt
  if n % 7 == 0 then pkt.mark = n end
  if n % 11 == 0 then pkt:set_u8(1, n & 0xff) end
  if n % 13 == 0 then error('boom ' .. n) end
  if n % 17 == 0 then return 'nonsense' end
  if n % 19 == 0 then return ACCEPT, n + 1 end
  if n % 5 == 0 then return DROP end
  if n % 23 == 0 then return queue(3) end
  return ACCEPT
end`

test('host-made packets and P.run-made packets: same slots, fields, verdicts, marks, edits, faults', async () => {
  const a = await run(SCRIPT, true), b = await run(SCRIPT, false)
  assert.ok(a.results.length > 300)
  assert.equal(a.logs, b.logs)
  assert.equal(a.results, b.results)
  assert.ok(a.logs.some((l) => /^kept\tfalse\t.*packet used after its call returned/.test(l)), 'a kept packet is dead')
  assert.ok(a.logs.every((l) => l.startsWith('kept') || /\tstring:bytes integer:\d+ integer:\d+ boolean:false boolean:false integer:\d+ boolean:false\t/.test(l)), a.logs[0])
})

test('offline timers fire between the same two packets either way', async () => {
  const script = `local fired = 0
timer.every(5, function() fired = fired + 1; print('timer', fired, time.now()) end)
function on_packet(pkt)
  print('packet', pkt.id, pkt.time, fired)
  if pkt.id % 4 == 0 then timer.after(1, function() print('after', pkt and 1) end) end
  if pkt.id % 9 == 0 then return DROP end
end`
  const a = await run(script, true), b = await run(script, false)
  assert.equal(a.logs, b.logs)
  assert.equal(a.results, b.results)
  assert.ok(a.logs.filter((l) => l.startsWith('timer')).length > 20, 'timers fired')
  // every timer line comes before the first packet at or after its time
  let last = 0n
  for (const l of a.logs) {
    const f = l.split('\t')
    if (f[0] === 'timer') assert.ok(BigInt(f[2]) >= last, l)
    if (f[0] === 'packet') last = BigInt(f[2])
  }
})

test('fuel: a packet that runs out faults alone, with host-made packets as with P.run-made ones', async () => {
  const script = `local n = 0
function on_packet(pkt)
  n = n + 1
  if n % 3 == 0 then while true do end end
  local s = 0
  for i = 1, 200 do s = s + i end
  return ACCEPT
end`
  const a = await run(script, true, { fuel: 5000 }), b = await run(script, false, { fuel: 5000 })
  const kinds = (r: typeof a) => r.results.map((x: any) => x[2])
  assert.equal(kinds(a), kinds(b))
  assert.ok(kinds(a).every((k, i) => (k === 'fuel') === ((i + 1) % 3 === 0)))
})

test.run()
