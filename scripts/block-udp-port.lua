-- Blocks UDP to one destination port (9999 here) for IPv4 and IPv6 and marks what it lets
-- through from that port's neighbours, to show a verdict with a mark.
local BLOCKED = 9999

function on_packet(pkt)
  local udp = pkt.udp
  if udp == nil then return ACCEPT end
  if udp.dstport == BLOCKED then
    stats.inc("udp_blocked")
    return DROP
  end
  if udp.dstport > BLOCKED - 10 and udp.dstport < BLOCKED + 10 then
    return ACCEPT, 0x99   -- a later iptables rule can match this with -m mark --mark 0x99
  end
  return ACCEPT
end
