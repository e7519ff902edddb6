// The control socket and `node psd.js ctl`: every command, its errors (unknown tenant, bad
// file, bad usage), the socket's mode 0600 and a non-owner refused by it, stale and live
// sockets at start. The server runs in this process over real tenants; ctl runs as a user would.
import { test } from 'uvu'
import * as assert from 'uvu/assert'
import { spawn, spawnSync } from 'node:child_process'
import { chmodSync, existsSync, statSync, writeFileSync } from 'node:fs'
import { join } from 'node:path'
import { serveControl, request, handle } from '../src/ops/control.js'
import { PSD, ROOT, tempDir } from './lib/psd.js'
import { quietLog, tenantCfg, memorySet, udpBatch, writeScript, versionScript } from './lib/ops.js'

const dir = tempDir('psd-ops-ctl-')
chmodSync(dir, 0o755) // others may reach the socket's folder: only the socket's own mode keeps them out
const sock = join(dir, 'psd.sock')
const log = quietLog()
const { set, bound } = memorySet(log)
const opts = { set, log, newTenant: (name: string, script: string, queues: number[]) => tenantCfg(name, script, queues, { fuel: 123456 }) }

function ctl(args: string[], o: { uid?: number } = {}): Promise<{ status: number | null; stdout: string; stderr: string }> {
  const cmd = o.uid !== undefined ? 'setpriv' : process.execPath
  const argv = [PSD, 'ctl', '--socket', sock, ...args]
  const full = o.uid !== undefined ? [`--reuid=${o.uid}`, `--regid=${o.uid}`, '--clear-groups', process.execPath, ...argv] : argv
  return new Promise((resolve) => {
    const c = spawn(cmd, full, { cwd: dir })
    let stdout = '', stderr = ''
    c.stdout.setEncoding('utf8').on('data', (s) => { stdout += s })
    c.stderr.setEncoding('utf8').on('data', (s) => { stderr += s })
    c.on('close', (status) => resolve({ status, stdout, stderr }))
  })
}

const web = writeScript(dir, 'web.lua', versionScript(1))
let server: Awaited<ReturnType<typeof serveControl>>

test('setup: a tenant and the socket, mode 0600', async () => {
  await set.load(tenantCfg('web', web, [0]))
  server = await serveControl(sock, opts)
  const st = statSync(sock)
  assert.ok(st.isSocket())
  assert.is(st.mode & 0o777, 0o600)
  assert.is(st.uid, process.getuid!())
})

test('list and stats', async () => {
  const b = udpBatch(5, (i) => (i === 0 ? 'X' : 'A'))
  await set.forQueue(0)!.run(b.batch, b.count, b.out, b.ns)
  const l = await ctl(['list'])
  assert.is(l.status, 0, l.stderr)
  assert.match(l.stdout, /^NAME\s+QUEUES\s+GEN\s+PACKETS\s+FAULTS\s+SCRIPT\n/)
  assert.match(l.stdout, new RegExp(`\\nweb\\s+0\\s+1\\s+5\\s+0\\s+${web}\\n`))
  const s = await ctl(['stats', 'web'])
  assert.is(s.status, 0, s.stderr)
  assert.match(s.stdout, /^name: web\n/)
  assert.match(s.stdout, /\npackets: 5\n/)
  assert.match(s.stdout, /\nstats:\n  total: 5\n/)
  const j = await ctl(['--json', 'stats'])
  const reply = JSON.parse(j.stdout)
  assert.is(reply.ok, true)
  assert.is(reply.tenants[0].name, 'web')
  assert.equal(reply.tenants[0].verdicts, { accept: 5, drop: 0, repeat: 0, queue: 0 })
})

test('unknown tenant: stats, reload, unload, load without a queue', async () => {
  for (const args of [['stats', 'nope'], ['reload', 'nope'], ['unload', 'nope']]) {
    const r = await ctl(args)
    assert.is(r.status, 1, args.join(' '))
    assert.is(r.stderr, 'psd ctl: unknown tenant "nope"\n')
  }
  const r = await ctl(['load', 'nope', 'web.lua'])
  assert.is(r.status, 1)
  assert.match(r.stderr, /unknown tenant "nope": give its queue to create it/)
})

