// Logs script faults without flooding: the first 100 of a run are logged one by one, then one
// line per 1000 with the number left out, so a script that fails on every packet of a large
// capture stays readable. Every fault is still counted.
import type { Logger } from '../log.js'

const FIRST = 100
const EVERY = 1000

export class FaultLog {
  private seen = 0
  private suppressed = 0
  constructor(private log: Logger) {}

  report(kind: string, message: string, packet: number): void {
    this.seen++
    if (this.seen <= FIRST || this.seen % EVERY === 0) {
      this.log.error(message, { fault: kind, packet, suppressed: this.suppressed || undefined })
      this.suppressed = 0
      if (this.seen === FIRST) this.log.warn(`more than ${FIRST} faults: logging one in ${EVERY} from now on`)
    } else {
      this.suppressed++
    }
  }
}
