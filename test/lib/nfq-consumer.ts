// A JS NFQUEUE consumer on the addon, run by the 50.nfqueue tests inside a network namespace
// (`ip netns exec NS node dist/test/lib/nfq-consumer.js '{"queue":0,...}'`) and by the drain
// benchmark. It prints JSON lines on stdout: {"event":"ready"} once bound, then {"event":"done",...}
// or {"event":"error",...}. Always bounded: it stops after `limit` packets, or `timeoutMs`, or
// `idleMs` without packets once some have arrived.
import {
  NfQueue, NfQueueError, NF_ACCEPT, NF_DROP, NF_QUEUE_NR, MARK_UNCHANGED, RV, RV_SHOWN, RV_SLOTS, type NfQueueOptions,
} from '../../src/live/nfqueue.js'
import { HDR, OFF } from '../../src/batch-format.js'

interface Config extends NfQueueOptions {
  /** accept | dropx (drop UDP whose payload starts with 'X') | mark (accept with mark) | edit ('A' -> 'B') | queue (to queue `to`) */
  mode?: 'accept' | 'dropx' | 'mark' | 'edit' | 'queue'
  markValue?: number
  to?: number
  limit?: number
  timeoutMs?: number
  idleMs?: number
  /** Do not read for this long after binding (let the queue fill). */
  pauseMs?: number
  /** Records kept for the report (first n). */
  keep?: number
  /** 'reverse': give each received batch its verdicts one call per packet, last packet first. */
  order?: 'batch' | 'reverse'
  /** 'records': send with verdictRecords (the live loop's plain path; not with mode 'edit') */
  api?: 'verdicts' | 'records'
  /** with api 'records': every badEvery-th packet that would be accepted gets code 7, which the
   *  kernel does not take (verdictRecords must send faultCode instead) */
  badEvery?: number
  faultCode?: number
}

const cfg: Config = JSON.parse(process.argv[2] ?? '{}')
const out = (o: object) => process.stdout.write(JSON.stringify(o) + '\n')

let q: NfQueue
try {
  q = NfQueue.open(cfg)
} catch (e) {
  const err = e as NfQueueError
  out({ event: 'error', code: err.code, errno: err.errno, message: err.message })
  process.exit(3)
}

const limit = cfg.limit ?? 100_000
const buf = new Uint8Array(new SharedArrayBuffer(Math.max(8 << 20, q.maxRecord * 2)))
const dv = new DataView(buf.buffer)
const ids = new Uint32Array(1024)
const codes = new Uint32Array(1024)
const marks = new Uint32Array(1024)
const offsets = new Uint32Array(1024)
const lengths = new Uint32Array(1024)
const edit = new Uint8Array(1 << 22)
const seen: object[] = []
let packets = 0, accepted = 0, dropped = 0, first = 0, last = 0
// api 'records': the verdicts and marks as the live loop holds them, and what the addon counted
const vcodes = new Int32Array(1024), vmarks = new Float64Array(1024), vfault = new Uint8Array(1024)
const counted = new Float64Array(RV_SLOTS)
let plain = 0, invalid = 0
const shown: { id: number; code: number }[] = []
// what the records said, in aggregate
const agg = { gso: 0, csumNotReady: 0, maxLen: 0, overMtu: 0, families: {} as Record<number, number>,
  uids: [] as number[], gids: [] as number[] }
let timer: NodeJS.Timeout | undefined
let cpuFirst: NodeJS.CpuUsage | undefined, cpuLast: NodeJS.CpuUsage | undefined

function udpPayloadStart(pos: number, len: number): number {
  const d = pos + HDR
  if (len < 28 || buf[d] >> 4 !== 4 || buf[d + 9] !== 17) return -1
  const ihl = (buf[d] & 15) * 4
  return len > ihl + 8 ? ihl + 8 : -1
}

