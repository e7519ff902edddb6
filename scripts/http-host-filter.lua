-- An HTTP Host filter: drops plain-HTTP requests to blocked hosts. The Host header may carry a
-- port ("example.com:8080") and any letter case; both are normalised before the lookup.
-- Only a segment that starts a request has pkt.http, so the rest of the connection passes
-- (dropping the request is enough: the server never sees it, the client retries, then gives up).
--
--   node psd.js --script scripts/http-host-filter.lua --pcap capture.pcap
local BLOCKED = {
  ["blocked.example"] = true,
  ["ads.example.net"] = true,
}

function on_packet(pkt)
  local http = pkt.http
  if not (http and http.request and http.host) then return ACCEPT end
  local host = http.host:lower():gsub(":%d+$", "")   -- "Example.COM:8080" -> "example.com"
  if BLOCKED[host] then
    stats.inc("http_blocked")
    log.info("blocked %s %s%s", http.method, host, http.uri)
    return DROP
  end
  return ACCEPT
end
