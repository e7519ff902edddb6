// The thread that runs one tenant's VM (started by tenant-worker.ts).
//
// Inside it, the tenant is the very same engine that runs inline (tenant.ts Tenant, with its
// fault policy, rebuilds and script services); this file only connects it to the main thread:
// commands run one at a time; a batch is posted and answered through the shared channel (its
// records, each packet's result the moment it is final, and the wake-ups: right after a batch
// this thread waits for the next one blocking, for a few milliseconds, then with
// Atomics.waitAsync, so its event loop stays free for timers and messages between bursts); the
// other commands arrive as messages; log lines go straight to stderr from here. After each batch's
// reply the deferred calls run (off the packet path, while the main thread already hands the
// verdicts on).
import { parentPort, workerData, receiveMessageOnPort } from 'node:worker_threads'
import { readlinkSync } from 'node:fs'
import { Tenant, BatchOutput, LoadError } from './tenant.js'
import { Logger } from '../log.js'
import { wasmMemoryCap } from '../../wasm/vm.js'
import { provideLuaWasm } from '../../wasm/loader.js'
import { Channel, C, CUR_IDLE, CUR_CALLBACK, CHANNEL_PACKETS, REPLY_FAST, REPLY_MESSAGE, waitAsync } from './channel.js'
import type { WorkerInit, WorkerCommand, WorkerReply, Snapshot } from './tenant-worker.js'

const port = parentPort!
const init = workerData as WorkerInit
const ch = new Channel(init.sab)
try { ch.ctl[C.tid] = Number(readlinkSync('/proc/thread-self').split('/').pop()) } catch { /* no /proc: the clock alone */ }
provideLuaWasm(wasmMemoryCap(init.cfg.memory), init.module)
const send = (m: WorkerReply) => port.postMessage(m)

// The VM writes verdict, mark, fault and fuel straight into the channel; edited bytes and fault
// messages are JS values, copied into the channel by onPacket as each packet finishes.
const out = new BatchOutput(CHANNEL_PACKETS)
out.verdict = ch.verdict
out.mark = ch.mark
out.fault = ch.fault
out.fuel = ch.fuel
let dataUsed = 0, msgUsed = 0, extra = 0
let overflowData: [number, Uint8Array][] = []
let overflowMsg: [number, string][] = []

function onPacket(k: number): void {
  const d = out.data[k]
  if (d !== null || out.message[k] !== null) extra = 1
  if (d !== null) {
    if (dataUsed + d.length <= ch.data.length) {
      ch.data.set(d, dataUsed)
      ch.dataOff[k] = dataUsed
      ch.dataLen[k] = d.length
      dataUsed += d.length
    } else {
      ch.dataLen[k] = -2
      overflowData.push([k, d])
    }
  }
  const m = out.message[k]
  if (m !== null) {
    const b = Buffer.from(m, 'utf8')
    if (msgUsed + b.length <= ch.msg.length) {
      ch.msg.set(b, msgUsed)
      ch.msgOff[k] = msgUsed
      ch.msgLen[k] = b.length
      msgUsed += b.length
    } else {
      ch.msgLen[k] = -2
      overflowMsg.push([k, m])
    }
  }
}

let tenant: Tenant
let statsDirty = true
let lastSnap = 0, lastCounters = -1

/** A number that changes whenever a counter does (they only ever grow). */
function countersSum(): number {
  const c = tenant.counters
  let n = c.packets + c.accepted + c.dropped + c.modified + c.rebuilds
  for (const k in c.faults) n += c.faults[k]
  const sc = tenant.services.counters as unknown as Record<string, number>
  for (const k in sc) n += sc[k]
  return n
}

/**
 * The tenant's counters for the main thread. After a batch only when they changed (or every
 * SNAP_MS, for the memory figure): cloning them into every reply would cost more than many a batch.
 */
