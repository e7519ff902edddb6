-- Rewrites the IPv4 TTL / IPv6 hop limit of every packet to at least 32, so traffic that leaves
-- this host is not dropped early by a path of many hops. psd recomputes the IPv4 header
-- checksum on accept; nothing else changes.
local FLOOR = 32

function on_packet(pkt)
  local ip = pkt.ip
  if ip and ip.ttl < FLOOR then
    ip.ttl = FLOOR          -- the same as pkt:set_u8(8, FLOOR) on IPv4, pkt:set_u8(7, FLOOR) on IPv6
    stats.inc("ttl_raised")
  end
  return ACCEPT
end
