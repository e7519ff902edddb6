-- A ping responder written in Lua: answers ICMP and ICMPv6 echo requests for an address that no
-- interface holds. The request is dropped; the reply is the request's copy with the addresses
-- swapped and the type changed (same id, sequence and payload). net.send makes the lengths and
-- checksums right, and marks the packet (0x5053) so psd does not see its own reply.
--
-- Live (the request must reach the queue; psd needs --allow-send):
--   iptables  -t raw -A PREROUTING -d 192.0.2.10   -p icmp   -j NFQUEUE --queue-num 0
--   ip6tables -t raw -A PREROUTING -d 2001:db8::10 -p icmpv6 -j NFQUEUE --queue-num 0
--   node psd.js --script scripts/icmp-responder.lua --allow-send
-- Offline, the replies go to a file:
--   node psd.js --script scripts/icmp-responder.lua --pcap in.pcap --allow-send --write-sent replies.pcap
local ADDRESS4 = "192.0.2.10"
local ADDRESS6 = "2001:db8::10"     -- as pkt.ip.dst gives it (RFC 5952 form)

local function reply(pkt, echo, reply_type)
  local r = pkt:copy()               -- a detached packet with the same API
  r.ip.src, r.ip.dst = pkt.ip.dst, pkt.ip.src
  r.ip.ttl = 64
  r[echo].type = reply_type
  if net.send(r) then
    stats.inc("echo_replies")
  else
    stats.inc("echo_replies_rate_limited")   -- over the tenant's send rate: no reply
  end
  return DROP
end

function on_packet(pkt)
  local ip = pkt.ip
  if not ip then return ACCEPT end
  if pkt.icmp and pkt.icmp.type == 8 and ip.dst == ADDRESS4 then return reply(pkt, "icmp", 0) end
  if pkt.icmp6 and pkt.icmp6.type == 128 and ip.dst == ADDRESS6 then return reply(pkt, "icmp6", 129) end
  return ACCEPT
end
