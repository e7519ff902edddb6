-- A TLS SNI filter: drops TLS ClientHellos whose server name (SNI) is a blocked domain or a
-- name under one; the connection then never completes. Hellos without SNI pass (and are
-- counted), as do all other packets. ALPN is logged to show what the client wanted.
--
--   node psd.js --script scripts/tls-sni-filter.lua --pcap capture.pcap
local BLOCKED = { "blocked.example", "ads.example.net" }

local function blocked(sni)
  sni = sni:lower()
  for _, d in ipairs(BLOCKED) do
    if sni == d or sni:sub(-(#d + 1)) == "." .. d then return true end
  end
  return false
end

function on_packet(pkt)
  local tls = pkt.tls
  if not tls then return ACCEPT end
  if not tls.sni then
    stats.inc("tls_no_sni")
    return ACCEPT
  end
  if blocked(tls.sni) then
    stats.inc("tls_blocked")
    log.info("blocked TLS to %s (alpn %s)", tls.sni, table.concat(tls.alpn, ","))
    return DROP
  end
  return ACCEPT
end
