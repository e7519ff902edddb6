-- Protocol objects, part 2: pkt.dns, pkt.http, pkt.tls (read-only). Each works on the bytes of
-- one packet: no reassembly, so a message that continues in later segments shows what this
-- segment holds. Decoding is lazy: the object exists once the first bytes look right, and its
-- sections are parsed on first use, then kept in the object's slots.
local P, H = ...
local R = P.proto

local byte, sub, format, sunpack = string.byte, string.sub, string.format, string.unpack
local match, find, lower, gsub = string.match, string.find, string.lower, string.gsub
local concat = table.concat
local setmetatable, tonumber, next = setmetatable, tonumber, next

local layers = P.layers
local layer, u16, u32, ip4str, ip6str, adopt = R.layer, R.u16, R.u32, R.ip4str, R.ip6str, R.adopt

local ip_of = R.ip_of

-- The TCP object of t when t is TCP (without decoding any other transport).
local function tcp_of(t)
  local c = t[5]
  local o = c.tcp
  if o == nil then
    local ip = c.ip
    if ip == nil then ip = layer(t, 'ip') end
    if not ip or ip[7] ~= 6 then return false end
    o = layer(t, 'tcp')
  end
  return o
end

-- ---------------------------------------------------------------- DNS

-- slots: [4] message start, [5] message end, [6] questions, [7] offset after the questions,
-- [8] answers, [9] authorities, [10] additionals (lists, false until parsed)
local GD = {}
local DNS = R.kind('dns', GD, {}, 10, function(o) return o[4], o[5] end)

local DNSmt = DNS.mt
layers.dns = function(t)
  local ip = ip_of(t)
  if not ip then return nil end
  local proto = ip[7]
  if proto ~= 17 and proto ~= 6 then return nil end
  local o = layer(t, proto == 17 and 'udp' or 'tcp')
  if not o then return nil end
  local s, e = o[3].region(o)
  local b, base = t[1], t[2]
  local p = base + o[4]
  local s1, s2, d1, d2 = byte(b, p + 1, p + 4)
  if s1 << 8 | s2 ~= 53 and d1 << 8 | d2 ~= 53 then return nil end
  if proto == 6 then
    -- DNS over TCP: a 2-byte length, then the message (this segment must start one)
    if s + 2 > e then return nil end
    local n = u16(b, base + s + 1)
    s = s + 2
    if s + n < e then e = s + n end
  end
  if s + 12 > e then return nil end
  return adopt(t, setmetatable({ t, t[5], DNS, s, e, false, false, false, false, false }, DNSmt))
end

-- A domain name at packet offset p inside the message [s, e): the name ('' for the root) and
-- the offset after it, or nil. Compression pointers may go anywhere inside the message; at
-- most 64 of them per name, and a name of at most 255 bytes, as RFC 1035 says.
local function dname(b, base, s, e, p)
  local labels, n, total, after, jumps = nil, 0, 0, nil, 0
  while true do
    if p >= e then return nil end
    local l = byte(b, base + p + 1)
    if l == 0 then
      p = p + 1
      break
    elseif l >= 0xc0 then
      if p + 2 > e then return nil end
      jumps = jumps + 1
      if jumps > 64 then return nil end
      if not after then after = p + 2 end
      p = s + ((l & 0x3f) << 8 | byte(b, base + p + 2))
    elseif l >= 0x40 then
      return nil
    else
      if p + 1 + l > e then return nil end
      total = total + l + 1
      if total > 255 then return nil end
      n = n + 1
      if labels == nil then labels = {} end
      labels[n] = sub(b, base + p + 2, base + p + 1 + l)
      p = p + 1 + l
    end
  end
  return n == 0 and '' or concat(labels, '.'), after or p
end

local function parse_questions(o, b, base)
  local s, e = o[4], o[5]
  local list, p = {}, s + 12
  local count = u16(b, base + s + 5)
  for i = 1, count do
    local name, q = dname(b, base, s, e, p)
    if not name or q + 4 > e then break end
    list[i] = { name = name, type = u16(b, base + q + 1), class = u16(b, base + q + 3) }
    p = q + 4
  end
  o[6], o[7] = list, #list == count and p or false
  return list
end

