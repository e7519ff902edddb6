// A strict parser of the Prometheus text exposition format 0.0.4, for tests: it throws, naming
// the line, on anything the format does not allow or that Prometheus would reject when
// scraping: bad names, bad escapes, samples before their TYPE, a family split in two, a
// repeated series, a histogram whose buckets are not cumulative, lack +Inf, or disagree with
// _count. Written from the format's specification (prometheus.io "Exposition formats"), not from
// psd's code. test/90.ops.metrics also feeds the same page to the official Python client's
// parser (Debian python3-prometheus-client) where it is installed.

export interface Sample { name: string; labels: Record<string, string>; value: number }
export interface Family { name: string; type: string; help?: string; samples: Sample[] }

const NAME = /^[a-zA-Z_:][a-zA-Z0-9_:]*$/
const LABEL = /^[a-zA-Z_][a-zA-Z0-9_]*$/
const TYPES = new Set(['counter', 'gauge', 'histogram', 'summary', 'untyped'])

function parseValue(s: string, where: string): number {
  if (s === '+Inf' || s === 'Inf') return Infinity
  if (s === '-Inf') return -Infinity
  if (s === 'NaN') return NaN
  if (!/^[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?$/.test(s)) throw new Error(`${where}: bad value "${s}"`)
  return Number(s)
}

function unescape(s: string, where: string, help: boolean): string {
  let out = ''
  for (let i = 0; i < s.length; i++) {
    const c = s[i]
    if (c !== '\\') { out += c; continue }
    const n = s[++i]
    if (n === '\\') out += '\\'
    else if (n === 'n') out += '\n'
    else if (n === '"' && !help) out += '"'
    else throw new Error(`${where}: bad escape \\${n ?? ''}`)
  }
  return out
}

function familyOf(sample: string, families: Map<string, Family>): Family | undefined {
  const f = families.get(sample)
  if (f) return f
  for (const suf of ['_bucket', '_sum', '_count']) {
    if (sample.endsWith(suf)) {
      const base = families.get(sample.slice(0, -suf.length))
      if (base && (base.type === 'histogram' || (base.type === 'summary' && suf !== '_bucket'))) return base
    }
  }
  return undefined
}

/** Parses a whole page; throws on the first error. */
export function parsePrometheusText(text: string): Map<string, Family> {
  if (!text.endsWith('\n')) throw new Error('the page must end with a newline')
  const families = new Map<string, Family>()
  const done = new Set<string>()
  const series = new Set<string>()
  let current: Family | undefined
  const lines = text.split('\n')
  lines.pop()
  lines.forEach((line, i) => {
    const where = `line ${i + 1}`
    if (line === '') return
    if (line.startsWith('#')) {
      const m = /^# (HELP|TYPE) (\S+)(?: (.*))?$/.exec(line)
      if (!m) return // a plain comment
      const [, kind, name, rest = ''] = m
      if (!NAME.test(name)) throw new Error(`${where}: bad metric name "${name}"`)
      if (done.has(name)) throw new Error(`${where}: metric ${name} appears in two places`)
      let f = families.get(name)
      if (!f) {
        if (current) done.add(current.name)
        f = { name, type: 'untyped', samples: [] }
        families.set(name, f)
        current = f
      } else if (f !== current) {
        throw new Error(`${where}: ${kind} for ${name} after another metric`)
      }
      if (kind === 'HELP') {
        if (f.help !== undefined) throw new Error(`${where}: second HELP for ${name}`)
        f.help = unescape(rest, where, true)
      } else {
        if (!TYPES.has(rest)) throw new Error(`${where}: bad type "${rest}"`)
        if (f.samples.length) throw new Error(`${where}: TYPE for ${name} after its samples`)
        f.type = rest
      }
      return
    }
    const m = /^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{(.*)\})? (\S+)(?: (-?\d+))?$/.exec(line)
    if (!m) throw new Error(`${where}: not a sample line: ${JSON.stringify(line)}`)
    const [, name, , labelText, valueText] = m
    const labels: Record<string, string> = {}
    if (labelText !== undefined && labelText !== '') {
      const re = /\s*([^=\s]+)\s*=\s*"((?:[^"\\]|\\.)*)"\s*(,|$)/y
      let pos = 0
      while (pos < labelText.length) {
        re.lastIndex = pos
        const lm = re.exec(labelText)
        if (!lm) throw new Error(`${where}: bad labels {${labelText}}`)
        const [, ln, lv] = lm
        if (!LABEL.test(ln)) throw new Error(`${where}: bad label name "${ln}"`)
        if (ln in labels) throw new Error(`${where}: label ${ln} twice`)
        labels[ln] = unescape(lv, where, false)
        pos = re.lastIndex
        if (lm[3] === '' && pos < labelText.length) throw new Error(`${where}: bad labels {${labelText}}`)
      }
    }
    const value = parseValue(valueText, where)
    let f = familyOf(name, families)
    if (!f || done.has(f.name)) {
      if (f && done.has(f.name)) throw new Error(`${where}: metric ${f.name} appears in two places`)
      if (current) done.add(current.name)
      f = { name, type: 'untyped', samples: [] }
      families.set(name, f)
    }
    if (f !== current && current && !done.has(current.name)) done.add(current.name)
    current = f
    const key = name + JSON.stringify(Object.entries(labels).sort())
    if (series.has(key)) throw new Error(`${where}: series ${key} repeated`)
    series.add(key)
    if (f.type === 'counter' && !(value >= 0)) throw new Error(`${where}: counter ${name} is ${value}`)
    if (f.type === 'histogram' && name === f.name) throw new Error(`${where}: histogram ${name} sample without _bucket/_sum/_count`)
    if (f.type === 'histogram' && name.endsWith('_bucket') && !('le' in labels)) throw new Error(`${where}: bucket without le`)
    f.samples.push({ name, labels, value })
  })
  for (const f of families.values()) if (f.type === 'histogram') checkHistogram(f)
  return families
}

