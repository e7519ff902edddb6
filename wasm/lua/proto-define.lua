-- Protocol objects, part 3: proto.define{} (API.md section 4, "Defining protocols").
--
-- A defined protocol is a layer like the built-in ones: pkt.<name> decodes it (once per packet,
-- lazily) from the bytes its parent (`over`) carries, when the parent's port or the `match`
-- function says so. Its fields are compiled at define time into getter/setter closures over
-- the object's region [s, e) of the packet; a field that does not fit in the region reads as
-- nil. An optional `parse(bytes, obj)` sets computed fields (text protocols), or returns false
-- to say "not this protocol".
--
-- object slots: [4] region start, [5] region end, [6] computed fields (table) or false
local P, H = ...
local R = P.proto

local byte, sub, format, sunpack, spack, match = string.byte, string.sub, string.format, string.unpack,
  string.pack, string.match
local setmetatable, error, type, tostring, next = setmetatable, error, type, tostring, next
local mtype, mininteger, maxinteger = math.type, math.mininteger, math.maxinteger

local layers, splice = P.layers, P.splice
local layer, u16, want_int, want_bool, adopt = R.layer, R.u16, R.want_int, R.want_bool, R.adopt
local ip4str, ip6str, parse4, parse6 = R.ip4str, R.ip6str, R.parse4, R.parse6

local DEF_KEYS = { name = true, over = true, port = true, match = true, fields = true, parse = true, payload = true }
local FIELD_KEYS = { bit = true, bits = true, offset = true, size = true, len = true, type = true, le = true, signed = true }
local TYPES = { int = true, bool = true, bytes = true, string = true, ipv4 = true, ipv6 = true }
local PORTED = { tcp = true, udp = true }

local function ident(s) return type(s) == 'string' and match(s, '^[%a_][%w_]*$') ~= nil end
local function nonneg(v) return mtype(v) == 'integer' and v >= 0 end

