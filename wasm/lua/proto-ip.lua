-- Protocol objects, part 1 (API.md section 4): the shared kit, then pkt.ip/ip4/ip6, tcp, udp,
-- icmp, icmp6 and payload. proto-app.lua adds dns, http and tls; proto-define.lua adds
-- proto.define.
--
-- A protocol object is a small table with array slots, like the packet itself:
--   [1] pkt    the packet it describes
--   [2] gen    the packet's layer cache (pkt[5]) at decode time: the object is fresh while
--              pkt[5] is still that table (every edit drops the cache, see P.splice)
--   [3] K      its kind: { name, G (getters), S (setters), n (slots), region, mt }
--   [4...]     offsets found at decode time (0-based, from the IP header), per kind
-- Fields are read from the packet bytes when asked (getters take (o, bytes, base)); nothing is
-- copied at decode time except what a decoder must look at to know the layer exists. Decoders
-- check every offset they keep against the packet, so a fresh object's getters read only inside
-- it. A stale object (the packet was edited since) is decoded again on its next use and keeps
-- its identity; if the layer is gone it reads as nil.
local P, H = ...

local byte, sub, char, format, sunpack, spack = string.byte, string.sub, string.char, string.format,
  string.unpack, string.pack
local match, find, lower, rep = string.match, string.find, string.lower, string.rep
local concat, sort = table.concat, table.sort
local setmetatable, error, type, tostring, tonumber, next = setmetatable, error, type, tostring, tonumber, next
local mtype = math.type

local layers = P.layers
local splice = P.splice

local R = {}            -- the kit, shared with the other proto-*.lua files (private to the prelude)
P.proto = R
R.kinds = {}            -- layer name -> kind, for proto.define's `over`

local function dead()
  error('packet used after its call returned (pkt is valid during the call only)', 3)
end

-- The decoded layer k of packet t (false when absent), through the packet's layer cache.
local function layer(t, k)
  local c = t[5]
  if not c then c = { ip = nil, tcp = nil, udp = nil, payload = nil }; t[5] = c end -- presized, as in packet.lua
  local v = c[k]
  if v == nil then
    v = layers[k](t) or false
    c[k] = v
  end
  return v
end
R.layer = layer

-- Identity across edits: a field write leaves the packet a new layer cache whose PREV entry is
-- the cache the object came from, so the next decode of that layer fills the old object in place
-- (adopt) and `pkt.tcp == t` still holds after `t.mss = 1200`. Raw edits (pkt:write...) drop the
-- cache without a link: objects taken before them still work (refresh), pkt.tcp may be a new one.
local PREV = {}
R.PREV = PREV

local function adopt(t, o)
  local c = t[5]
  local p = c and c[PREV]
  if p == nil then return o end
  local K = o[3]
  local name = K.name
  while p do
    local old = p[name]
    if old ~= nil then
      if old and old[3] == K and old ~= o then
        for i = 2, K.n do old[i] = o[i] end
        return old
      end
      return o
    end
    p = p[PREV]
  end
  return o
end
R.adopt = adopt

-- Re-decodes a stale object in place: the object keeps its identity and takes the new offsets.
local function refresh(o)
  local K, t = o[3], o[1]
  local fresh = layer(t, K.name)
  if not fresh or fresh[3] ~= K or fresh[2] ~= t[5] then return false end
  if fresh ~= o then
    for i = 2, K.n do o[i] = fresh[i] end
    local c = t[5]
    if c then c[K.name] = o end
  end
  return true
end
R.refresh = refresh

