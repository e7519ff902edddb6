// Small statistics for the benchmark drivers: medians, quartiles, paired ratios.

export function quantile(xs: number[], q: number): number {
  if (xs.length === 0) return NaN
  const s = [...xs].sort((a, b) => a - b)
  const pos = (s.length - 1) * q, lo = Math.floor(pos), hi = Math.ceil(pos)
  return s[lo] + (s[hi] - s[lo]) * (pos - lo)
}

export const median = (xs: number[]): number => quantile(xs, 0.5)

export interface Summary { median: number; p25: number; p75: number; min: number; n: number }

export function summary(xs: number[]): Summary {
  return { median: median(xs), p25: quantile(xs, 0.25), p75: quantile(xs, 0.75), min: Math.min(...xs), n: xs.length }
}

/** Ratios a[i] / b[i] of samples taken side by side. */
export function paired(a: number[], b: number[]): number[] {
  const n = Math.min(a.length, b.length)
  return Array.from({ length: n }, (_, i) => a[i] / b[i])
}

export const fmtNs = (x: number): string => Number.isFinite(x) ? Math.round(x).toLocaleString('en-US') : '-'
export const fmtRatio = (x: number): string => !Number.isFinite(x) ? '-' : x >= 10 ? x.toFixed(1) : x.toFixed(2)