-- Compiles one field spec. Returns getter, setter, extent (bytes fields: where they lie), the
-- field's type, or nil and a message.
local function compile(label, f, getters)
  for k in next, f do
    if not FIELD_KEYS[k] then return nil, format("unknown key '%s'", tostring(k)) end
  end
  local ty = f.type
  if ty ~= nil and not TYPES[ty] then return nil, 'type must be one of int, bool, bytes, string, ipv4, ipv6' end
  if f.le ~= nil and type(f.le) ~= 'boolean' then return nil, 'le must be a boolean' end
  if f.signed ~= nil and type(f.signed) ~= 'boolean' then return nil, 'signed must be a boolean' end

  if f.bit ~= nil then
    -- a bit field: `bits` wide (default 1), `bit` bits from the region's start, big-endian
    if f.offset ~= nil or f.size ~= nil or f.len ~= nil then return nil, 'give either bit (and bits) or offset (and size)' end
    if f.le or f.signed then return nil, 'bit fields are unsigned and big-endian (no le or signed)' end
    if not nonneg(f.bit) then return nil, 'bit must be a non-negative integer' end
    local bits = f.bits == nil and 1 or f.bits
    if mtype(bits) ~= 'integer' or bits < 1 or bits > 64 then return nil, 'bits must be an integer in 1..64' end
    ty = ty or 'int'
    if ty ~= 'int' and ty ~= 'bool' then return nil, 'a bit field has type int or bool' end
    local sb, shift = f.bit >> 3, f.bit & 7
    local nb = (shift + bits + 7) >> 3
    if nb > 8 then return nil, 'a bit field may span at most 8 bytes' end
    local fmt = '>I' .. nb
    local rs = nb * 8 - shift - bits
    local mask = bits == 64 and -1 or (1 << bits) - 1
    local get = function(o, b, base)
      local p = o[4] + sb
      if p + nb > o[5] then return nil end
      local v = (sunpack(fmt, b, base + p + 1) >> rs) & mask
      if ty == 'bool' then return v ~= 0 end
      return v
    end
    local set = function(o, v, t)
      if ty == 'bool' then
        want_bool(label, v)
        v = v and 1 or 0
      elseif bits == 64 then
        want_int(label, v, mininteger, maxinteger)
      else
        want_int(label, v, 0, mask)
      end
      local p = o[4] + sb
      if p + nb > o[5] then error(label .. ' is not in this packet', 3) end
      local acc = sunpack(fmt, t[1], t[2] + p + 1)
      acc = acc & ~(mask << rs) | v << rs
      splice(t, p, nb, spack(fmt, acc))
    end
    return get, set, nil, ty
  end

  if f.offset == nil then return nil, 'needs bit (and bits) or offset (and size)' end
  if f.bits ~= nil then return nil, 'bits goes with bit, not offset' end
  local off = f.offset
  if not nonneg(off) then return nil, 'offset must be a non-negative integer' end
  local size = f.size
  if size ~= nil and not nonneg(size) then return nil, 'size must be a non-negative integer' end
  if ty == nil then
    if f.len ~= nil or size == nil then ty = 'bytes' else ty = 'int' end
  end
  if ty == 'string' then ty = 'bytes' end

  if ty == 'int' or ty == 'bool' then
    if size ~= 1 and size ~= 2 and size ~= 4 and size ~= 8 then return nil, 'size must be 1, 2, 4 or 8 (or type = "bytes")' end
    if f.len ~= nil then return nil, 'len goes with bytes fields' end
    local fmt = (f.le and '<' or '>') .. (f.signed and 'i' or 'I') .. size
    local lo, hi
    if size == 8 then lo, hi = mininteger, maxinteger
    elseif f.signed then lo, hi = -(1 << (size * 8 - 1)), (1 << (size * 8 - 1)) - 1
    else lo, hi = 0, (1 << (size * 8)) - 1 end
    local get = function(o, b, base)
      local p = o[4] + off
      if p + size > o[5] then return nil end
      local v = sunpack(fmt, b, base + p + 1)
      if ty == 'bool' then return v ~= 0 end
      return v
    end
    local set = function(o, v, t)
      if ty == 'bool' then want_bool(label, v); v = v and 1 or 0 else want_int(label, v, lo, hi) end
      local p = o[4] + off
      if p + size > o[5] then error(label .. ' is not in this packet', 3) end
      splice(t, p, size, spack(fmt, v))
    end
    return get, set, nil, ty
  end

  if f.le or f.signed then return nil, 'le and signed go with integer fields' end

  if ty == 'ipv4' or ty == 'ipv6' then
    local n = ty == 'ipv4' and 4 or 16
    if size ~= nil and size ~= n then return nil, format('an %s field has size %d', ty, n) end
    if f.len ~= nil then return nil, 'len goes with bytes fields' end
    local fmt, parse = ty == 'ipv4' and ip4str or ip6str, ty == 'ipv4' and parse4 or parse6
    local get = function(o, b, base)
      local p = o[4] + off
      if p + n > o[5] then return nil end
      return fmt(b, base + p + 1)
    end
    local set = function(o, v, t)
      local a = parse(v)
      if not a then error(format('%s must be an %s address, got %s', label, ty == 'ipv4' and 'IPv4' or 'IPv6', tostring(v)), 3) end
      local p = o[4] + off
      if p + n > o[5] then error(label .. ' is not in this packet', 3) end
      splice(t, p, n, a)
    end
    return get, set, nil, ty
  end

  -- bytes: a fixed size, a length taken from another field (`len`), or to the region's end
  if f.len ~= nil then
    if size ~= nil then return nil, 'give either size or len' end
    if not ident(f.len) then return nil, 'len must name another field' end
    local lname = f.len
    local function extent(o, b, base)
      local lg = getters[lname]
      local n = lg(o, b, base)
      local p = o[4] + off
      if mtype(n) ~= 'integer' or n < 0 or p + n > o[5] then return nil end
      return p, p + n
    end
    local get = function(o, b, base)
      local p, q = extent(o, b, base)
      if not p then return nil end
      return sub(b, base + p + 1, base + q)
    end
    local set = function(o, v, t)
      local p, q = extent(o, t[1], t[2])
      if not p then error(label .. ' is not in this packet', 3) end
      if type(v) ~= 'string' or #v ~= q - p then
        error(format('%s must be a string of %d bytes (its length field says so)', label, q - p), 3)
      end
      splice(t, p, #v, v)
    end
    return get, set, extent, ty, lname
  end
  if size ~= nil then
    local function extent(o)
      local p = o[4] + off
      if p + size > o[5] then return nil end
      return p, p + size
    end
    local get = function(o, b, base)
      local p = o[4] + off
      if p + size > o[5] then return nil end
      return sub(b, base + p + 1, base + p + size)
    end
    local set = function(o, v, t)
      local p = o[4] + off
      if p + size > o[5] then error(label .. ' is not in this packet', 3) end
      if type(v) ~= 'string' or #v ~= size then error(format('%s must be a string of %d bytes', label, size), 3) end
      splice(t, p, size, v)
    end
    return get, set, extent, ty
  end
  local function extent(o)
    local p = o[4] + off
    if p > o[5] then return nil end
    return p, o[5]
  end
  local get = function(o, b, base)
    local p = o[4] + off
    if p > o[5] then return nil end
    return sub(b, base + p + 1, base + o[5])
  end
  -- to the end: any length; the packet grows or shrinks and the IP/UDP lengths follow
  local set = function(o, v, t)
    if type(v) ~= 'string' then error(label .. ' must be a string', 3) end
    local p, e = o[4] + off, o[5]
    if p > e then error(label .. ' is not in this packet', 3) end
    if t[3] - (e - p) + #v > 65535 then error(label .. ': the packet would exceed 65535 bytes', 3) end
    splice(t, p, e - p, v)
    R.adjust_lengths(t, #v - (e - p), p)
  end
  return get, set, extent, ty
end

-- The decoder of a defined protocol: parent, port or match, object, parse.
local function decoder(K, over, ports, matchf, parse)
  return function(t)
    local par = layer(t, over)
    if not par then return nil end
    local gen = t[5]
    local b, base = t[1], t[2]
    if ports then
      local l4 = par[4]
      if not (ports[u16(b, base + l4 + 1)] or ports[u16(b, base + l4 + 3)]) then return nil end
    end
    local s, e = par[3].region(par)
    if s > e then s = e end
    local bytes
    if matchf or parse then bytes = sub(b, base + s + 1, base + e) end
    if matchf and (not matchf(par, bytes) or t[5] ~= gen) then return nil end
    local o = setmetatable({ t, gen, K, s, e, false }, K.mt)
    if parse then
      o[6] = {}
      local prev = R.parsing_object
      R.parsing_object = o
      local r = parse(bytes, o)
      R.parsing_object = prev
      if r == false or t[5] ~= gen then return nil end
    end
    return adopt(t, o)
  end
end

local OVER_BUILTIN = { ip = true, ip4 = true, ip6 = true, tcp = true, udp = true, icmp = true, icmp6 = true,
                       dns = true, http = true, tls = true }
local defined = {}

local function define(spec)
  if type(spec) ~= 'table' then error('proto.define: a table expected', 2) end
  for k in next, spec do
    if not DEF_KEYS[k] then error(format("proto.define: unknown key '%s'", tostring(k)), 2) end
  end
  local name = spec.name
  if not ident(name) then error('proto.define: name must be an identifier (letters, digits, _)', 2) end
  local who = 'proto.define ' .. name
  if layers[name] ~= nil or P.packet_methods[name] ~= nil or P.packet_getters[name] ~= nil
    or P.packet_setters[name] ~= nil then
    error(format("%s: the name '%s' is already taken (a protocol or a packet field)", who, name), 2)
  end
  local over = spec.over
  if type(over) ~= 'string' or not (OVER_BUILTIN[over] or defined[over]) then
    error(format("%s: over must name a protocol (ip, ip4, ip6, tcp, udp, icmp, icmp6, dns, http, tls or a defined one), got %s",
      who, tostring(over)), 2)
  end
  local ports
  if spec.port ~= nil then
    if not PORTED[over] then error(format('%s: port needs over = "tcp" or "udp"', who), 2) end
    ports = {}
    local list = type(spec.port) == 'table' and spec.port or { spec.port }
    local n = 0
    for _, p in next, list do
      if mtype(p) ~= 'integer' or p < 0 or p > 65535 then
        error(format('%s: port must be an integer in 0..65535 or a list of them, got %s', who, tostring(p)), 2)
      end
      ports[p] = true
      n = n + 1
    end
    if n == 0 then error(format('%s: port list is empty', who), 2) end
  end
  if spec.match ~= nil and type(spec.match) ~= 'function' then error(format('%s: match must be a function', who), 2) end
  if spec.parse ~= nil and type(spec.parse) ~= 'function' then error(format('%s: parse must be a function', who), 2) end
  local fields = spec.fields
  if fields == nil then fields = {} end
  if type(fields) ~= 'table' then error(format('%s: fields must be a table', who), 2) end

  local G, S, extents, types, lens = {}, {}, {}, {}, {}
  for fname, f in next, fields do
    if not ident(fname) then error(format('%s: field names must be identifiers, got %s', who, tostring(fname)), 2) end
    local fwho = format("%s: field '%s'", who, fname)
    if type(f) ~= 'table' then error(fwho .. ': a table like { offset = 0, size = 2 } expected', 2) end
    local get, set, extent, ty, lname = compile('pkt.' .. name .. '.' .. fname, f, G)
    if not get then error(fwho .. ': ' .. set, 2) end
    G[fname], S[fname], extents[fname], types[fname] = get, set, extent, ty
    if lname then lens[fname] = lname end
  end
  for fname, lname in next, lens do
    if types[lname] ~= 'int' then
      error(format("%s: field '%s': len must name an integer field of %s, got '%s'", who, fname, name, lname), 2)
    end
  end
  local region
  local payload = spec.payload
  if payload ~= nil then
    if not ident(payload) or not extents[payload] then
      error(format("%s: payload must name a bytes field of %s, got %s", who, name, tostring(payload)), 2)
    end
    local extent = extents[payload]
    region = function(o)
      local t = o[1]
      local p, q = extent(o, t[1], t[2])
      if not p then return o[5], o[5] end
      return p, q
    end
  else
    region = function(o) return o[4], o[5] end
  end

  local K = R.kind(name, G, S, 6, region, 6)
  defined[name] = K
  layers[name] = decoder(K, over, ports, spec.match, spec.parse)
end

P.lib.proto = { define = define }