function snapshot(always = true): Snapshot | undefined {
  const now = performance.now()
  const counters = countersSum()
  if (!always && !statsDirty && counters === lastCounters && now - lastSnap < SNAP_MS) return undefined
  lastSnap = now
  lastCounters = counters
  const s: Snapshot = {
    counters: tenant.counters,
    services: tenant.services.counters as unknown as Record<string, number>,
    memory: tenant.memoryUsed,
  }
  if (statsDirty) { s.stats = [...tenant.stats]; statsDirty = false }
  return s
}
const SNAP_MS = 100

/** Shared buffers of main's that batches lie in, by id (tenant-worker.ts placeInput). */
const sharedInputs = new Map<number, SharedArrayBuffer>()

/** The records of the batch posted: in ch.input, or where C.src and C.srcOff say. */
function batchInput(bytes: number): Uint8Array {
  const src = ch.ctl[C.src]
  if (src === 0) return ch.input.subarray(0, bytes)
  let sab = sharedInputs.get(src)
  while (sab === undefined) {
    // main sent the buffer before it posted the batch: the message is waiting on the port
    const m = receiveMessageOnPort(init.sharePort)
    if (m === undefined) throw new Error(`the batch lies in shared buffer ${src}, which main never sent`)
    const { id, sab: b } = m.message as { id: number; sab: SharedArrayBuffer }
    sharedInputs.set(id, b)
    sab = sharedInputs.get(src)
  }
  return new Uint8Array(sab, ch.ctl[C.srcOff], bytes)
}

/** Runs the batch command `id` posted in the channel (C.count records, batchInput()). */
async function runBatch(id: number): Promise<void> {
  const fuel = Atomics.load(ch.ctl, C.fuel) === 1
  if (fuel !== fuelOn) { fuelOn = fuel; tenant.measureFuel(fuel) }
  const count = ch.ctl[C.count], bytes = ch.ctl[C.bytes]
  Atomics.store(ch.ctl, C.cur, id)
  let reply: WorkerReply | null = null
  let ok = false
  try {
    dataUsed = 0; msgUsed = 0; extra = 0
    if (overflowData.length) overflowData = []
    if (overflowMsg.length) overflowMsg = []
    ch.dataLen.fill(-1, 0, count)
    ch.msgLen.fill(-1, 0, count)
    await tenant.run(batchInput(bytes), count, out, ch.ns)
    ok = true
    const snap = snapshot(false)
    if (snap !== undefined || overflowData.length || overflowMsg.length) reply = { t: 'reply', id, snap, overflowData, overflowMsg }
  } catch (e) {
    reply = { t: 'reply', id, snap: snapshot(), error: (e as Error)?.message ?? String(e), kind: e instanceof LoadError ? e.kind : 'crash' }
  }
  // The channel first (main may read it as soon as the message arrives), then the message when
  // there is one, then the wake-up: main, told a message follows, waits for it.
  Atomics.store(ch.ctl, C.extra, extra)
  Atomics.store(ch.ctl, C.reply, reply ? REPLY_MESSAGE : REPLY_FAST)
  if (reply) send(reply)
  Atomics.store(ch.ctl, C.done, id)
  Atomics.notify(ch.ctl, C.done)
  try {
    // the deferred calls of this batch, after its verdicts are on their way
    if (ok) {
      Atomics.store(ch.ctl, C.cur, CUR_CALLBACK)
      await tenant.afterBatch()
    }
  } catch (e) {
    log.error(`after a batch: ${(e as Error)?.message ?? e}`)
  } finally {
    Atomics.store(ch.ctl, C.cur, CUR_IDLE)
  }
}

/** Id of the last batch command taken from the channel. */
let lastCmd = 0

/** Waits (without blocking the event loop) for main to post a batch command. */
function listen(): void {
  const r = waitAsync(ch.ctl, C.cmd, lastCmd)
  if (r.async) void r.value.then(onBatch)
  else setImmediate(onBatch) // posted meanwhile: take it after a turn of the event loop
}

