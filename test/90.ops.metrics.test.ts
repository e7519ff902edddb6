// The metrics page (API.md section 9 names): served over HTTP, parsed by a strict parser of
// the text format (test/lib/prom-text.ts) and by the official Prometheus Python client's parser
// (Debian's python3-prometheus-client), with values checked against what the tenants did.
import { test } from 'uvu'
import * as assert from 'uvu/assert'
import { get, request } from 'node:http'
import { spawnSync } from 'node:child_process'
import { existsSync } from 'node:fs'
import type { AddressInfo } from 'node:net'
import { PsdMetrics } from '../src/ops/psd-metrics.js'
import { Registry, serveMetrics, parseListen, formatValue } from '../src/ops/metrics.js'
import { parseKernelCounters } from '../src/live/nfqueue.js'
import { tempDir } from './lib/psd.js'
import { quietLog, tenantCfg, memorySet, udpBatch, writeScript } from './lib/ops.js'
import { parsePrometheusText, valueOf } from './lib/prom-text.js'

const dir = tempDir('psd-ops-metrics-')
const log = quietLog()

function fetch(port: number, path: string, method = 'GET'): Promise<{ status: number; type: string; body: string }> {
  return new Promise((resolve, reject) => {
    const req = request({ host: '127.0.0.1', port, path, method }, (res) => {
      let body = ''
      res.setEncoding('utf8').on('data', (s) => { body += s }).on('end', () => resolve({ status: res.statusCode!, type: String(res.headers['content-type']), body }))
    })
    req.on('error', reject)
    req.end()
  })
}

const PY = '/usr/bin/python3'
function pythonParse(text: string): { ok: boolean; out: string; skipped?: string } {
  if (!existsSync(PY)) return { ok: true, out: '', skipped: 'no /usr/bin/python3' }
  const probe = spawnSync(PY, ['-c', 'import prometheus_client.parser'], { encoding: 'utf8' })
  if (probe.status !== 0) return { ok: true, out: '', skipped: 'python3-prometheus-client is not installed' }
  const r = spawnSync(PY, ['-c', `
import sys, json
from prometheus_client.parser import text_string_to_metric_families
out = {}
for f in text_string_to_metric_families(sys.stdin.read()):
    out[f.name] = {"type": f.type, "samples": len(f.samples)}
print(json.dumps(out))
`], { input: text, encoding: 'utf8' })
  return { ok: r.status === 0, out: r.status === 0 ? r.stdout : r.stderr }
}

test('the strict parser rejects what Prometheus rejects', () => {
  const ok = '# HELP a_total x\n# TYPE a_total counter\na_total{t="1"} 3\n'
  assert.ok(parsePrometheusText(ok).get('a_total'))
  for (const [bad, why] of [
    ['a_total 1', /newline/],
    ['# TYPE a counter\na{t="x} 1\n', /bad labels|not a sample/],
    ['# TYPE a counter\na{t="x"} 1\na{t="x"} 2\n', /repeated/],
    ['# TYPE a counter\na 1\n# TYPE b gauge\nb 1\na 2\n', /two places/],
    ['# TYPE a counter\na -1\n', /counter a is -1/],
    ['# TYPE a gauge\na{1x="y"} 1\n', /bad label name|bad labels/],
    ['# TYPE a gauge\na{x="\\q"} 1\n', /bad escape/],
    ['# TYPE h histogram\nh_bucket{le="1"} 2\nh_bucket{le="+Inf"} 1\nh_sum 1\nh_count 1\n', /not cumulative/],
    ['# TYPE h histogram\nh_bucket{le="1"} 1\nh_sum 1\nh_count 1\n', /no \+Inf/],
    ['# TYPE h histogram\nh_bucket{le="+Inf"} 2\nh_sum 1\nh_count 1\n', /!= _count/],
    ['# TYPE a counter\na one\n', /bad value|not a sample/],
    ['# TYPE a counter\na 1\n# TYPE a counter\n', /two places|after/],
  ] as const) {
    assert.throws(() => parsePrometheusText(bad), why, bad)
  }
})

