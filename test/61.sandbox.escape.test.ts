// The sandbox of API.md section 6 against scripts that look for a way out: every path to io, os,
// require, load, debug, collectgarbage (globals, _G, _ENV, the string metatable, library
// tables, packet objects), binary chunks, the shared string metatable, and the host's own
// objects (prototype pollution). A script here raises an error when it finds anything it should
// not, so "no fault" is the pass.
import { test } from 'uvu'
import * as assert from 'uvu/assert'
import { TestTenant } from './lib/hostile.js'
import { LoadError } from '../src/engine/tenant.js'

const DROP = 0

/** Runs on_packet of `src` over packets 1..4 and returns the results. */
async function results(src: string, o: { timeoutMs?: number } = {}) {
  const t = await TestTenant.start(src, { timeoutMs: o.timeoutMs ?? 2000 })
  try {
    const r = [...(await t.batch([1, 2])).results, ...(await t.batch([3, 4])).results]
    return { r, logs: t.logs(), tenant: t.tenant }
  } finally {
    await t.stop()
  }
}

function noFaults(r: { fault: string | null; message: string | null }[]): void {
  for (const x of r) assert.is(x.fault, null, x.message ?? '')
}

const ALLOWED = [
  'ACCEPT', 'DROP', 'NF_ACCEPT', 'NF_DROP', 'NF_REPEAT', 'REPEAT', '_G', '_VERSION', 'assert', 'bit', 'bytes',
  'defer', 'error', 'getmetatable', 'ipairs', 'log', 'math', 'net', 'next', 'pairs', 'pcall', 'print', 'proto',
  'queue', 'random', 'rawequal', 'rawget', 'rawlen', 'rawset', 'select', 'setmetatable', 'stats', 'string',
  'table', 'time', 'timer', 'tonumber', 'tostring', 'type', 'unpack', 'utf8', 'xpcall',
]

test('the globals are exactly the allow-list of API.md section 6 (plus the script\'s own)', async () => {
  const { r, logs } = await results(`
local names = {}
for k in pairs(_G) do names[#names + 1] = k end
table.sort(names)
print(table.concat(names, ","))
function on_packet() return DROP end`)
  noFaults(r)
  const line = logs.find((l) => l.source === 'script')
  assert.equal(line.msg.split(',').filter((n: string) => n !== 'on_packet'), ALLOWED)
})

test('io, os, require, load, debug, collectgarbage ... are reachable by no path', async () => {
  const { r } = await results(`
local banned = { 'io', 'os', 'require', 'load', 'loadstring', 'loadfile', 'dofile', 'debug', 'package',
  'coroutine', 'collectgarbage', 'module', 'setfenv', 'getfenv', 'newproxy', 'gcinfo', 'jit', 'js', 'process', 'warn' }
local seen, found = {}, {}
-- everything reachable from the globals, the string metatable and a packet: tables, their
-- metatables, and what getmetatable shows
local function walk(v, path, depth)
  if depth > 6 then return end
  local t = type(v)
  if t == 'userdata' or t == 'thread' then found[#found + 1] = path .. ' is a ' .. t end
  if t ~= 'table' or seen[v] then return end
  seen[v] = true
  for k, x in pairs(v) do
    -- (log.debug and log.warn are the API's own)
    for _, b in ipairs(banned) do if k == b and not (v == log and (k == 'debug' or k == 'warn')) then found[#found + 1] = path .. '.' .. b end end
    if k == 'dump' then found[#found + 1] = path .. '.dump' end
    walk(x, path .. '.' .. tostring(k), depth + 1)
  end
  local mt = getmetatable(v)
  if mt ~= nil then walk(mt, 'getmetatable(' .. path .. ')', depth + 1) end
end
walk(_G, '_G', 0)
walk(_ENV, '_ENV', 0)
walk(getmetatable(''), 'getmetatable("")', 0)
walk(getmetatable('').__index, 'getmetatable("").__index', 0)
local function check(pkt)
  walk(pkt, 'pkt', 0)
  for _, layer in ipairs { 'ip', 'ip4', 'udp', 'payload' } do walk(pkt[layer], 'pkt.' .. layer, 0) end
  if #found > 0 then error(table.concat(found, '; ')) end
  for _, b in ipairs(banned) do
    if rawget(_G, b) ~= nil or _ENV[b] ~= nil or string[b] ~= nil or ("")[b] ~= nil then error('reached ' .. b) end
  end
  if string.dump ~= nil or ("").dump ~= nil then error('string.dump is there') end
  if getmetatable(pkt) ~= false then error('the packet metatable is visible') end
end
function on_packet(pkt) check(pkt) return DROP end`)
  noFaults(r)
  assert.equal(r.map((x) => x.verdict), [DROP, DROP, DROP, DROP])
})

test('library functions hold no upvalue a script can read: debug and string.dump are gone, load too', async () => {
  const { r } = await results(`
function on_packet()
  assert(debug == nil and string.dump == nil and load == nil)
  -- no way to list a function's upvalues or bytecode without them
  for _, f in ipairs { print, pcall, xpcall, setmetatable, string.rep, table.sort, log.info, stats.inc, time.now } do
    assert(type(f) == 'function')
    assert(not pcall(string.format, '%q', f)) -- a function cannot be serialised either
  end
  return DROP
end`)
  noFaults(r)
})

