// Real traffic made by real tools, captured: two network namespaces joined by a veth (IPv4 and
// IPv6 addresses that exist only inside them), servers on one side (python3 http.server,
// dnsmasq, openssl s_server, nc), clients on the other (ping, ping -6, curl, dig, openssl
// s_client, nc), tcpdump on the client's veth. Every step is bounded in count and time; the
// namespaces (and with them the veth and every process bound to them) are deleted at the end,
// also when the process exits early.
//
//   const why = realTrafficUnavailable()          // null when this can run (root, tools)
//   const cap = await captureRealTraffic(dir)     // { pcap, steps, addr }
import { spawn, spawnSync, type ChildProcess } from 'node:child_process'
import { join } from 'node:path'
import { writeFileSync, existsSync, statSync } from 'node:fs'

export const TOOLS = ['ip', 'tcpdump', 'ping', 'curl', 'dig', 'dnsmasq', 'nc', 'openssl', 'python3']

/** Why real traffic cannot be made here, or null. */
export function realTrafficUnavailable(): string | null {
  if (process.platform !== 'linux') return 'not Linux'
  if (typeof process.getuid !== 'function' || process.getuid() !== 0) return 'not root (needs network namespaces)'
  for (const t of TOOLS) {
    if (spawnSync('sh', ['-c', `command -v ${t}`], { encoding: 'utf8' }).status !== 0) return `the tool ${t} is missing`
  }
  const probe = `psd30probe${process.pid}`
  const r = spawnSync('ip', ['netns', 'add', probe], { encoding: 'utf8' })
  if (r.status !== 0) return `cannot create a network namespace: ${r.stderr.trim()}`
  spawnSync('ip', ['netns', 'del', probe])
  return null
}

export interface Step { name: string; status: number | null; out: string }
export interface RealCapture {
  pcap: string
  steps: Step[]
  addr: { client4: string; server4: string; client6: string; server6: string }
  /** names the DNS server answers, and what */
  names: { a: string; aaaa: string; cname: string; mx: string; txt: string; sni: string }
}

const namespaces = new Set<string>()
const children = new Set<ChildProcess>()
let hooked = false

function cleanup(): void {
  for (const c of children) { try { c.kill('SIGKILL') } catch { /* gone */ } }
  children.clear()
  for (const ns of namespaces) spawnSync('ip', ['netns', 'del', ns], { timeout: 10_000 })
  namespaces.clear()
}

function hook(): void {
  if (hooked) return
  hooked = true
  process.on('exit', cleanup)
  for (const sig of ['SIGINT', 'SIGTERM'] as const) process.on(sig, () => { cleanup(); process.exit(130) })
}

function sh(args: string[], timeoutMs = 15_000, input?: string): { status: number | null; out: string } {
  const r = spawnSync(args[0], args.slice(1), { encoding: 'utf8', timeout: timeoutMs, input, killSignal: 'SIGKILL' })
  return { status: r.status, out: `${r.stdout ?? ''}${r.stderr ?? ''}${r.error ? ` (${r.error.message})` : ''}` }
}

function must(args: string[], timeoutMs = 15_000): string {
  const r = sh(args, timeoutMs)
  if (r.status !== 0) throw new Error(`${args.join(' ')} failed (${r.status}): ${r.out}`)
  return r.out
}

/** Starts a long-running process; resolves once `ready` (a regexp on its output, or a probe) holds. */
async function start(args: string[], ready: RegExp | (() => boolean), timeoutMs = 10_000): Promise<ChildProcess & { output: () => string }> {
  const c = spawn(args[0], args.slice(1), { stdio: ['pipe', 'pipe', 'pipe'] })
  children.add(c)
  let out = ''
  c.stdout!.on('data', (d) => { out += d })
  c.stderr!.on('data', (d) => { out += d })
  c.on('exit', () => children.delete(c))
  const until = Date.now() + timeoutMs
  for (;;) {
    if (typeof ready === 'function' ? ready() : ready.test(out)) break
    if (c.exitCode !== null) throw new Error(`${args.join(' ')} exited (${c.exitCode}): ${out}`)
    if (Date.now() > until) { c.kill('SIGKILL'); throw new Error(`${args.join(' ')} not ready after ${timeoutMs} ms: ${out}`) }
    await new Promise((r) => setTimeout(r, 50))
  }
  return Object.assign(c, { output: () => out })
}

