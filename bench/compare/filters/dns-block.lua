-- Comparison filter 4: DNS queries for a blocked name or any name under it.
local blocked = { ['ads.example.net'] = true, ['tracker.example'] = true }
local lower, find, sub = string.lower, string.find, string.sub

function on_packet(pkt)
  local dns = pkt.dns
  if dns == nil or dns.qr then return ACCEPT end
  local name = dns.qname
  if name == nil then return ACCEPT end
  name = lower(name)
  while true do
    if blocked[name] then return DROP end
    local dot = find(name, '.', 1, true)
    if dot == nil then return ACCEPT end
    name = sub(name, dot + 1)
  end
end
