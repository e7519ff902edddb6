-- Comparison filter 2: IP and TCP header fields through the protocol objects.
-- Drops TTL <= 1, blocked source or destination addresses (text, as a script compares them),
-- TCP to blocked destination ports, and SYN+FIN.
local blocked_addr = {
  ['192.0.2.7'] = true, ['203.0.113.13'] = true, ['10.0.3.57'] = true,
  ['2001:db8:2::5'] = true, ['2001:db8:1::2a'] = true,
}
local blocked_port = { [22] = true, [23] = true, [5201] = true }

function on_packet(pkt)
  local ip = pkt.ip
  if ip == nil then return ACCEPT end
  if ip.ttl <= 1 then return DROP end
  if blocked_addr[ip.src] or blocked_addr[ip.dst] then return DROP end
  local tcp = pkt.tcp
  if tcp ~= nil then
    if blocked_port[tcp.dstport] then return DROP end
    if tcp.syn and tcp.fin then return DROP end
  end
  return ACCEPT
end