function drain() {
  let n
  while (packets < limit && (n = q.receive(buf, Math.min(cfg.batch ?? 64, limit - packets))) > 0) {
    if (!first) {
      first = performance.now()
      cpuFirst = process.cpuUsage()
    }
    let pos = 0, editPos = 0
    const useEdit = cfg.mode === 'edit'
    for (let i = 0; i < n; i++) {
      const len = dv.getUint32(pos + OFF.len, true)
      ids[i] = dv.getUint32(pos + OFF.id, true)
      codes[i] = NF_ACCEPT
      marks[i] = MARK_UNCHANGED
      lengths[i] = 0
      if (seen.length < (cfg.keep ?? 5)) {
        seen.push({
          id: ids[i], len, origlen: dv.getUint32(pos + OFF.origlen, true), mark: dv.getUint32(pos + OFF.mark, true),
          sec: dv.getUint32(pos + OFF.sec, true), family: buf[pos + OFF.family], hook: buf[pos + OFF.hook],
          flags: buf[pos + OFF.flags], queue: dv.getUint32(pos + OFF.queue, true), uid: dv.getUint32(pos + OFF.uid, true),
          gid: dv.getUint32(pos + OFF.gid, true), indev: dv.getUint32(pos + OFF.indev, true),
          outdev: dv.getUint32(pos + OFF.outdev, true),
        })
      }
      const flags = buf[pos + OFF.flags], fam = buf[pos + OFF.family]
      if (flags & 1) agg.gso++
      if (flags & 2) agg.csumNotReady++
      if (len > agg.maxLen) agg.maxLen = len
      if (len > 1500) agg.overMtu++
      agg.families[fam] = (agg.families[fam] ?? 0) + 1
      const uid = dv.getUint32(pos + OFF.uid, true), gid = dv.getUint32(pos + OFF.gid, true)
      if (!agg.uids.includes(uid) && agg.uids.length < 8) agg.uids.push(uid)
      if (!agg.gids.includes(gid) && agg.gids.length < 8) agg.gids.push(gid)
      const p = udpPayloadStart(pos, len)
      if (cfg.mode === 'dropx' && p >= 0 && buf[pos + HDR + p] === 0x58) codes[i] = NF_DROP
      else if (cfg.mode === 'mark') marks[i] = (cfg.markValue ?? 0x20) >>> 0
      else if (cfg.mode === 'queue') codes[i] = NF_QUEUE_NR(cfg.to ?? 1)
      else if (useEdit && p >= 0 && buf[pos + HDR + p] === 0x41) {
        // 'A' -> 'B', and UDP checksum 0 (none, valid on IPv4): the IP header is unchanged.
        edit.set(buf.subarray(pos + HDR, pos + HDR + len), editPos)
        edit[editPos + p] = 0x42
        const ihl = p - 8
        edit[editPos + ihl + 6] = 0
        edit[editPos + ihl + 7] = 0
        offsets[i] = editPos
        lengths[i] = len
        editPos += len
      }
      if (cfg.api === 'records') {
        if (codes[i] === NF_ACCEPT && cfg.badEvery && ++plain % cfg.badEvery === 0) codes[i] = 7
        vcodes[i] = codes[i]
        vmarks[i] = marks[i] === MARK_UNCHANGED ? -1 : marks[i]
      } else if (codes[i] === NF_DROP) dropped++
      else accepted++
      pos += dv.getUint32(pos + OFF.reclen, true)
    }
    packets += n
    const payload = useEdit ? { data: edit, offsets, lengths } : null
    if (cfg.api === 'records') {
      q.verdictRecords(buf, n, vcodes, vmarks, vfault, cfg.faultCode ?? NF_DROP, counted)
      accepted += counted[RV.accepted] + counted[RV.other]
      dropped += counted[RV.dropped]
      invalid += counted[RV.invalid]
      for (let i = 0; i < Math.min(counted[RV.invalid], RV_SHOWN) && shown.length < 8; i++) {
        shown.push({ id: counted[RV.shown + 2 * i], code: counted[RV.shown + 2 * i + 1] })
      }
    } else if (cfg.order === 'reverse') {
      for (let i = n - 1; i >= 0; i--) {
        q.verdicts({ count: 1, ids: ids.subarray(i), codes: codes.subarray(i), marks: marks.subarray(i),
          payload: payload && { data: edit, offsets: offsets.subarray(i), lengths: lengths.subarray(i) } })
      }
    } else {
      q.verdicts({ count: n, ids, codes, marks, payload })
    }
    last = performance.now()
    cpuLast = process.cpuUsage(cpuFirst)
  }
  if (packets >= limit) finish()
  else armIdle()
}

function armIdle() {
  if (!first || !cfg.idleMs) return
  if (timer) clearTimeout(timer)
  timer = setTimeout(finish, cfg.idleMs)
}

let finished = false
function finish() {
  if (finished) return
  finished = true
  q.onReadable(null)
  // A last look for stragglers after a stop, then report.
  const stats = q.stats()
  const kernel = q.kernelCounters()
  q.close({ settle: NF_ACCEPT })
  out({
    event: 'done', packets, accepted, dropped, invalid, shown, seconds: (last - first) / 1000,
    pps: last > first ? Math.round(packets / ((last - first) / 1000)) : 0,
    cpu_us_per_packet: cpuLast && packets ? +((cpuLast.user + cpuLast.system) / packets).toFixed(3) : 0,
    stats, kernel, seen, agg,
  })
  process.exit(0)
}

process.on('SIGTERM', finish)
setTimeout(finish, cfg.timeoutMs ?? 10_000).unref()
out({ event: 'ready', portid: q.portid, maxRecord: q.maxRecord })
setTimeout(() => q.onReadable(drain), cfg.pauseMs ?? 0)