local function rdata(rr, ty, b, base, s, e, p, l)
  if ty == 1 and l == 4 then return ip4str(b, base + p + 1) end
  if ty == 28 and l == 16 then return ip6str(b, base + p + 1) end
  if ty == 2 or ty == 5 or ty == 12 or ty == 39 then return (dname(b, base, s, e, p)) end
  if ty == 15 and l >= 3 then
    rr.preference = u16(b, base + p + 1)
    return (dname(b, base, s, e, p + 2))
  end
  if ty == 33 and l >= 7 then
    rr.priority, rr.weight, rr.port = u16(b, base + p + 1), u16(b, base + p + 3), u16(b, base + p + 5)
    return (dname(b, base, s, e, p + 6))
  end
  if ty == 16 then
    local strings, q, z = {}, p, p + l
    while q < z do
      local n = byte(b, base + q + 1)
      if q + 1 + n > z then break end
      strings[#strings + 1] = sub(b, base + q + 2, base + q + 1 + n)
      q = q + 1 + n
    end
    rr.strings = strings
    return concat(strings)
  end
  if ty == 6 then
    local mname, q = dname(b, base, s, e, p)
    if mname then
      local rname, q2 = dname(b, base, s, e, q)
      if rname and q2 + 20 <= p + l then
        rr.rname = rname
        rr.serial, rr.refresh, rr.retry, rr.expire, rr.minimum = sunpack('>I4I4I4I4I4', b, base + q2 + 1)
      end
    end
    return mname
  end
  return sub(b, base + p + 1, base + p + l)
end

-- Answers, authorities and additionals, in one pass (each needs the end of the one before).
local function parse_records(o, b, base)
  local s, e = o[4], o[5]
  if not o[6] then parse_questions(o, b, base) end
  local p = o[7]
  local sections = { {}, {}, {} }
  for k = 1, 3 do
    local list = sections[k]
    local count = p and u16(b, base + s + 5 + 2 * k) or 0
    for i = 1, count do
      local name, q = dname(b, base, s, e, p)
      if not name or q + 10 > e then p = false; break end
      local ty, class, ttl, l = sunpack('>I2I2I4I2', b, base + q + 1)
      q = q + 10
      if q + l > e then p = false; break end
      local rr = { name = name, type = ty, class = class, ttl = ttl }
      rr.data = rdata(rr, ty, b, base, s, e, q, l)
      list[i] = rr
      p = q + l
    end
  end
  o[8], o[9], o[10] = sections[1], sections[2], sections[3]
end

local function flag(mask) return function(o, b, base) return u16(b, base + o[4] + 3) & mask ~= 0 end end
GD.id = function(o, b, base) return u16(b, base + o[4] + 1) end
GD.flags = function(o, b, base) return u16(b, base + o[4] + 3) end
GD.qr = flag(0x8000)
GD.opcode = function(o, b, base) return byte(b, base + o[4] + 3) >> 3 & 15 end
GD.aa = flag(0x0400)
GD.tc = flag(0x0200)
GD.rd = flag(0x0100)
GD.ra = flag(0x0080)
GD.z = flag(0x0040)
GD.ad = flag(0x0020)
GD.cd = flag(0x0010)
GD.rcode = function(o, b, base) return byte(b, base + o[4] + 4) & 15 end
GD.qdcount = function(o, b, base) return u16(b, base + o[4] + 5) end
GD.ancount = function(o, b, base) return u16(b, base + o[4] + 7) end
GD.nscount = function(o, b, base) return u16(b, base + o[4] + 9) end
GD.arcount = function(o, b, base) return u16(b, base + o[4] + 11) end
GD.questions = function(o, b, base) return o[6] or parse_questions(o, b, base) end
local function first_question(o, b, base)
  local q = o[6] or parse_questions(o, b, base)
  return q[1]
end
GD.qname = function(o, b, base) local q = first_question(o, b, base); return q and q.name end
GD.qtype = function(o, b, base) local q = first_question(o, b, base); return q and q.type end
GD.qclass = function(o, b, base) local q = first_question(o, b, base); return q and q.class end
GD.answers = function(o, b, base) if not o[8] then parse_records(o, b, base) end; return o[8] end
GD.authorities = function(o, b, base) if not o[8] then parse_records(o, b, base) end; return o[9] end
GD.additionals = function(o, b, base) if not o[8] then parse_records(o, b, base) end; return o[10] end

-- ---------------------------------------------------------------- HTTP

-- slots: [4] payload start, [5] payload end, [6] the text of the segment, [7] position after the
-- start line, [8] method, [9] uri, [10] version, [11] status, [12] reason, [13] headers, [14] body
local GH = {}
local HTTP = R.kind('http', GH, {}, 14, function(o) return o[4], o[5] end)

local METHODS = {}
for _, m in next, { 'GET', 'HEAD', 'POST', 'PUT', 'DELETE', 'CONNECT', 'OPTIONS', 'TRACE', 'PATCH',
  'PROPFIND', 'PROPPATCH', 'MKCOL', 'COPY', 'MOVE', 'LOCK', 'UNLOCK', 'SEARCH', 'REPORT', 'PURGE' } do
  METHODS[m] = true
end

-- first letters of the methods below (and of HTTP/1.x): a quick "no" for most other payloads
local FIRST = {}
for _, c in next, { 'G', 'H', 'P', 'D', 'C', 'O', 'T', 'M', 'L', 'U', 'S', 'R' } do FIRST[byte(c)] = true end
local HTTPmt = HTTP.mt
layers.http = function(t)
  local o = t[5].tcp
  if o == nil then o = tcp_of(t) end
  if not o then return nil end
  local s, e = o[4] + o[5], o[6]
  if e - s < 14 then return nil end
  local b, base = t[1], t[2]
  local p = base + s
  local c1, c2 = byte(b, p + 1, p + 2)
  if not FIRST[c1] or c2 < 65 or c2 > 90 then return nil end
  local text = sub(b, p + 1, base + e)
  local m, uri, ver, after = match(text, '^(%u+) ([^ \r\n]+) (HTTP/1%.%d)\r?\n()')
  if m then
    if not METHODS[m] then return nil end
    return adopt(t, setmetatable({ t, t[5], HTTP, s, e, text, after, m, uri, ver, false, false, false, false }, HTTPmt))
  end
  local status, reason
  ver, status, reason, after = match(text, '^(HTTP/1%.%d) (%d%d%d) ?([^\r\n]*)\r?\n()')
  if not ver then return nil end
  return adopt(t, setmetatable({ t, t[5], HTTP, s, e, text, after, false, false, ver, tonumber(status), reason, false, false }, HTTPmt))
end

-- Blanks (space, tab) off both ends, in linear time: patterns like '^%s*(.-)%s*$' take
-- quadratic time on a long run of blanks, and a segment may be 64 KiB.
local function trim(s)
  local a = find(s, '[^ \t]')
  if not a then return '' end
  return match(s, '^.*[^ \t]', a)
end

-- Header lines up to the empty line (or the end of the segment: a line cut by the segment's end
-- is left out). Names are lower-cased; values lose surrounding blanks; a repeated header's
-- values are joined with ", "; obsolete folded lines continue the value before them.
local function parse_headers(o)
  local text, pos = o[6], o[7]
  local h = {}
  local last
  while true do
    local line, nxt = match(text, '^([^\n]*)\n()', pos)
    if not line then break end
    pos = nxt
    if sub(line, -1) == '\r' then line = sub(line, 1, -2) end
    if line == '' then o[14] = sub(text, pos); break end
    local c = byte(line, 1)
    if (c == 32 or c == 9) and last then
      h[last] = h[last] .. ' ' .. trim(line)
    else
      local name, value = match(line, '^([^:%s]+):(.*)$')
      if name then
        value = trim(value)
        name = lower(name)
        local old = h[name]
        h[name] = old and old .. ', ' .. value or value
        last = name
      else
        last = nil
      end
    end
  end
  o[13] = h
  return h
end

GH.method = function(o) return o[8] or nil end
GH.uri = function(o) return o[9] or nil end
GH.version = function(o) return o[10] end
GH.status = function(o) return o[11] or nil end
GH.reason = function(o) return o[12] or nil end
GH.request = function(o) return o[8] ~= false end
GH.headers = function(o) return o[13] or parse_headers(o) end
GH.body = function(o) if not o[13] then parse_headers(o) end; return o[14] or nil end
local function header(name) return function(o) return (o[13] or parse_headers(o))[name] end end
-- Host without building the header table (scripts ask for it on every request): the first
-- complete "Host:" line of the header block, unless there are two (then the joined value).
local HOST = '\n[Hh][Oo][Ss][Tt]:([^\r\n]*)\r?\n'
GH.host = function(o)
  local h = o[13]
  if h then return h.host end
  local text, after = o[6], o[7]
  local stop = find(text, '\n\r?\n', after - 1)
  local a, z, v = find(text, HOST, after - 1)
  if not a or (stop and a >= stop) then return nil end
  local a2 = find(text, HOST, z)
  local c = byte(text, z + 1)
  if (a2 and not (stop and a2 >= stop)) or c == 32 or c == 9 then return parse_headers(o).host end
  return trim(v)
end
GH.user_agent = header('user-agent')
GH.content_type = header('content-type')
GH.content_length = function(o)
  local v = (o[13] or parse_headers(o))['content-length']
  v = v and match(v, '^%d+$') and tonumber(v)
  return v or nil
end

-- ---------------------------------------------------------------- TLS

-- slots: [4] payload start, [5] payload end, [6] the decoded ClientHello (a table, or false)
local GS = {}
local TLS = R.kind('tls', GS, {}, 6, function(o) return o[4], o[5] end)

local TLSmt = TLS.mt
layers.tls = function(t)
  local o = t[5].tcp
  if o == nil then o = tcp_of(t) end
  if not o then return nil end
  local s, e = o[4] + o[5], o[6]
  if e - s < 11 then return nil end
  local b, base = t[1], t[2]
  local ct, major, minor, _, _, hs = byte(b, base + s + 1, base + s + 6)
  if ct ~= 22 or major ~= 3 or minor > 4 or hs ~= 1 then return nil end
  return adopt(t, setmetatable({ t, t[5], TLS, s, e, false }, TLSmt))
end

-- Decodes as much of the ClientHello as this segment holds.
local function hello(o, b, base)
  local s, e = o[4], o[5]
  local rl = u16(b, base + s + 4)
  if s + 5 + rl < e then e = s + 5 + rl end
  local h = { record_version = u16(b, base + s + 2), handshake_type = 1, version = u16(b, base + s + 10),
              ciphers = {}, extensions = {}, alpn = {}, versions = {}, groups = {} }
  o[6] = h
  local p = s + 11 + 32                          -- after the random
  if p + 1 > e then return h end
  local sl = byte(b, base + p + 1)
  if p + 1 + sl > e then return h end
  h.session_id = sub(b, base + p + 2, base + p + 1 + sl)
  p = p + 1 + sl
  if p + 2 > e then return h end
  local cl = u16(b, base + p + 1)
  p = p + 2
  local ce = p + cl
  if ce > e then ce = e end
  local ciphers = h.ciphers
  while p + 2 <= ce do ciphers[#ciphers + 1] = u16(b, base + p + 1); p = p + 2 end
  p = ce
  if p + 1 > e then return h end
  p = p + 1 + byte(b, base + p + 1)              -- compression methods
  if p + 2 > e then return h end
  local xe = p + 2 + u16(b, base + p + 1)
  p = p + 2
  if xe > e then xe = e end
  local exts = h.extensions
  while p + 4 <= xe do
    local ty, l = u16(b, base + p + 1), u16(b, base + p + 3)
    exts[#exts + 1] = ty
    local d, de = p + 4, p + 4 + l
    if de > xe then break end
    if ty == 0 and l >= 5 then                   -- server_name: list of (type, name)
      local q, qe = d + 2, d + 2 + u16(b, base + d + 1)
      if qe > de then qe = de end
      while q + 3 <= qe do
        local nt, nl = byte(b, base + q + 1), u16(b, base + q + 2)
        if q + 3 + nl > qe then break end
        if nt == 0 and h.sni == nil then h.sni = sub(b, base + q + 4, base + q + 3 + nl) end
        q = q + 3 + nl
      end
    elseif ty == 16 and l >= 2 then              -- ALPN: list of length-prefixed names
      local q, qe = d + 2, d + 2 + u16(b, base + d + 1)
      if qe > de then qe = de end
      local alpn = h.alpn
      while q + 1 <= qe do
        local nl = byte(b, base + q + 1)
        if q + 1 + nl > qe then break end
        alpn[#alpn + 1] = sub(b, base + q + 2, base + q + 1 + nl)
        q = q + 1 + nl
      end
    elseif ty == 43 and l >= 1 then              -- supported_versions
      local q, qe = d + 1, d + 1 + byte(b, base + d + 1)
      if qe > de then qe = de end
      local vs = h.versions
      while q + 2 <= qe do vs[#vs + 1] = u16(b, base + q + 1); q = q + 2 end
    elseif ty == 10 and l >= 2 then              -- supported_groups
      local q, qe = d + 2, d + 2 + u16(b, base + d + 1)
      if qe > de then qe = de end
      local gs = h.groups
      while q + 2 <= qe do gs[#gs + 1] = u16(b, base + q + 1); q = q + 2 end
    end
    p = de
  end
  return h
end

local function hello_field(name)
  return function(o, b, base) return (o[6] or hello(o, b, base))[name] end
end
for _, name in next, { 'record_version', 'handshake_type', 'version', 'session_id', 'ciphers',
  'extensions', 'sni', 'alpn', 'versions', 'groups' } do
  GS[name] = hello_field(name)
end