test('reload: from the file, from another file, a bad file keeps the old script', async () => {
  writeFileSync(web, versionScript(2))
  let r = await ctl(['reload', 'web'])
  assert.is(r.status, 0, r.stderr)
  assert.match(r.stdout, new RegExp(`^reloaded web from ${web} \\(generation 2, packets held [\\d.]+ ms\\)\\n$`))
  writeScript(dir, 'v3.lua', versionScript(3))
  r = await ctl(['reload', 'web', 'v3.lua']) // relative to ctl's folder
  assert.is(r.status, 0, r.stderr)
  assert.match(r.stdout, /from \/.*\/v3\.lua \(generation 3/)
  writeScript(dir, 'broken.lua', 'function on_packet(p)\n  return ACCEPT +\nend\n')
  r = await ctl(['reload', 'web', 'broken.lua'])
  assert.is(r.status, 1)
  assert.match(r.stderr, /^psd ctl: .*broken\.lua:3: unexpected symbol near 'end'/)
  r = await ctl(['reload', 'web', 'missing.lua'])
  assert.is(r.status, 1)
  assert.match(r.stderr, /missing\.lua: cannot read script: no such file/)
  const s = JSON.parse((await ctl(['--json', 'stats', 'web'])).stdout).tenants[0]
  assert.is(s.generation, 3)
  assert.ok(s.script.endsWith('v3.lua'))
  assert.equal(s.reloads, { ok: 2, failed: 2 })
  // reload without a name: every tenant
  r = await ctl(['reload'])
  assert.is(r.status, 0, r.stderr)
  assert.match(r.stdout, /reloaded web .*generation 4/)
})

test('load and unload', async () => {
  writeScript(dir, 'dns.lua', 'function on_packet() return DROP end')
  let r = await ctl(['load', 'dns', 'dns.lua', '--queues', '2-3'])
  assert.is(r.status, 0, r.stderr)
  assert.match(r.stdout, /^loaded dns from \/.*dns\.lua on queue 2-3\n$/)
  assert.equal(bound, ['+web', '+dns'])
  const s = set.get('dns')!.snapshot() as any
  assert.is((s.budgets as any).fuel, 123456, 'a new tenant gets the command line\'s settings')
  const b = udpBatch(2)
  await set.forQueue(3)!.run(b.batch, b.count, b.out, b.ns)
  assert.equal([...b.out.verdict.slice(0, 2)], [0, 0])
  r = await ctl(['load', 'other', 'dns.lua', '--queue', '2'])
  assert.is(r.status, 1)
  assert.match(r.stderr, /queue 2 belongs to tenant "dns"/)
  r = await ctl(['load', 'bad', 'nothere.lua', '--queue', '9'])
  assert.is(r.status, 1)
  assert.match(r.stderr, /nothere\.lua: cannot read script: no such file/)
  assert.is(set.get('bad'), undefined)
  r = await ctl(['unload', 'dns'])
  assert.is(r.status, 0, r.stderr)
  assert.is(r.stdout, 'unloaded dns after 2 packets\n')
  assert.equal(bound, ['+web', '+dns', '-dns'])
  assert.is(set.forQueue(3), undefined)
  // known by name now: loads again on its old queues without --queue
  r = await ctl(['load', 'dns', 'dns.lua'])
  assert.is(r.status, 0, r.stderr)
  assert.match(r.stdout, /on queue 2-3/)
  // load on a loaded name replaces its script (a reload)
  writeScript(dir, 'dns2.lua', 'function on_packet() return ACCEPT end')
  r = await ctl(['load', 'dns', 'dns2.lua'])
  assert.is(r.status, 0, r.stderr)
  assert.match(r.stdout, /^reloaded dns from .*dns2\.lua \(generation 2/)
})

test('wrong usage exits 2; a bad request gets an error reply', async () => {
  for (const args of [[], ['frobnicate'], ['load', 'x'], ['unload'], ['stats', 'a', 'b']]) {
    const r = await ctl(args)
    assert.is(r.status, 2, args.join(' '))
    assert.match(r.stderr, /usage: node psd\.js ctl/)
  }
  assert.equal(await handle({ cmd: 'bogus' }, opts), { ok: false, error: 'unknown command "bogus": expected list, stats, load, unload or reload', code: 'bad-request' })
  assert.equal(await handle('x', opts), { ok: false, error: 'a request is a JSON object with "cmd"', code: 'bad-request' })
  assert.equal((await handle({ cmd: 'load', name: 'x', file: 'rel.lua', queues: '5' }, opts) as any).error, '"file" must be an absolute path (ctl makes it one), got "rel.lua"')
  const r = await request(sock, { cmd: 'list' })
  assert.is(r.ok, true)
})

test('permission: the socket is 0600, so another user is refused', async () => {
  const why = process.getuid!() !== 0 ? 'not root' : spawnSync('sh', ['-c', 'command -v setpriv']).status !== 0 ? 'no setpriv' : null
  if (why) { console.log(`SKIPPED permission check: ${why}`); return }
  const asNobody = ['--reuid=65534', '--regid=65534', '--clear-groups', process.execPath]
  // Can user 65534 run psd from where it is checked out? If not (a clone in a private folder),
  // a plain connect() as that user shows the same refusal, without ctl's wording.
  const canRun = spawnSync('setpriv', [...asNobody, '-e', `require('fs').accessSync(${JSON.stringify(PSD)}, 4); require('fs').accessSync(${JSON.stringify(join(ROOT, 'dist'))}, 5)`]).status === 0
  const connectAsNobody = () => spawnSync('setpriv', [...asNobody, '-e',
    `require('net').createConnection(${JSON.stringify(sock)}).on('connect', () => { console.log('connected'); process.exit(0) }).on('error', (e) => { console.log(e.code); process.exit(1) })`], { encoding: 'utf8' })
  if (canRun) {
    const r = await ctl(['list'], { uid: 65534 })
    assert.is(r.status, 1, r.stdout + r.stderr)
    assert.match(r.stderr, /permission denied \(the socket is mode 0600/)
  } else {
    console.log('(user 65534 cannot read this checkout: checking with a plain connect)')
  }
  const refused = connectAsNobody()
  assert.is(refused.stdout.trim(), 'EACCES')
  // the same user gets in when the mode allows it: the mode is what kept it out
  chmodSync(sock, 0o666)
  try {
    assert.is(connectAsNobody().stdout.trim(), 'connected')
    if (canRun) {
      const ok = await ctl(['list'], { uid: 65534 })
      assert.is(ok.status, 0, ok.stderr)
    }
  } finally { chmodSync(sock, 0o600) }
})

test('no psd there, a stale socket, another psd already listening', async () => {
  const none = spawnSync(process.execPath, [PSD, 'ctl', '--socket', join(dir, 'none.sock'), 'list'], { encoding: 'utf8' })
  assert.is(none.status, 1)
  assert.match(none.stderr, /none\.sock: no such socket \(is psd running\?/)
  // a socket file left by a killed process is replaced
  const stale = join(dir, 'stale.sock')
  const child = spawnSync(process.execPath, ['-e', `require('net').createServer().listen(${JSON.stringify(stale)}, () => process.kill(process.pid, 'SIGKILL'))`])
  assert.is(child.signal, 'SIGKILL')
  assert.ok(existsSync(stale))
  const refused = spawnSync(process.execPath, [PSD, 'ctl', '--socket', stale, 'list'], { encoding: 'utf8' })
  assert.match(refused.stderr, /connection refused \(psd is not running; the socket file is stale\)/)
  const s2 = await serveControl(stale, opts)
  assert.is((await request(stale, { cmd: 'list' })).ok, true)
  // a second server on a live socket is refused, and the first keeps working
  let err: any
  try { await serveControl(stale, opts) } catch (e) { err = e }
  assert.match(err?.message ?? '', /another psd is listening there/)
  assert.is((await request(stale, { cmd: 'list' })).ok, true)
  await new Promise<void>((res) => s2.close(() => res()))
  assert.not.ok(existsSync(stale), 'closing removes the socket file')
  // not a socket at all
  writeFileSync(join(dir, 'plain'), 'x')
  err = undefined
  try { await serveControl(join(dir, 'plain'), opts) } catch (e) { err = e }
  assert.match(err?.message ?? '', /exists and is not a socket/)
})

test('teardown', async () => {
  await new Promise<void>((res) => server.close(() => res()))
  await set.stopAll()
})

test.run()