local function field_list(G)
  local names = {}
  for k in next, G do names[#names + 1] = k end
  sort(names)
  return names
end

-- A kind of protocol object. G: name -> getter(o, bytes, base); S: name -> setter(o, v, pkt)
-- (setters raise errors at level 3: setter, __newindex, the script). `computed`: slot holding a
-- table of fields set by a parse function (defined protocols).
function R.kind(name, G, S, n, region, computed)
  local K = { name = name, G = G, S = S, n = n, region = region }
  local label = 'pkt.' .. name
  local mt = { __metatable = false, __name = label }
  if computed then
    mt.__index = function(o, k)
      local t = o[1]
      local b = t[1]
      if b == nil then dead() end
      if t[5] ~= o[2] and not refresh(o) then return nil end
      local g = G[k]
      if g ~= nil then return g(o, t[1], t[2]) end
      local c = o[computed]
      if c then return c[k] end
      return nil
    end
  else
    mt.__index = function(o, k)
      local g = G[k]
      if g == nil then return nil end
      local t = o[1]
      local b = t[1]
      if b == nil then dead() end
      if t[5] ~= o[2] then
        if not refresh(o) then return nil end
        b = t[1]
      end
      return g(o, b, t[2])
    end
  end
  mt.__newindex = function(o, k, v)
    local s = S[k]
    if s == nil then
      if computed and R.parsing_object == o and G[k] == nil then
        local c = o[computed]
        c[k] = v
        return
      end
      if G[k] ~= nil or computed and o[computed] and o[computed][k] ~= nil then
        error(format('%s.%s is read-only', label, tostring(k)), 2)
      end
      error(format('%s has no field %s', label, tostring(k)), 2)
    end
    local t = o[1]
    if t[1] == nil then dead() end
    if R.parsing_object == o then error(format('%s.%s: a parse function cannot edit the packet', label, tostring(k)), 2) end
    if t[5] ~= o[2] and not refresh(o) then error(format('%s: the packet no longer holds this layer', label), 2) end
    local gen = o[2]
    s(o, v, t)
    if t[5] ~= gen then t[5] = { [PREV] = gen } end
  end
  mt.__tostring = function(o)
    local t = o[1]
    if t[1] == nil then return label .. ' (dead packet)' end
    if K.describe then return K.describe(o) end
    return format('%s (offset %d)', label, o[4])
  end
  -- pairs(obj) walks its fields in name order (with their current values; nil ones skipped).
  local names
  mt.__pairs = function(o)
    names = names or field_list(G)
    local i = 0
    local c = computed and o[computed]
    local extra = c and next(c) ~= nil
    local ck
    return function()
      while true do
        i = i + 1
        local k = names[i]
        if k == nil then
          if not extra then return nil end
          local v
          ck, v = next(c, ck)
          while ck ~= nil and G[ck] ~= nil do ck, v = next(c, ck) end
          return ck, v
        end
        local v = o[k]
        if v ~= nil then return k, v end
      end
    end, o, nil
  end
  K.mt = mt
  R.kinds[name] = K
  return K
end

-- ---------------------------------------------------------------- values

local function u16(b, p)
  local x, y = byte(b, p, p + 1)
  return x << 8 | y
end
R.u16 = u16

local function u32(b, p)
  return (sunpack('>I4', b, p))
end
R.u32 = u32

-- Setter argument checks: error level 4 = check, setter, __newindex, the script.
local function want_int(what, v, lo, hi)
  if mtype(v) ~= 'integer' or v < lo or v > hi then
    error(format('%s must be an integer in %d..%d, got %s', what, lo, hi, tostring(v)), 4)
  end
  return v
end
R.want_int = want_int

local function want_bool(what, v)
  if type(v) ~= 'boolean' then error(format('%s must be a boolean, got %s', what, tostring(v)), 4) end
  return v
end
R.want_bool = want_bool

-- Addresses: text in RFC 5952 form for IPv6, memoised (bounded) because scripts compare them often.
local memo4, memo4n = {}, 0
local function ip4text(key, a1, a2, a3, a4)
  local s = format('%d.%d.%d.%d', a1, a2, a3, a4)
  if memo4n >= 4096 then memo4, memo4n = {}, 0 end
  memo4[key] = s
  memo4n = memo4n + 1
  return s
end
local function ip4str(b, p)
  local a1, a2, a3, a4 = byte(b, p, p + 3)
  local key = a1 << 24 | a2 << 16 | a3 << 8 | a4
  return memo4[key] or ip4text(key, a1, a2, a3, a4)
end
R.ip4str = ip4str

local memo6, memo6n = {}, 0
local function ip6text(w1, w2, w3, w4, w5, w6, w7, w8)
  local w = { w1, w2, w3, w4, w5, w6, w7, w8 }
  if w1 == 0 and w2 == 0 and w3 == 0 and w4 == 0 and w5 == 0 and w6 == 0xffff then
    return format('::ffff:%d.%d.%d.%d', w7 >> 8, w7 & 255, w8 >> 8, w8 & 255)
  end
  -- longest run of two or more zero groups (the first of equal runs) becomes '::'
  local bs, bl, cs, cl = 0, 0, 0, 0
  for i = 1, 8 do
    if w[i] == 0 then
      if cl == 0 then cs = i end
      cl = cl + 1
      if cl > bl then bs, bl = cs, cl end
    else
      cl = 0
    end
  end
  local out = {}
  if bl < 2 then
    for i = 1, 8 do out[i] = format('%x', w[i]) end
    return concat(out, ':')
  end
  local n = 0
  for i = 1, bs - 1 do n = n + 1; out[n] = format('%x', w[i]) end
  local head = concat(out, ':')
  out, n = {}, 0
  for i = bs + bl, 8 do n = n + 1; out[n] = format('%x', w[i]) end
  return head .. '::' .. concat(out, ':')
end

local function ip6str(b, p)
  local key = sub(b, p, p + 15)
  local s = memo6[key]
  if s then return s end
  s = ip6text(sunpack('>I2I2I2I2I2I2I2I2', key))
  if memo6n >= 4096 then memo6, memo6n = {}, 0 end
  memo6[key] = s
  memo6n = memo6n + 1
  return s
end
R.ip6str = ip6str

-- Text to bytes (nil when the text is no address of that family).
local function parse4(s)
  if type(s) ~= 'string' then return nil end
  local a, b, c, d = match(s, '^(%d%d?%d?)%.(%d%d?%d?)%.(%d%d?%d?)%.(%d%d?%d?)$')
  if not a then return nil end
  a, b, c, d = tonumber(a), tonumber(b), tonumber(c), tonumber(d)
  if a > 255 or b > 255 or c > 255 or d > 255 then return nil end
  return char(a, b, c, d)
end
R.parse4 = parse4

local function groups(s, out)
  if s == '' then return true end
  local pos = 1
  while true do
    local g, nxt = match(s, '^(%x%x?%x?%x?)()', pos)
    if not g then return false end
    out[#out + 1] = tonumber(g, 16)
    if nxt > #s then return true end
    if sub(s, nxt, nxt) ~= ':' or nxt == #s then return false end
    pos = nxt + 1
  end
end

local function parse6(s)
  if type(s) ~= 'string' or #s < 2 or #s > 45 then return nil end
  local tail4
  local head = s
  local v4 = match(s, ':(%d+%.%d+%.%d+%.%d+)$')
  if v4 then
    tail4 = parse4(v4)
    if not tail4 then return nil end
    head = sub(s, 1, #s - #v4)            -- keeps the ':' before the IPv4 part
    if sub(head, -2) ~= '::' then head = sub(head, 1, -2) end
  end
  local need = tail4 and 6 or 8
  local a, z = find(head, '::', 1, true)
  local left, right = {}, {}
  if a then
    if find(head, '::', z, true) then return nil end
    if not groups(sub(head, 1, a - 1), left) or not groups(sub(head, z + 1), right) then return nil end
    if #left + #right > need - 1 then return nil end
  else
    if not groups(head, left) or #left ~= need then return nil end
  end
  local out = {}
  for i = 1, #left do out[#out + 1] = spack('>I2', left[i]) end
  if a then out[#out + 1] = rep('\0\0', need - #left - #right) end
  for i = 1, #right do out[#out + 1] = spack('>I2', right[i]) end
  if tail4 then out[#out + 1] = tail4 end
  return concat(out)
end
R.parse6 = parse6

-- Length fields after a change of size by `delta` bytes at or after offset `at`: IPv4 total
-- length, IPv6 payload length, and the UDP length when the change is inside the UDP datagram.
-- (Checksums are made right by the host on accept, or by pkt:checksum().)
function R.adjust_lengths(t, delta, at)
  if delta == 0 then return end
  local ip = layer(t, 'ip')
  if not ip then return end
  local b, base = t[1], t[2]
  local udp = ip[7] == 17 and ip[9] and ip[6] or false
  if ip[4] == 4 then
    local tl = u16(b, base + 3) + delta
    if tl >= 0 and tl <= 0xffff then splice(t, 2, 2, spack('>I2', tl)) end
  else
    local pl = u16(b, base + 5)
    if pl ~= 0 and pl + delta >= 0 and pl + delta <= 0xffff then splice(t, 4, 2, spack('>I2', pl + delta)) end
  end
  if udp and at >= udp + 8 and udp + 8 <= t[3] then
    b, base = t[1], t[2]
    local ul = u16(b, base + udp + 5) + delta
    if ul >= 8 and ul <= 0xffff then splice(t, udp + 4, 2, spack('>I2', ul)) end
  end
end

-- ---------------------------------------------------------------- IP

-- ip object slots: [4] family, [5] header length, [6] offset of what follows the headers
-- (transport, or where the IPv6 walk stopped), [7] protocol there, [8] end of the IP packet
-- (total/payload length, bounded by the bytes held), [9] transport decodable (whole header
-- chain, not a fragment other than the first, sane length), [10] IPv6 fragment header offset
-- or false
local G4, S4, G6, S6 = {}, {}, {}, {}
local function ip_region(o) return o[6], o[8] end
local IP4 = R.kind('ip', G4, S4, 10, ip_region)
local IP6 = R.kind('ip', G6, S6, 10, ip_region)
R.kinds.ip = nil -- 'ip' is either kind; proto-define knows both
R.IP4, R.IP6 = IP4, IP6
local IP4mt, IP6mt = IP4.mt, IP6.mt
IP4.describe = function(o) return format('pkt.ip (IPv4, header %d bytes, protocol %d)', o[5], o[7]) end
IP6.describe = function(o) return format('pkt.ip (IPv6, protocol %d)', o[7]) end

local function dec_ip(t)
  local b, base, len = t[1], t[2], t[3]
  if len < 20 then return nil end
  local c = t[5]
  local v0, x1, l1, l2, x4, x5, f1, f2, hop, pr = byte(b, base + 1, base + 10)
  local ver = v0 >> 4
  local o
  if ver == 4 then
    local hl = (v0 & 15) << 2
    if hl < 20 or hl > len then return nil end
    local tl = l1 << 8 | l2
    local iend, ok = len, true
    if tl < len then
      if tl >= hl then iend = tl elseif tl ~= 0 then ok = false end -- 0: TSO/GSO, length unset
    end
    if f1 & 0x1f | f2 ~= 0 then ok = false end     -- not the first fragment
    o = setmetatable({ t, c, IP4, 4, hl, hl, pr, iend, ok, false }, IP4mt)
  elseif ver == 6 then
    if len < 40 then return nil end
    local pl = x4 << 8 | x5
    local iend = len
    if pl ~= 0 and pl + 40 < len then iend = pl + 40 end
    local nh, off, ok, fh = f1, 40, true, false
    while nh == 0 or nh == 43 or nh == 60 or nh == 51 or nh == 44 do
      if off + 8 > iend then ok = false; break end
      local n0, n1, n2, n3 = byte(b, base + off + 1, base + off + 4)
      if nh == 44 then
        if fh then ok = false; break end
        fh = off
        local fo = n2 << 8 | n3
        nh = n0
        off = off + 8
        if fo & 0xfff8 ~= 0 then ok = false; break end   -- not the first fragment
      else
        local hlen
        if nh == 51 then hlen = (n1 + 2) << 2 else hlen = (n1 + 1) << 3 end
        if off + hlen > iend then ok = false; break end
        nh = n0
        off = off + hlen
      end
    end
    o = setmetatable({ t, c, IP6, 6, 40, off, nh, iend, ok, fh }, IP6mt)
  else
    return nil
  end
  if c[PREV] == nil then return o end
  return adopt(t, o)
end
layers.ip = dec_ip
layers.ip4 = function(t) local ip = layer(t, 'ip'); return ip and ip[4] == 4 and ip or nil end
layers.ip6 = function(t) local ip = layer(t, 'ip'); return ip and ip[4] == 6 and ip or nil end

-- IPv4 fields (offsets: base + 1 is byte 0)
G4.version = function() return 4 end
G4.hdr_len = function(o) return o[5] end
G4.dsfield = function(o, b, base) return byte(b, base + 2) end
G4.dscp = function(o, b, base) return byte(b, base + 2) >> 2 end
G4.ecn = function(o, b, base) return byte(b, base + 2) & 3 end
G4.len = function(o, b, base) local x, y = byte(b, base + 3, base + 4); return x << 8 | y end
G4.id = function(o, b, base) local x, y = byte(b, base + 5, base + 6); return x << 8 | y end
G4.flags = function(o, b, base) return byte(b, base + 7) >> 5 end
G4.rb = function(o, b, base) return byte(b, base + 7) & 0x80 ~= 0 end
G4.df = function(o, b, base) return byte(b, base + 7) & 0x40 ~= 0 end
G4.mf = function(o, b, base) return byte(b, base + 7) & 0x20 ~= 0 end
G4.frag_offset = function(o, b, base) return u16(b, base + 7) & 0x1fff end
G4.ttl = function(o, b, base) return byte(b, base + 9) end
G4.proto = function(o) return o[7] end
G4.checksum = function(o, b, base) return u16(b, base + 11) end
G4.src = function(o, b, base)
  local a1, a2, a3, a4 = byte(b, base + 13, base + 16)
  local key = a1 << 24 | a2 << 16 | a3 << 8 | a4
  return memo4[key] or ip4text(key, a1, a2, a3, a4)
end
G4.dst = function(o, b, base)
  local a1, a2, a3, a4 = byte(b, base + 17, base + 20)
  local key = a1 << 24 | a2 << 16 | a3 << 8 | a4
  return memo4[key] or ip4text(key, a1, a2, a3, a4)
end
G4.options = function(o, b, base) return sub(b, base + 21, base + o[5]) end

local function set_addr4(off, what)
  return function(o, v, t)
    local a = parse4(v)
    if not a then error(format('%s must be an IPv4 address like "192.0.2.1", got %s', what, tostring(v)), 3) end
    splice(t, off, 4, a)
  end
end
S4.src = set_addr4(12, 'pkt.ip.src')
S4.dst = set_addr4(16, 'pkt.ip.dst')
S4.ttl = function(o, v, t) splice(t, 8, 1, char(want_int('pkt.ip.ttl', v, 0, 255))) end
S4.dsfield = function(o, v, t) splice(t, 1, 1, char(want_int('pkt.ip.dsfield', v, 0, 255))) end
S4.dscp = function(o, v, t)
  want_int('pkt.ip.dscp', v, 0, 63)
  splice(t, 1, 1, char(v << 2 | byte(t[1], t[2] + 2) & 3))
end
S4.ecn = function(o, v, t)
  want_int('pkt.ip.ecn', v, 0, 3)
  splice(t, 1, 1, char(byte(t[1], t[2] + 2) & 0xfc | v))
end
S4.id = function(o, v, t) splice(t, 4, 2, spack('>I2', want_int('pkt.ip.id', v, 0, 0xffff))) end
S4.df = function(o, v, t)
  want_bool('pkt.ip.df', v)
  local f = byte(t[1], t[2] + 7)
  splice(t, 6, 1, char(v and f | 0x40 or f & 0xbf))
end

-- IPv6 fields
G6.version = function() return 6 end
G6.hdr_len = function() return 40 end
local function tclass(b, base)
  local x, y = byte(b, base + 1, base + 2)
  return (x & 15) << 4 | y >> 4
end
G6.dsfield = function(o, b, base) return tclass(b, base) end
G6.tclass = G6.dsfield
G6.dscp = function(o, b, base) return tclass(b, base) >> 2 end
G6.ecn = function(o, b, base) return tclass(b, base) & 3 end
G6.flow = function(o, b, base) return (byte(b, base + 2) & 15) << 16 | u16(b, base + 3) end
G6.plen = function(o, b, base) return u16(b, base + 5) end
G6.len = function(o, b, base) return 40 + u16(b, base + 5) end
G6.nxt = function(o, b, base) return byte(b, base + 7) end
G6.ttl = function(o, b, base) return byte(b, base + 8) end
G6.hlim = G6.ttl
G6.proto = function(o) return o[7] end
G6.src = function(o, b, base) return ip6str(b, base + 9) end
G6.dst = function(o, b, base) return ip6str(b, base + 25) end
G6.id = function(o, b, base) local f = o[10]; return f and u32(b, base + f + 5) or nil end
G6.mf = function(o, b, base) local f = o[10]; if f then return byte(b, base + f + 4) & 1 ~= 0 end; return nil end
G6.frag_offset = function(o, b, base) local f = o[10]; return f and u16(b, base + f + 3) >> 3 or nil end

local function set_addr6(off, what)
  return function(o, v, t)
    local a = parse6(v)
    if not a then error(format('%s must be an IPv6 address like "2001:db8::1", got %s', what, tostring(v)), 3) end
    splice(t, off, 16, a)
  end
end
S6.src = set_addr6(8, 'pkt.ip.src')
S6.dst = set_addr6(24, 'pkt.ip.dst')
S6.ttl = function(o, v, t) splice(t, 7, 1, char(want_int('pkt.ip.ttl', v, 0, 255))) end
S6.hlim = S6.ttl
local function set_tclass(t, v)
  local x, y = byte(t[1], t[2] + 1, t[2] + 2)
  splice(t, 0, 2, char(x & 0xf0 | v >> 4, (v & 15) << 4 | y & 15))
end
S6.dsfield = function(o, v, t) set_tclass(t, want_int('pkt.ip.dsfield', v, 0, 255)) end
S6.tclass = S6.dsfield
S6.dscp = function(o, v, t) want_int('pkt.ip.dscp', v, 0, 63); set_tclass(t, v << 2 | tclass(t[1], t[2]) & 3) end
S6.ecn = function(o, v, t) want_int('pkt.ip.ecn', v, 0, 3); set_tclass(t, tclass(t[1], t[2]) & 0xfc | v) end
S6.flow = function(o, v, t)
  want_int('pkt.ip.flow', v, 0, 0xfffff)
  splice(t, 1, 3, char(byte(t[1], t[2] + 2) & 0xf0 | v >> 16, v >> 8 & 255, v & 255))
end
S6.id = function(o, v, t)
  want_int('pkt.ip.id', v, 0, 0xffffffff)
  local f = o[10]
  if not f then error('pkt.ip.id: this IPv6 packet has no fragment header', 3) end
  splice(t, f + 4, 4, spack('>I4', v))
end
S6.df = function() error('pkt.ip.df: IPv6 has no DF flag', 3) end

-- ---------------------------------------------------------------- transport

-- The ip object of t (decoding it if needed), false when t is no IP packet.
local function ip_of(t)
  local ip = t[5].ip
  if ip == nil then ip = layer(t, 'ip') end
  return ip
end
R.ip_of = ip_of

-- TCP: [4] header offset, [5] header length, [6] IP end, [7] source port, [8] destination port
-- (the ports are read with the header length: one byte() call; a fresh object's slots are the
-- packet's values, since every edit makes objects stale)
local GT, ST = {}, {}
local TCP = R.kind('tcp', GT, ST, 8, function(o) return o[4] + o[5], o[6] end)

local TCPmt = TCP.mt
layers.tcp = function(t)
  local c = t[5]
  local ip = c.ip
  if ip == nil then ip = layer(t, 'ip') end
  if not ip or ip[7] ~= 6 or not ip[9] then return nil end
  local l4, iend = ip[6], ip[8]
  if l4 + 20 > iend then return nil end
  local p = t[2] + l4
  local s1, s2, d1, d2, _, _, _, _, _, _, _, _, x = byte(t[1], p + 1, p + 13)
  local hl = (x >> 4) << 2
  if hl < 20 or l4 + hl > iend then return nil end
  local o = setmetatable({ t, c, TCP, l4, hl, iend, s1 << 8 | s2, d1 << 8 | d2 }, TCPmt)
  if c[PREV] == nil then return o end
  return adopt(t, o)
end

GT.srcport = function(o, b, base) local p = base + o[4]; local x, y = byte(b, p + 1, p + 2); return x << 8 | y end
GT.dstport = function(o, b, base) local p = base + o[4]; local x, y = byte(b, p + 3, p + 4); return x << 8 | y end
GT.sport, GT.dport = GT.srcport, GT.dstport
GT.seq = function(o, b, base) local p = base + o[4]; local w, x, y, z = byte(b, p + 5, p + 8); return w << 24 | x << 16 | y << 8 | z end
GT.ack = function(o, b, base) local p = base + o[4]; local w, x, y, z = byte(b, p + 9, p + 12); return w << 24 | x << 16 | y << 8 | z end
GT.hdr_len = function(o) return o[5] end
GT.flags = function(o, b, base) local p = base + o[4]; local x, y = byte(b, p + 13, p + 14); return (x & 15) << 8 | y end
local FLAG_BITS = { fin = 0x01, syn = 0x02, rst = 0x04, psh = 0x08, ack_flag = 0x10, urg = 0x20,
                    ece = 0x40, cwr = 0x80, ae = 0x100, ns = 0x100 }
for name, bit in next, FLAG_BITS do
  GT[name] = function(o, b, base) local p = base + o[4]; local x, y = byte(b, p + 13, p + 14); return (x << 8 | y) & bit ~= 0 end
  ST[name] = function(o, v, t)
    want_bool('pkt.tcp.' .. name, v)
    local p = o[4] + 12
    local f = u16(t[1], t[2] + p + 1)
    splice(t, p, 2, spack('>I2', v and f | bit or f & ~bit))
  end
end
GT.window = function(o, b, base) return u16(b, base + o[4] + 15) end
GT.checksum = function(o, b, base) return u16(b, base + o[4] + 17) end
GT.urgent = function(o, b, base) return u16(b, base + o[4] + 19) end
GT.len = function(o) return o[6] - o[4] - o[5] end
GT.payload = function(o, b, base) return sub(b, base + o[4] + o[5] + 1, base + o[6]) end

-- Walks the options; returns the 1-based position and length of the first option `kind`.
local function find_option(o, b, base, kind)
  local p = base + o[4] + 21
  local e = base + o[4] + o[5]
  while p <= e do
    local k = byte(b, p)
    if k == 0 then return nil end
    if k == 1 then
      p = p + 1
    else
      if p + 1 > e then return nil end
      local l = byte(b, p + 1)
      if l < 2 or p + l - 1 > e then return nil end
      if k == kind then return p, l end
      p = p + l
    end
  end
  return nil
end

GT.options = function(o, b, base)
  local list, n = {}, 0
  local p = base + o[4] + 21
  local e = base + o[4] + o[5]
  while p <= e do
    local k = byte(b, p)
    if k == 0 then break end                       -- EOL ends the list (as in Wireshark)
    if k == 1 then
      n = n + 1; list[n] = { kind = 1, data = '' }
      p = p + 1
    else
      if p + 1 > e then break end
      local l = byte(b, p + 1)
      if l < 2 or p + l - 1 > e then break end
      n = n + 1; list[n] = { kind = k, data = sub(b, p + 2, p + l - 1) }
      p = p + l
    end
  end
  return list
end
GT.mss = function(o, b, base)
  local p, l = find_option(o, b, base, 2)
  if p and l == 4 then return u16(b, p + 2) end
  return nil
end
GT.wscale = function(o, b, base)
  local p, l = find_option(o, b, base, 3)
  if p and l == 3 then return byte(b, p + 2) end
  return nil
end
GT.sack_perm = function(o, b, base)
  local p, l = find_option(o, b, base, 4)
  return p ~= nil and l == 2
end
GT.tsval = function(o, b, base)
  local p, l = find_option(o, b, base, 8)
  if p and l == 10 then return u32(b, p + 2) end
  return nil
end
GT.tsecr = function(o, b, base)
  local p, l = find_option(o, b, base, 8)
  if p and l == 10 then return u32(b, p + 6) end
  return nil
end

local function set_port(off, what)
  return function(o, v, t) splice(t, o[4] + off, 2, spack('>I2', want_int(what, v, 0, 0xffff))) end
end
ST.srcport = set_port(0, 'pkt.tcp.srcport'); ST.sport = ST.srcport
ST.dstport = set_port(2, 'pkt.tcp.dstport'); ST.dport = ST.dstport
ST.seq = function(o, v, t) splice(t, o[4] + 4, 4, spack('>I4', want_int('pkt.tcp.seq', v, 0, 0xffffffff))) end
ST.ack = function(o, v, t) splice(t, o[4] + 8, 4, spack('>I4', want_int('pkt.tcp.ack', v, 0, 0xffffffff))) end
ST.flags = function(o, v, t)
  want_int('pkt.tcp.flags', v, 0, 0xfff)
  local p = o[4] + 12
  splice(t, p, 2, spack('>I2', u16(t[1], t[2] + p + 1) & 0xf000 | v))
end
ST.window = function(o, v, t) splice(t, o[4] + 14, 2, spack('>I2', want_int('pkt.tcp.window', v, 0, 0xffff))) end
ST.urgent = function(o, v, t) splice(t, o[4] + 18, 2, spack('>I2', want_int('pkt.tcp.urgent', v, 0, 0xffff))) end
-- The MSS option is rewritten in place; without one, a 4-byte MSS option is added in front of
-- the others (data offset, IP length updated), when the header has room.
ST.mss = function(o, v, t)
  want_int('pkt.tcp.mss', v, 0, 0xffff)
  local b, base = t[1], t[2]
  local p, l = find_option(o, b, base, 2)
  if p and l == 4 then
    splice(t, p - base - 1 + 2, 2, spack('>I2', v))
    return
  end
  local l4, hl = o[4], o[5]
  if hl + 4 > 60 then error('pkt.tcp.mss: no MSS option and no room in the TCP header to add one', 3) end
  local doff = byte(b, base + l4 + 13)
  splice(t, l4 + 20, 0, '\2\4' .. spack('>I2', v))
  splice(t, l4 + 12, 1, char(((hl + 4) >> 2) << 4 | doff & 15))
  R.adjust_lengths(t, 4, l4)
end

-- UDP: [4] header offset, [5] end of the datagram (UDP length, bounded by the IP end),
-- [6] source port, [7] destination port
local GU, SU = {}, {}
local UDP = R.kind('udp', GU, SU, 7, function(o) return o[4] + 8, o[5] end)

local UDPmt = UDP.mt
layers.udp = function(t)
  local c = t[5]
  local ip = c.ip
  if ip == nil then ip = layer(t, 'ip') end
  if not ip or ip[7] ~= 17 or not ip[9] then return nil end
  local l4, iend = ip[6], ip[8]
  if l4 + 8 > iend then return nil end
  local s1, s2, d1, d2, x, y = byte(t[1], t[2] + l4 + 1, t[2] + l4 + 6)
  local ul = x << 8 | y
  local uend = iend
  if ul >= 8 and l4 + ul < iend then uend = l4 + ul end
  local o = setmetatable({ t, c, UDP, l4, uend, s1 << 8 | s2, d1 << 8 | d2 }, UDPmt)
  if c[PREV] == nil then return o end
  return adopt(t, o)
end

GU.srcport = GT.srcport
GU.dstport = GT.dstport
GU.sport, GU.dport = GU.srcport, GU.dstport
GU.length = function(o, b, base) return u16(b, base + o[4] + 5) end
GU.checksum = function(o, b, base) return u16(b, base + o[4] + 7) end
GU.payload = function(o, b, base) return sub(b, base + o[4] + 9, base + o[5]) end
SU.srcport = set_port(0, 'pkt.udp.srcport'); SU.sport = SU.srcport
SU.dstport = set_port(2, 'pkt.udp.dstport'); SU.dport = SU.dstport

-- ICMP and ICMPv6: [4] header offset, [5] IP end
local function icmp_kind(name, echo, mtu_type, mtu_wide)
  local G, S = {}, {}
  local K = R.kind(name, G, S, 5, function(o)
    local s = o[4] + 8
    if s > o[5] then s = o[5] end
    return s, o[5]
  end)
  local what = 'pkt.' .. name
  G.type = function(o, b, base) return byte(b, base + o[4] + 1) end
  G.code = function(o, b, base) return byte(b, base + o[4] + 2) end
  G.checksum = function(o, b, base) return u16(b, base + o[4] + 3) end
  local function has_echo(o, b, base) return echo[byte(b, base + o[4] + 1)] and o[4] + 8 <= o[5] end
  G.id = function(o, b, base) if has_echo(o, b, base) then return u16(b, base + o[4] + 5) end; return nil end
  G.seq = function(o, b, base) if has_echo(o, b, base) then return u16(b, base + o[4] + 7) end; return nil end
  G.mtu = function(o, b, base)
    local l4 = o[4]
    if l4 + 8 > o[5] then return nil end
    local ty, code = byte(b, base + l4 + 1, base + l4 + 2)
    if ty ~= mtu_type then return nil end
    if mtu_wide then return u32(b, base + l4 + 5) end
    if code ~= 4 then return nil end
    return u16(b, base + l4 + 7)
  end
  G.payload = function(o, b, base)
    local s = o[4] + 8
    if s > o[5] then return '' end
    return sub(b, base + s + 1, base + o[5])
  end
  S.type = function(o, v, t) splice(t, o[4], 1, char(want_int(what .. '.type', v, 0, 255))) end
  S.code = function(o, v, t) splice(t, o[4] + 1, 1, char(want_int(what .. '.code', v, 0, 255))) end
  local function set_echo(off, f)
    return function(o, v, t)
      want_int(what .. '.' .. f, v, 0, 0xffff)
      if not has_echo(o, t[1], t[2]) then error(format('%s.%s: not an echo request or reply', what, f), 3) end
      splice(t, o[4] + off, 2, spack('>I2', v))
    end
  end
  S.id = set_echo(4, 'id')
  S.seq = set_echo(6, 'seq')
  return K
end
local ICMP = icmp_kind('icmp', { [0] = true, [8] = true }, 3, false)
local ICMP6 = icmp_kind('icmp6', { [128] = true, [129] = true }, 2, true)

local function icmp_decoder(proto, family, K)
  local mt = K.mt
  return function(t)
    local ip = ip_of(t)
    if not ip or ip[7] ~= proto or not ip[9] or ip[4] ~= family then return nil end
    local l4, iend = ip[6], ip[8]
    if l4 + 4 > iend then return nil end
    local c = t[5]
    local o = setmetatable({ t, c, K, l4, iend }, mt)
    if c[PREV] == nil then return o end
    return adopt(t, o)
  end
end
layers.icmp = icmp_decoder(1, 4, ICMP)
layers.icmp6 = icmp_decoder(58, 6, ICMP6)

-- The fields scripts read on most packets, read inline by __index (no getter call): the same
-- values as the getters above. Anything else, and dead or stale objects, take the general path.
do
  local generic4, generic6, genericT, genericU = IP4mt.__index, IP6mt.__index, TCPmt.__index, UDPmt.__index
  IP4mt.__index = function(o, k)
    local t = o[1]
    local b = t[1]
    if b == nil or t[5] ~= o[2] then return generic4(o, k) end
    local base = t[2]
    if k == 'src' or k == 'dst' then
      local p = k == 'src' and base + 13 or base + 17
      local a1, a2, a3, a4 = byte(b, p, p + 3)
      local key = a1 << 24 | a2 << 16 | a3 << 8 | a4
      return memo4[key] or ip4text(key, a1, a2, a3, a4)
    elseif k == 'ttl' then return byte(b, base + 9)
    elseif k == 'proto' then return o[7]
    end
    local g = G4[k]
    if g == nil then return nil end
    return g(o, b, base)
  end
  IP6mt.__index = function(o, k)
    local t = o[1]
    local b = t[1]
    if b == nil or t[5] ~= o[2] then return generic6(o, k) end
    local base = t[2]
    if k == 'src' then return ip6str(b, base + 9)
    elseif k == 'dst' then return ip6str(b, base + 25)
    elseif k == 'ttl' then return byte(b, base + 8)
    elseif k == 'proto' then return o[7]
    end
    local g = G6[k]
    if g == nil then return nil end
    return g(o, b, base)
  end
  TCPmt.__index = function(o, k)
    local t = o[1]
    local b = t[1]
    if b == nil or t[5] ~= o[2] then return genericT(o, k) end
    local base = t[2]
    if k == 'dstport' or k == 'dport' then return o[8]
    elseif k == 'srcport' or k == 'sport' then return o[7]
    elseif k == 'syn' then return byte(b, base + o[4] + 14) & 2 ~= 0
    end
    local g = GT[k]
    if g == nil then return nil end
    return g(o, b, base)
  end
  UDPmt.__index = function(o, k)
    local t = o[1]
    local b = t[1]
    if b == nil or t[5] ~= o[2] then return genericU(o, k) end
    local base = t[2]
    if k == 'dstport' or k == 'dport' then return o[7]
    elseif k == 'srcport' or k == 'sport' then return o[6]
    end
    local g = GU[k]
    if g == nil then return nil end
    return g(o, b, base)
  end
end

-- The transport object of a packet (tcp, udp, icmp or icmp6), or nil.
local TRANSPORT = { [6] = 'tcp', [17] = 'udp', [1] = 'icmp', [58] = 'icmp6' }
function R.transport(t)
  local ip = layer(t, 'ip')
  if not ip or not ip[9] then return nil, ip end
  local name = TRANSPORT[ip[7]]
  if not name then return nil, ip end
  return layer(t, name) or nil, ip
end

-- pkt.payload: the transport payload, or the IP payload when there is no transport object.
layers.payload = function(t)
  local o, ip = R.transport(t)
  if not ip then return nil end
  local s, e
  if o then s, e = o[3].region(o) else s, e = ip[6], ip[8] end
  if s > e then s = e end
  local base = t[2]
  return sub(t[1], base + s + 1, base + e)
end
