-- A TCP MSS clamp: lowers the MSS option of SYN and SYN-ACK segments to fit a smaller path MTU
-- (a tunnel, PPPoE), the way `iptables -j TCPMSS --set-mss` does. A SYN without an MSS option
-- gets one (TCP would otherwise assume 536 on IPv4 and 1220 on IPv6: fine, but explicit is
-- clearer). psd fixes the TCP checksum and IP length on accept.
--
--   node psd.js --script scripts/mss-clamp.lua --pcap capture.pcap --write-accepted out.pcap
--   live: iptables -t mangle -A FORWARD -p tcp --tcp-flags SYN SYN -j NFQUEUE --queue-num 0
local MTU = 1400                     -- the path MTU to fit

function on_packet(pkt)
  local tcp = pkt.tcp
  if not (tcp and tcp.syn) then return ACCEPT end
  -- MSS = MTU minus the IP and TCP headers (options other than MSS are not counted, as in TCPMSS)
  local max = MTU - (pkt.ip.version == 4 and 40 or 60)
  local mss = tcp.mss
  if mss == nil or mss > max then
    tcp.mss = max
    stats.inc("mss_clamped")
  end
  return ACCEPT
end
