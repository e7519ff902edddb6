-- A DNS blocklist: drops queries (UDP or TCP, port 53) for blocked names and every name under
-- them, so "ads.example.net" also blocks "x.ads.example.net"; counts what it dropped.
-- Names compare case-insensitively (DNS does): the query's qname is lower-cased once.
--
--   node psd.js --script scripts/dns-block.lua --pcap capture.pcap --verdicts v.jsonl
--   live (the resolver's clients): iptables -A FORWARD -p udp --dport 53 -j NFQUEUE --queue-num 0
local BLOCKED = {
  ["ads.example.net"] = true,
  ["tracker.example"] = true,
  ["doubleclick.example.com"] = true,
}

-- true when name or one of its parent domains is blocked
local function blocked(name)
  while name do
    if BLOCKED[name] then return true end
    name = name:match("^[^.]*%.(.+)$")      -- drop the first label
  end
  return false
end

function on_packet(pkt)
  local dns = pkt.dns
  if dns and not dns.qr and dns.qname and blocked(dns.qname:lower()) then
    stats.inc("dns_blocked")
    log.debug("blocked query for %s", dns.qname)
    return DROP
  end
  return ACCEPT
end
