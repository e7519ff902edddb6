-- Comparison filter 3: HTTP requests to blocked hosts (the Host header, exact match).
local blocked = { ['blocked.example'] = true, ['ads.example.net'] = true }

function on_packet(pkt)
  local http = pkt.http
  if http ~= nil then
    local host = http.host
    if host ~= nil and blocked[host] then return DROP end
  end
  return ACCEPT
end
