// Metrics in the Prometheus text exposition format 0.0.4, served at /metrics by node:http.
//
// A small registry of counters, gauges and histograms with fixed label names. Series are kept
// in maps keyed by their rendered label set, so the hot path (Histogram.child(...).observe) is a
// bucket search and two additions, with no allocation. Values that live elsewhere (tenant
// counters, kernel queue counters) are copied in by collect hooks just before each render.
import { createServer, type Server } from 'node:http'

export type LabelValues = Record<string, string | number>

const NAME_RE = /^[a-zA-Z_:][a-zA-Z0-9_:]*$/
const LABEL_RE = /^[a-zA-Z_][a-zA-Z0-9_]*$/

function escapeLabel(v: string): string {
  return v.replace(/\\/g, '\\\\').replace(/\n/g, '\\n').replace(/"/g, '\\"')
}

function escapeHelp(v: string): string {
  return v.replace(/\\/g, '\\\\').replace(/\n/g, '\\n')
}

/** A sample value as the format writes it: integers plainly, +Inf, -Inf, NaN. */
export function formatValue(v: number): string {
  if (Number.isNaN(v)) return 'NaN'
  if (v === Infinity) return '+Inf'
  if (v === -Infinity) return '-Inf'
  return String(v)
}

abstract class Metric<S> {
  protected series = new Map<string, S>()
  constructor(readonly name: string, readonly help: string, readonly labelNames: readonly string[], readonly type: string) {
    if (!NAME_RE.test(name)) throw new Error(`bad metric name ${name}`)
    for (const l of labelNames) if (!LABEL_RE.test(l) || l.startsWith('__')) throw new Error(`bad label name ${l}`)
  }

  /** The {a="x",b="y"} part for these values (all label names must be given). */
  protected key(labels: LabelValues): string {
    if (this.labelNames.length === 0) return ''
    const parts: string[] = []
    for (const l of this.labelNames) {
      const v = labels[l]
      if (v === undefined) throw new Error(`${this.name}: label ${l} missing`)
      parts.push(`${l}="${escapeLabel(String(v))}"`)
    }
    return parts.join(',')
  }

  /** Forgets the series whose labels include all of these (a tenant that was unloaded). */
  remove(match: LabelValues): void {
    const want = Object.entries(match).map(([k, v]) => `${k}="${escapeLabel(String(v))}"`)
    for (const key of [...this.series.keys()]) {
      const parts = key.split(/,(?=[a-zA-Z_][a-zA-Z0-9_]*=")/)
      if (want.every((w) => parts.includes(w))) this.series.delete(key)
    }
  }

  clear(): void { this.series.clear() }

  render(out: string[]): void {
    out.push(`# HELP ${this.name} ${escapeHelp(this.help)}`)
    out.push(`# TYPE ${this.name} ${this.type}`)
    const keys = [...this.series.keys()].sort()
    for (const k of keys) this.renderSeries(out, k, this.series.get(k)!)
  }

  protected abstract renderSeries(out: string[], key: string, s: S): void
}

class Scalar extends Metric<{ v: number }> {
  /** Sets the value of a series (a counter set from a monotonic source, or a gauge). */
  set(labels: LabelValues, v: number): void {
    const k = this.key(labels)
    const s = this.series.get(k)
    if (s) s.v = v
    else this.series.set(k, { v })
  }

  inc(labels: LabelValues = {}, n = 1): void {
    const k = this.key(labels)
    const s = this.series.get(k)
    if (s) s.v += n
    else this.series.set(k, { v: n })
  }

  get(labels: LabelValues = {}): number | undefined { return this.series.get(this.key(labels))?.v }

  protected renderSeries(out: string[], key: string, s: { v: number }): void {
    out.push(`${this.name}${key ? `{${key}}` : ''} ${formatValue(s.v)}`)
  }
}

export class Counter extends Scalar {
  constructor(name: string, help: string, labelNames: readonly string[] = []) { super(name, help, labelNames, 'counter') }
}

export class Gauge extends Scalar {
  constructor(name: string, help: string, labelNames: readonly string[] = []) { super(name, help, labelNames, 'gauge') }
}

/** One labelled series of a histogram: cumulative buckets are computed when rendered. */
export class HistogramSeries {
  readonly counts: Float64Array
  sum = 0
  count = 0
  constructor(readonly bounds: Float64Array) { this.counts = new Float64Array(bounds.length + 1) }

  /** Records v, n times (n > 1: a batch of packets that all took this long). */
  observe(v: number, n = 1): void {
    const b = this.bounds
    let lo = 0, hi = b.length
    while (lo < hi) { const mid = (lo + hi) >> 1; if (v <= b[mid]) hi = mid; else lo = mid + 1 }
    this.counts[lo] += n
    this.sum += v * n
    this.count += n
  }
}

export class Histogram extends Metric<HistogramSeries> {
  readonly bounds: Float64Array
  constructor(name: string, help: string, labelNames: readonly string[], buckets: number[]) {
    super(name, help, labelNames, 'histogram')
    if (labelNames.includes('le')) throw new Error('a histogram may not have a label "le"')
    const sorted = [...buckets].sort((a, b) => a - b)
    for (let i = 1; i < sorted.length; i++) if (sorted[i] === sorted[i - 1]) throw new Error(`${name}: duplicate bucket ${sorted[i]}`)
    this.bounds = Float64Array.from(sorted.filter((b) => b !== Infinity))
  }

  /** The series for these labels, created empty on first use: keep it and call observe(). */
  child(labels: LabelValues): HistogramSeries {
    const k = this.key(labels)
    let s = this.series.get(k)
    if (!s) { s = new HistogramSeries(this.bounds); this.series.set(k, s) }
    return s
  }

  protected renderSeries(out: string[], key: string, s: HistogramSeries): void {
    const pre = key ? `${key},` : ''
    let cum = 0
    for (let i = 0; i < this.bounds.length; i++) {
      cum += s.counts[i]
      out.push(`${this.name}_bucket{${pre}le="${formatValue(this.bounds[i])}"} ${cum}`)
    }
    out.push(`${this.name}_bucket{${pre}le="+Inf"} ${s.count}`)
    out.push(`${this.name}_sum${key ? `{${key}}` : ''} ${formatValue(s.sum)}`)
    out.push(`${this.name}_count${key ? `{${key}}` : ''} ${s.count}`)
  }
}

/** Bounds start, start*factor, ... (count of them). */
export function exponentialBuckets(start: number, factor: number, count: number): number[] {
  const out: number[] = []
  for (let i = 0, v = start; i < count; i++, v *= factor) out.push(+v.toPrecision(6))
  return out
}

export class Registry {
  private metrics: Metric<any>[] = []
  private hooks: (() => void)[] = []

  counter(name: string, help: string, labelNames: readonly string[] = []): Counter { return this.add(new Counter(name, help, labelNames)) }
  gauge(name: string, help: string, labelNames: readonly string[] = []): Gauge { return this.add(new Gauge(name, help, labelNames)) }
  histogram(name: string, help: string, labelNames: readonly string[], buckets: number[]): Histogram {
    return this.add(new Histogram(name, help, labelNames, buckets))
  }

  private add<M extends Metric<any>>(m: M): M {
    if (this.metrics.some((x) => x.name === m.name)) throw new Error(`metric ${m.name} registered twice`)
    this.metrics.push(m)
    return m
  }

  /** fn runs before every render: copy values that live elsewhere into the metrics. */
  onCollect(fn: () => void): void { this.hooks.push(fn) }

  /** Forgets every series of every metric whose labels include these. */
  remove(match: LabelValues): void {
    for (const m of this.metrics) if (Object.keys(match).every((k) => m.labelNames.includes(k))) m.remove(match)
  }

  render(): string {
    for (const h of this.hooks) h()
    const out: string[] = []
    for (const m of this.metrics) m.render(out)
    return out.join('\n') + '\n'
  }
}

export const CONTENT_TYPE = 'text/plain; version=0.0.4; charset=utf-8'

/** Parses HOST:PORT ("127.0.0.1:9464", ":9464", "[::1]:9464"). */
export function parseListen(v: string): { host: string; port: number } {
  const m = /^(?:\[([^\]]+)\]|([^:\s]*)):(\d{1,5})$/.exec(v)
  const port = m ? Number(m[3]) : NaN
  if (!m || port > 65535) throw new Error(`expected HOST:PORT, got "${v}"`)
  return { host: m[1] ?? (m[2] || '0.0.0.0'), port }
}

/**
 * Serves the registry at http://HOST:PORT/metrics (GET or HEAD; other paths 404, other
 * methods 405). Resolves once listening; rejects with the listen error (EADDRINUSE ...).
 */
export function serveMetrics(registry: Registry, listen: string): Promise<Server> {
  const { host, port } = parseListen(listen)
  const server = createServer((req, res) => {
    const path = (req.url ?? '/').split('?')[0]
    if (path !== '/metrics') {
      res.writeHead(404, { 'content-type': 'text/plain' }).end('psd: metrics are at /metrics\n')
      return
    }
    if (req.method !== 'GET' && req.method !== 'HEAD') {
      res.writeHead(405, { allow: 'GET, HEAD' }).end()
      return
    }
    let body: string
    try { body = registry.render() } catch (e) {
      res.writeHead(500, { 'content-type': 'text/plain' }).end(`psd: ${(e as Error).message}\n`)
      return
    }
    res.writeHead(200, { 'content-type': CONTENT_TYPE, 'content-length': Buffer.byteLength(body) })
    res.end(req.method === 'HEAD' ? undefined : body)
  })
  server.keepAliveTimeout = 5000
  server.headersTimeout = 10_000
  server.requestTimeout = 10_000
  return new Promise((resolve, reject) => {
    server.once('error', reject)
    server.listen(port, host, () => {
      server.off('error', reject)
      server.unref() // metrics never keep psd alive on their own
      resolve(server)
    })
  })
}