function checkHistogram(f: Family): void {
  const groups = new Map<string, { buckets: [number, number][]; count?: number; sum?: number }>()
  for (const s of f.samples) {
    const { le, ...rest } = s.labels
    const key = JSON.stringify(Object.entries(rest).sort())
    let g = groups.get(key)
    if (!g) { g = { buckets: [] }; groups.set(key, g) }
    if (s.name === `${f.name}_bucket`) g.buckets.push([parseValue(le, f.name), s.value])
    else if (s.name === `${f.name}_count`) g.count = s.value
    else if (s.name === `${f.name}_sum`) g.sum = s.value
  }
  for (const [key, g] of groups) {
    const where = `histogram ${f.name}${key}`
    if (g.count === undefined || g.sum === undefined) throw new Error(`${where}: _count or _sum missing`)
    const sorted = [...g.buckets].sort((a, b) => a[0] - b[0])
    if (sorted.length === 0 || sorted[sorted.length - 1][0] !== Infinity) throw new Error(`${where}: no +Inf bucket`)
    for (let i = 1; i < sorted.length; i++) {
      if (sorted[i][0] === sorted[i - 1][0]) throw new Error(`${where}: bucket le=${sorted[i][0]} twice`)
      if (sorted[i][1] < sorted[i - 1][1]) throw new Error(`${where}: buckets not cumulative at le=${sorted[i][0]}`)
    }
    if (sorted[sorted.length - 1][1] !== g.count) throw new Error(`${where}: +Inf bucket ${sorted[sorted.length - 1][1]} != _count ${g.count}`)
  }
}

/** The value of one series (labels must match exactly), or undefined. */
export function valueOf(fams: Map<string, Family>, name: string, labels: Record<string, string> = {}): number | undefined {
  for (const f of fams.values()) {
    for (const s of f.samples) {
      if (s.name !== name) continue
      const a = Object.entries(s.labels).sort(), b = Object.entries(labels).sort()
      if (JSON.stringify(a) === JSON.stringify(b)) return s.value
    }
  }
  return undefined
}
