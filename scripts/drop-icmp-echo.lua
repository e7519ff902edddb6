-- Drops ICMP and ICMPv6 echo requests (ping) and counts them; everything else passes.
--
--   node psd.js --script scripts/drop-icmp-echo.lua --pcap test/fixtures/sample.pcap
local dropped = 0

function on_packet(pkt)
  local echo = (pkt.icmp and pkt.icmp.type == 8) or (pkt.icmp6 and pkt.icmp6.type == 128)
  if echo then
    dropped = dropped + 1
    stats.inc("icmp_echo_dropped")
    return DROP
  end
  return ACCEPT
end

function on_stop()
  log.info("dropped %d echo requests", dropped)
end
