// Runs a Lua script over IP packets inside this process, straight through wasm/vm.ts's LuaVM
// (no CLI, no capture file): what the protocol-object tests need to look at decoded fields.
// Whatever the script prints is collected; a packet's output is the lines printed during its
// call. Records are laid end to end in one batch, exactly as the engine does, so a decoder that
// read past its packet would see the next record: tests use `fill` and `neighbours` to vary
// those bytes.
import { LuaVM, BatchOutput, MAX_BATCH_BYTES, FAULT_KINDS } from '../../wasm/vm.js'
import { writeRecord, HDR } from '../../src/batch-format.js'

export interface PacketResult {
  /** Lines the script printed while this packet was handled. */
  lines: string[]
  verdict: number
  fault: string | null
  message: string | null
  /** The packet as the script left it when it edited it (before psd's fix-up), else null. */
  data: Uint8Array | null
}

export interface RunOptions {
  /** Byte value (or generator) the batch buffer is filled with before the records are written. */
  fill?: number | ((i: number) => number)
  /** Metadata of each record (origlen, mark, sec, nsec...) beyond the defaults. */
  meta?: (i: number) => { origlen?: number; mark?: number; sec?: number; nsec?: number; id?: number }
}

export class ProtoVM {
  private constructor(readonly vm: LuaVM, private sink: { lines: string[] }) {}

  static async create(source: string, o: { fuel?: number; memory?: number; scriptPath?: string; entry?: string } = {}): Promise<ProtoVM> {
    const sink = { lines: [] as string[] }
    const vm = await LuaVM.create({
      scriptPath: o.scriptPath ?? 'test.lua', source, entry: o.entry,
      fuel: o.fuel ?? 1_000_000, memory: o.memory ?? (32 << 20), timeoutMs: 5000,
      host: { log(_level: number, msg: string) { sink.lines.push(msg) }, stat() {}, clock: 'capture' },
    })
    return new ProtoVM(vm, sink)
  }

  /** Runs the packets (in batches as large as the VM takes); one result per packet. */
  run(packets: Uint8Array[], o: RunOptions = {}): PacketResult[] {
    const results: PacketResult[] = []
    const batch = new Uint8Array(MAX_BATCH_BYTES)
    const view = new DataView(batch.buffer)
    let i = 0
    while (i < packets.length) {
      if (o.fill !== undefined) {
        if (typeof o.fill === 'number') batch.fill(o.fill)
        else for (let k = 0; k < batch.length; k++) batch[k] = o.fill(k) & 0xff
      }
      let pos = 0, count = 0
      while (i < packets.length && count < 256) {
        const p = packets[i]
        if (pos + HDR + p.length + 4 > batch.length) break
        const m = o.meta?.(i) ?? {}
        pos = writeRecord(batch, view, pos, p, {
          id: m.id ?? i + 1, origlen: m.origlen ?? p.length, mark: m.mark ?? 0, sec: m.sec ?? 1_700_000_000 + i, nsec: m.nsec ?? 0,
          family: p.length && p[0] >> 4 === 6 ? 6 : 4,
        })
        count++; i++
      }
      if (count === 0) throw new Error(`packet ${i} does not fit in a batch`)
      const out = new BatchOutput(count)
      // A packet's lines end with the terminator wrapScript() prints (also after a script error);
      // a packet stopped by a budget never prints it, and gets no lines of its own.
      this.sink.lines = []
      this.vm.runBatch(batch.subarray(0, pos), count, out)
      let k = 0
      let cur: string[] = []
      for (const line of this.sink.lines) {
        if (line !== '\u0001end') { cur.push(line); continue }
        while (k < count && out.fault[k] && out.fault[k] !== 4) results.push(this.result(out, k++, []))
        results.push(this.result(out, k++, cur))
        cur = []
      }
      while (k < count) results.push(this.result(out, k++, cur.splice(0)))
    }
    return results
  }

  private result(out: BatchOutput, k: number, lines: string[]): PacketResult {
    const f = out.fault[k]
    return {
      lines, verdict: out.verdict[k], fault: f ? FAULT_KINDS[f] ?? String(f) : null,
      message: out.message[k], data: out.data[k] ? Uint8Array.from(out.data[k]!) : null,
    }
  }

  close(): void { this.vm.close() }
}

/**
 * Wraps a script body so that every packet's output ends with a terminator line, and faults
 * still split correctly: `body` defines `handle(pkt)` returning the verdict.
 */
export function wrapScript(body: string): string {
  return `${body}
function on_packet(pkt)
  local ok, v, m = pcall(handle, pkt)
  print('\\1end')
  if not ok then error(v, 0) end
  return v, m
end
`
}

/** Lua source of a function ser(v) that turns any value (tables too) into deterministic text. */
export const SER_LUA = String.raw`
local function ser(v, depth)
  depth = depth or 0
  local t = type(v)
  if t == 'string' then
    local q = string.format('%q', v):gsub('\\\n', '\\n'):gsub('[\128-\255]', function(c) return '\\' .. c:byte() end)
    return q
  elseif t == 'table' then
    if depth > 4 then return '{...}' end
    local keys = {}
    for k in pairs(v) do keys[#keys + 1] = k end
    table.sort(keys, function(a, b) return tostring(a) < tostring(b) end)
    local parts = {}
    for _, k in ipairs(keys) do parts[#parts + 1] = tostring(k) .. '=' .. ser(v[k], depth + 1) end
    return '{' .. table.concat(parts, ',') .. '}'
  end
  return tostring(v)
end
`