/** Batches run in the same chain as the message commands: one command at a time. */
function onBatch(): void {
  chain = chain.then(serveBatches)
}

/**
 * After a batch the worker waits for the next one blocking (Atomics.wait) for up to HOT_WAIT_MS:
 * a wake-up through the event loop (waitAsync) costs tens of microseconds each way, a futex
 * wake-up a few, and packets wait for it. It goes back to its event loop (messages, the log)
 * when none comes by then, after HOT_MAX_MS of taking batches this way, and before the script's
 * next timer is due.
 */
const HOT_WAIT_MS = 5
const HOT_MAX_MS = 20

async function serveBatches(): Promise<void> {
  const start = performance.now()
  for (;;) {
    let id = Atomics.load(ch.ctl, C.cmd)
    if (id === lastCmd) {
      const wait = Math.min(HOT_WAIT_MS, HOT_MAX_MS - (performance.now() - start), msToNextTimer())
      if (wait <= 0 || Atomics.wait(ch.ctl, C.cmd, lastCmd, wait) === 'timed-out') break
      id = Atomics.load(ch.ctl, C.cmd)
      if (id === lastCmd) break
    }
    lastCmd = id
    await runBatch(id)
  }
  listen()
}

/** Milliseconds until the script's next timer is due (Infinity: none; offline timers fire inside batches). */
function msToNextTimer(): number {
  const due = init.clock === 'real' ? tenant.nextTimerDue : null
  return due === null ? Infinity : Number(due - process.hrtime.bigint()) / 1e6
}

async function handle(m: WorkerCommand): Promise<void> {
  Atomics.store(ch.ctl, C.cur, m.id)
  try {
    switch (m.c) {
      case 'stop':
        tenant.stop()
        send({ t: 'reply', id: m.id, snap: snapshot() })
        return
      case 'handoff': {
        const state = await tenant.handOff()
        send({ t: 'reply', id: m.id, snap: snapshot(), value: state })
        return
      }
      case 'takeover':
        await tenant.takeOver(m.state)
        send({ t: 'reply', id: m.id, snap: snapshot() })
        return
      case 'retire':
        tenant.retire()
        send({ t: 'reply', id: m.id, snap: snapshot() })
        return
    }
  } catch (e) {
    send({ t: 'reply', id: m.id, snap: snapshot(), error: (e as Error)?.message ?? String(e), kind: e instanceof LoadError ? e.kind : 'crash' })
  } finally {
    Atomics.store(ch.ctl, C.cur, CUR_IDLE)
  }
}

let chain = Promise.resolve()
let fuelOn = init.measureFuel
let log: Logger

async function main(): Promise<void> {
  log = new Logger(init.log.opts, init.log.base)
  const forward = init.svc.sender
    ? { send: (packet: Uint8Array, timeNs: bigint) => send({ t: 'send', packet, timeNs }), close() {} }
    : undefined
  try {
    tenant = await Tenant.start(init.cfg, log, init.clock,
      { clockStart: init.svc.clockStart, limits: init.svc.limits, sender: forward },
      { inline: true, source: init.source, progress: ch.progress, onPacket })
  } catch (e) {
    send({ t: 'load-error', message: (e as Error)?.message ?? String(e), kind: e instanceof LoadError ? e.kind : 'crash' })
    return
  }
  // stats carried over from the workers before this one (a rebuild keeps counting)
  for (const [k, v] of init.stats) tenant.stats.set(k, (tenant.stats.get(k) ?? 0) + v)
  const set = tenant.stats.set.bind(tenant.stats)
  tenant.stats.set = (k, v) => { statsDirty = true; return set(k, v) }
  if (init.measureFuel) tenant.measureFuel(true)
  Atomics.store(ch.ctl, C.cur, CUR_IDLE)
  send({ t: 'ready', snap: snapshot()! })
  port.on('message', (m: WorkerCommand) => { chain = chain.then(() => handle(m)) })
  listen()
}

void main()
