// A buffered writer of text lines to a file (the verdict log): one write(2) per 256 KiB.
import { openSync, writeSync, closeSync } from 'node:fs'

export class LineWriter {
  private fd: number
  private parts: string[] = []
  private size = 0
  constructor(readonly path: string) {
    this.fd = openSync(path, 'w')
  }
  write(line: string): void {
    this.parts.push(line)
    this.size += line.length
    if (this.size >= 256 * 1024) this.flush()
  }
  flush(): void {
    if (!this.parts.length) return
    const b = Buffer.from(this.parts.join(''))
    let off = 0
    while (off < b.length) off += writeSync(this.fd, b, off)
    this.parts = []
    this.size = 0
  }
  close(): void {
    this.flush()
    closeSync(this.fd)
  }
}