test('registry: escaping, values and names', () => {
  const r = new Registry()
  const g = r.gauge('x_value', 'help with \\ and\nnewline', ['name'])
  g.set({ name: 'quote " back \\ nl \n end' }, 1.5)
  g.set({ name: 'inf' }, Infinity)
  g.set({ name: 'nan' }, NaN)
  const text = r.render()
  assert.match(text, /# HELP x_value help with \\\\ and\\nnewline/)
  assert.match(text, /x_value\{name="quote \\" back \\\\ nl \\n end"\} 1\.5/)
  const fams = parsePrometheusText(text)
  assert.is(valueOf(fams, 'x_value', { name: 'quote " back \\ nl \n end' }), 1.5)
  assert.is(valueOf(fams, 'x_value', { name: 'inf' }), Infinity)
  assert.is(formatValue(-Infinity), '-Inf')
  assert.throws(() => r.counter('x_value', 'again'), /twice/)
  assert.throws(() => r.counter('bad-name', 'x'), /bad metric name/)
  assert.throws(() => r.histogram('h', 'x', ['le'], [1]), /le/)
  assert.equal(parseListen('127.0.0.1:9464'), { host: '127.0.0.1', port: 9464 })
  assert.equal(parseListen('[::1]:80'), { host: '::1', port: 80 })
  assert.equal(parseListen(':9464'), { host: '0.0.0.0', port: 9464 })
  assert.throws(() => parseListen('localhost'), /HOST:PORT/)
})

test('the page: every API metric, values as the tenants did them, parsed by two parsers', async () => {
  const kernel = '    0   4242     3 2 65531     7     2       99  1\n    1   4243     0 2 65531     0     5      120  1\n   77   1111     0 2 65531     9     9        9  1\n'
  const metrics = new PsdMetrics(() => parseKernelCounters(kernel))
  const { set } = memorySet(log, metrics)
  metrics.watch(set)
  const web = writeScript(dir, 'web.lua', `
    function on_packet(pkt)
      stats.inc('seen')
      local p = pkt.udp.payload
      if p:sub(1, 1) == 'X' then return DROP end
      if p:sub(1, 1) == 'E' then error('bad packet') end
      if p:sub(1, 1) == 'R' then return REPEAT end
      if p:sub(1, 1) == 'M' then pkt.ip.ttl = 1 end
      return ACCEPT
    end`)
  const dns = writeScript(dir, 'dns.lua', 'function on_packet(pkt) stats.set("level", 7) return ACCEPT end')
  await set.startLane(tenantCfg('web', web, [0]), 0)
  await set.startLane(tenantCfg('dns', dns, [1]), 1)
  const kinds = 'AAXEARMA' // 4 A ... per 8 packets: A A X E A R M A
  for (let i = 0; i < 5; i++) {
    const b = udpBatch(8, (k) => kinds[k], i * 8 + 1)
    await set.forQueue(0)!.run(b.batch, b.count, b.out, b.ns)
  }
  const b = udpBatch(3)
  await set.forQueue(1)!.run(b.batch, b.count, b.out, b.ns)

  const server = await serveMetrics(metrics.registry, '127.0.0.1:0')
  const port = (server.address() as AddressInfo).port
  try {
    const res = await fetch(port, '/metrics')
    assert.is(res.status, 200)
    assert.is(res.type, 'text/plain; version=0.0.4; charset=utf-8')
    const fams = parsePrometheusText(res.body)
    const v = (name: string, labels: Record<string, string> = {}) => valueOf(fams, name, labels)
    // verdicts: per 8 packets A A X E(fault: accept) A R M A
    assert.is(v('psd_packets_total', { tenant: 'web', verdict: 'accept' }), 30)
    assert.is(v('psd_packets_total', { tenant: 'web', verdict: 'drop' }), 5)
    assert.is(v('psd_packets_total', { tenant: 'web', verdict: 'repeat' }), 5)
    assert.is(v('psd_packets_total', { tenant: 'web', verdict: 'queue' }), 0)
    assert.is(v('psd_packets_total', { tenant: 'dns', verdict: 'accept' }), 3)
    assert.is(v('psd_modified_total', { tenant: 'web' }), 5)
    assert.is(v('psd_faults_total', { tenant: 'web', kind: 'error' }), 5)
    for (const kind of ['fuel', 'memory', 'time', 'crash']) assert.is(v('psd_faults_total', { tenant: 'web', kind }), 0, kind)
    assert.is(v('psd_script_stat', { tenant: 'web', name: 'seen' }), 40)
    assert.is(v('psd_script_stat', { tenant: 'dns', name: 'level' }), 7)
    assert.is(fams.get('psd_fuel_used')!.type, 'histogram')
    assert.is(v('psd_fuel_used_count', { tenant: 'web' }), 40)
    assert.ok(v('psd_fuel_used_sum', { tenant: 'web' })! > 40 * 10, 'instructions were counted')
    assert.is(v('psd_packet_latency_seconds_count', { tenant: 'web' }), 40)
    assert.is(v('psd_packet_latency_seconds_count', { tenant: 'dns' }), 3)
    assert.ok(v('psd_packet_latency_seconds_sum', { tenant: 'web' })! > 0)
    assert.is(v('psd_batch_packets_count', { tenant: 'web' }), 5)
    assert.is(v('psd_batch_packets_sum', { tenant: 'web' }), 40)
    assert.ok(v('psd_vm_memory_bytes', { tenant: 'web' })! > 10_000)
    assert.is(v('psd_queue_dropped_total', { queue: '0', reason: 'queue_dropped' }), 7)
    assert.is(v('psd_queue_dropped_total', { queue: '0', reason: 'user_dropped' }), 2)
    assert.is(v('psd_queue_dropped_total', { queue: '1', reason: 'user_dropped' }), 5)
    assert.is(v('psd_queue_dropped_total', { queue: '77', reason: 'user_dropped' }), undefined, 'only psd\'s own queues')
    assert.is(v('psd_queue_waiting', { queue: '0' }), 3)
    assert.is(v('psd_reloads_total', { tenant: 'web', result: 'ok' }), 0)
    assert.is(v('psd_tenant_generation', { tenant: 'web' }), 1)
    assert.is(v('psd_up'), 1)
    for (const [name, type] of [['psd_packets_total', 'counter'], ['psd_faults_total', 'counter'], ['psd_script_stat', 'gauge'],
      ['psd_fuel_used', 'histogram'], ['psd_packet_latency_seconds', 'histogram'], ['psd_vm_memory_bytes', 'gauge'],
      ['psd_queue_dropped_total', 'counter'], ['psd_batch_packets', 'histogram']]) {
      assert.is(fams.get(name)?.type, type, name)
    }
    const py = pythonParse(res.body)
    if (py.skipped) console.log(`(python parser skipped: ${py.skipped})`)
    assert.ok(py.ok, `prometheus_client rejected the page: ${py.out}`)
    if (!py.skipped) {
      const families = JSON.parse(py.out)
      // the Python client names counter families without _total
      assert.is(families.psd_packets?.type, 'counter')
      assert.is(families.psd_fuel_used?.type, 'histogram')
      assert.is(families.psd_script_stat?.type, 'gauge')
    }

    // a reload: counters go on, the reload is counted; an unloaded tenant's series go away
    const r = await set.reload('web', { script: writeScript(dir, 'web2.lua', 'function on_packet() return DROP end') })
    assert.ok(r.ok, r.error)
    const b2 = udpBatch(4)
    await set.forQueue(0)!.run(b2.batch, b2.count, b2.out, b2.ns)
    await set.unload('dns')
    const after = parsePrometheusText((await fetch(port, '/metrics')).body)
    assert.is(valueOf(after, 'psd_packets_total', { tenant: 'web', verdict: 'accept' }), 30)
    assert.is(valueOf(after, 'psd_packets_total', { tenant: 'web', verdict: 'drop' }), 9)
    assert.is(valueOf(after, 'psd_faults_total', { tenant: 'web', kind: 'error' }), 5, 'faults of the old version stay counted')
    assert.is(valueOf(after, 'psd_reloads_total', { tenant: 'web', result: 'ok' }), 1)
    assert.is(valueOf(after, 'psd_tenant_generation', { tenant: 'web' }), 2)
    assert.is(valueOf(after, 'psd_script_stat', { tenant: 'web', name: 'seen' }), 40, 'the old version\'s stats stay visible')
    assert.is(valueOf(after, 'psd_packets_total', { tenant: 'dns', verdict: 'accept' }), undefined)
    assert.is(valueOf(after, 'psd_queue_dropped_total', { queue: '1', reason: 'user_dropped' }), undefined)

    assert.is((await fetch(port, '/other')).status, 404)
    assert.is((await fetch(port, '/metrics', 'POST')).status, 405)
    const head = await fetch(port, '/metrics', 'HEAD')
    assert.is(head.status, 200)
    assert.is(head.body, '')
  } finally {
    server.close()
    await set.stopAll()
  }
})

test('serveMetrics: a port in use is an error that names it', async () => {
  const a = await serveMetrics(new Registry(), '127.0.0.1:0')
  const port = (a.address() as AddressInfo).port
  try {
    let err: any
    try { await serveMetrics(new Registry(), `127.0.0.1:${port}`) } catch (e) { err = e }
    assert.is(err?.code, 'EADDRINUSE')
  } finally { a.close() }
  void get
})

test.run()