async function stop(c: ChildProcess, signal: NodeJS.Signals = 'SIGTERM', timeoutMs = 5000): Promise<void> {
  if (c.exitCode !== null || c.signalCode !== null) return
  const done = new Promise<void>((r) => c.once('exit', () => r()))
  c.kill(signal)
  const t = setTimeout(() => c.kill('SIGKILL'), timeoutMs)
  await done
  clearTimeout(t)
}

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms))

/** Makes the traffic and returns the capture (Ethernet, as tcpdump writes it on the veth). */
export async function captureRealTraffic(dir: string): Promise<RealCapture> {
  hook()
  const id = `${process.pid.toString(36)}${Math.floor(Math.random() * 36 ** 3).toString(36)}`
  const C = `psd30-${id}-c`, S = `psd30-${id}-s`
  const devC = `pc${id}`.slice(0, 15), devS = `ps${id}`.slice(0, 15)
  // addresses: a /24 and a ULA /64 derived from the id, inside these namespaces only
  const n = (parseInt(id, 36) % 200) + 20
  const addr = { client4: `10.230.${n}.1`, server4: `10.230.${n}.2`, client6: `fd30:${n.toString(16)}::1`, server6: `fd30:${n.toString(16)}::2` }
  const names = { a: 'www.psd.test', aaaa: 'www.psd.test', cname: 'alias.psd.test', mx: 'psd.test', txt: 'txt.psd.test', sni: 'tls.psd.test' }
  const pcap = join(dir, 'real.pcap')
  const steps: Step[] = []
  const inC = (cmd: string[]) => ['ip', 'netns', 'exec', C, ...cmd]
  const inS = (cmd: string[]) => ['ip', 'netns', 'exec', S, ...cmd]
  const step = (name: string, cmd: string[], timeoutMs = 10_000, input?: string) => {
    const r = sh(cmd, timeoutMs, input)
    steps.push({ name, status: r.status, out: r.out.slice(0, 2000) })
    return r
  }

  try {
    for (const ns of [C, S]) { must(['ip', 'netns', 'add', ns]); namespaces.add(ns) }
    must(['ip', 'link', 'add', devC, 'netns', C, 'type', 'veth', 'peer', 'name', devS, 'netns', S])
    must(['ip', '-n', C, 'addr', 'add', `${addr.client4}/24`, 'dev', devC])
    must(['ip', '-n', S, 'addr', 'add', `${addr.server4}/24`, 'dev', devS])
    must(['ip', '-n', C, 'addr', 'add', `${addr.client6}/64`, 'dev', devC, 'nodad'])
    must(['ip', '-n', S, 'addr', 'add', `${addr.server6}/64`, 'dev', devS, 'nodad'])
    for (const [ns, dev] of [[C, devC], [S, devS]]) {
      must(['ip', '-n', ns, 'link', 'set', 'lo', 'up'])
      must(['ip', '-n', ns, 'link', 'set', dev, 'up'])
    }

    // servers
    const key = join(dir, 'key.pem'), cert = join(dir, 'cert.pem')
    must(['openssl', 'req', '-x509', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:prime256v1', '-nodes', '-keyout', key,
      '-out', cert, '-subj', `/CN=${names.sni}`, '-days', '2'], 20_000)
    const www = join(dir, 'www')
    must(['mkdir', '-p', www])
    writeFileSync(join(www, 'index.html'), '<html><body>psd test page</body></html>\n')
    const http = await start(inS(['python3', '-u', '-m', 'http.server', '8080', '--bind', '::', '--directory', www]), /Serving HTTP/)
    const dns = await start(inS(['dnsmasq', '--no-daemon', '--conf-file=/dev/null', '--no-resolv', '--no-hosts', '--bind-interfaces',
      `--listen-address=${addr.server4}`, `--listen-address=${addr.server6}`, '--port=53', '--user=root', '--pid-file=',
      `--address=/${names.a}/10.9.9.9`, `--address=/${names.aaaa}/fd00::9:9`, `--cname=${names.cname},${names.a}`,
      `--mx-host=${names.mx},mail.${names.mx},10`, `--txt-record=${names.txt},hello world,second string`, '--log-queries', '--log-facility=-']),
    /started|compile time options/)
    const tls = await start(inS(['openssl', 's_server', '-accept', '443', '-cert', cert, '-key', key, '-www', '-naccept', '12']), /ACCEPT/)
    const udp4 = await start(inS(['nc', '-4', '-u', '-l', '9999']), () => true)
    const udp6 = await start(inS(['nc', '-6', '-u', '-l', '9998']), () => true)

    // capture (tcpdump says "listening on" when it is)
    const dump = await start(inC(['tcpdump', '-i', devC, '-n', '-U', '--immediate-mode', '-s', '0', '-w', pcap]), /listening on/)
    await sleep(300)

    // clients
    step('ping', inC(['ping', '-c', '3', '-i', '0.2', '-W', '2', addr.server4]))
    step('ping -6', inC(['ping', '-6', '-c', '3', '-i', '0.2', '-W', '2', addr.server6]))
    step('ping ttl/tos', inC(['ping', '-c', '1', '-t', '7', '-Q', '0x28', '-W', '2', addr.server4]))
    step('ping fragments', inC(['ping', '-c', '1', '-s', '3000', '-W', '2', addr.server4]))
    step('ping -6 fragments', inC(['ping', '-6', '-c', '1', '-s', '3000', '-W', '2', addr.server6]))
    const curl = (name: string, args: string[]) => step(name, inC(['curl', '-sS', '-o', '/dev/null', '--max-time', '5', ...args]))
    curl('curl', [`http://${addr.server4}:8080/`])
    curl('curl -6', [`http://[${addr.server6}]:8080/index.html?x=1`])
    curl('curl Host', ['-H', `Host: ${names.a}`, '-A', 'psd-real/1.0', `http://${addr.server4}:8080/missing`])
    curl('curl HEAD', ['-I', `http://${addr.server4}:8080/`])
    const dig = (name: string, args: string[]) => step(name, inC(['dig', '+tries=1', '+time=2', ...args]))
    dig('dig A', [`@${addr.server4}`, names.a, 'A'])
    dig('dig AAAA', [`@${addr.server4}`, names.aaaa, 'AAAA'])
    dig('dig CNAME', [`@${addr.server4}`, names.cname, 'A'])
    dig('dig MX', [`@${addr.server4}`, names.mx, 'MX'])
    dig('dig TXT', [`@${addr.server4}`, names.txt, 'TXT'])
    dig('dig -6', ['-6', `@${addr.server6}`, names.a, 'A'])
    dig('dig +tcp', ['+tcp', `@${addr.server4}`, names.a, 'A'])
    dig('dig unknown', [`@${addr.server4}`, 'nothing.example', 'A'])
    step('tls s_client', inC(['openssl', 's_client', '-connect', `${addr.server4}:443`, '-servername', names.sni, '-alpn', 'h2,http/1.1']), 10_000, 'Q\n')
    step('tls s_client -6 tls1.2', inC(['openssl', 's_client', '-connect', `[${addr.server6}]:443`, '-servername', names.sni, '-tls1_2']), 10_000, 'Q\n')
    curl('curl https', ['-k', '--resolve', `${names.sni}:443:${addr.server4}`, `https://${names.sni}/`])
    step('nc udp', inC(['nc', '-4', '-u', '-w', '1', addr.server4, '9999']), 5_000, 'hello over udp\n')
    step('nc udp -6', inC(['nc', '-6', '-u', '-w', '1', addr.server6, '9998']), 5_000, 'hello over udp6\n')
    step('nc udp closed port', inC(['nc', '-4', '-u', '-w', '1', addr.server4, '9']), 5_000, 'nobody listens\n')
    step('nc tcp closed port', inC(['nc', '-z', '-w', '1', addr.server4, '1']), 5_000)
    await sleep(1000)                 // the last replies, then tcpdump writes what it holds
    await stop(dump, 'SIGINT')
    for (const c of [http, dns, tls, udp4, udp6]) await stop(c)
    if (!existsSync(pcap) || statSync(pcap).size < 1000) throw new Error(`no capture written: ${dump.output()}`)
    return { pcap, steps, addr, names }
  } finally {
    cleanup()
  }
}