test('binary chunks are refused: as the script file, and there is no load() to feed one to', async () => {
  // a precompiled chunk starts with ESC "Lua"
  const bin = Uint8Array.from([0x1b, 0x4c, 0x75, 0x61, 0x54, 0x00, 0x19, 0x93, 0x0d, 0x0a, 0x1a, 0x0a, 0x04, 0x08, 0x08])
  let err: unknown
  try { await TestTenant.start(bin) } catch (e) { err = e }
  assert.ok(err instanceof LoadError, String(err))
  assert.match((err as Error).message, /binary chunks are not allowed|attempt to load a binary chunk/)
  // a text script cannot build and run one either
  const { r } = await results(`
function on_packet()
  local ok = pcall(function() return load(string.char(27) .. 'Lua') end)
  assert(not ok)
  return DROP
end`)
  noFaults(r)
})

test('the shared string metatable: read-only to scripts, and changes to the string table never reach psd', async () => {
  const { r, logs } = await results(`
function on_packet(pkt)
  if pkt.id == 2 then
    -- the metatable every string shares cannot be changed ...
    assert(not pcall(function() getmetatable('').__index = { sub = function() return 'evil' end } end))
    assert(not pcall(function() getmetatable('').__add = function() return 0 end end))
    assert(getmetatable('').__index == string)
    -- ... and what a script does to its own string table changes its own method calls only
    string.sub = function() error('hijacked sub') end
    string.byte = function() error('hijacked byte') end
    string.format = nil
  end
  -- psd's packet code keeps working on later packets (it never looks at the script's string table)
  local first = pkt:bytes(0, 1)
  assert(#first == 1 and pkt:u8(0) >> 4 == 4 and pkt.udp.dstport == 9999)
  if pkt.id > 2 then assert(not pcall(function() return ('abc'):sub(1, 1) end)) end
  print('packet', pkt.id, #pkt.payload)
  return DROP, pkt.id
end`)
  noFaults(r)
  assert.equal(r.map((x) => [x.verdict, x.mark]), [[DROP, 1], [DROP, 2], [DROP, 3], [DROP, 4]])
  assert.equal(logs.filter((l) => l.source === 'script').map((l) => l.msg), ['packet\t1\t8', 'packet\t2\t8', 'packet\t3\t8', 'packet\t4\t8'])
})

test('no host prototype pollution: names a script gives to stats and logs stay plain data', async () => {
  const before = Object.getOwnPropertyNames(Object.prototype).sort()
  const { r, tenant, logs } = await results(`
function on_packet(pkt)
  stats.inc('__proto__')
  stats.set('constructor', 7)
  stats.inc('prototype', 2)
  log.info('%s', '__proto__')
  print('__proto__', { __proto__ = { polluted = 'yes' } })
  -- a table a script builds is a Lua table: nothing of it reaches JavaScript
  local t = { __proto__ = { polluted = 'yes' }, constructor = { prototype = { polluted = 'yes' } } }
  return DROP
end`)
  noFaults(r)
  assert.equal(Object.getOwnPropertyNames(Object.prototype).sort(), before)
  assert.is(({} as any).polluted, undefined)
  assert.is((Object.prototype as any).polluted, undefined)
  const stats = tenant.stats
  assert.is(stats.get('__proto__'), 4)
  assert.is(stats.get('constructor'), 7)
  assert.is(stats.get('prototype'), 8)
  const obj = Object.fromEntries(stats)
  assert.is(Object.getPrototypeOf(obj), Object.prototype, 'a plain own key, not a prototype')
  assert.ok(logs.some((l) => l.msg === '__proto__'))
})

test('print and log lines are cut at 4 KiB; a huge error message at 1 KiB', async () => {
  const { r, logs } = await results(`
function on_packet(pkt)
  if pkt.id == 1 then print(('x'):rep(1e6)) end
  if pkt.id == 2 then error(('y'):rep(1e6)) end
  return DROP
end`)
  assert.equal(r.map((x) => x.fault), [null, 'error', null, null])
  const p = logs.find((l) => l.source === 'script')
  assert.ok(p.msg.length < 4200 && /more bytes/.test(p.msg), `${p.msg.length}`)
  assert.ok(r[1].message!.length < 1200, `${r[1].message!.length}`)
})

test('getmetatable on psd\'s own objects shows nothing a script can use to reach outside', async () => {
  const { r } = await results(`
function on_packet(pkt)
  assert(getmetatable(pkt) == false)
  for _, o in ipairs { pkt.ip, pkt.udp } do
    local mt = getmetatable(o)
    assert(mt == nil or mt == false or type(mt) == 'table')
  end
  -- a forged packet handed to psd's accessors is only a confused table
  local fake = setmetatable({ 'x', 0, 1 }, { __index = function() return nil end })
  assert(not pcall(pkt.u8, fake, 0) or true)
  return DROP
end`)
  noFaults(r)
})

test.run()
