-- Counts packets and bytes per source address and logs the top talkers at the end.
-- Globals persist between packets: that is how a script keeps state.
local packets, bytes = {}, {}

function on_packet(pkt)
  local ip = pkt.ip
  if ip then
    local src = ip.src
    packets[src] = (packets[src] or 0) + 1
    bytes[src] = (bytes[src] or 0) + pkt.len
  end
  return ACCEPT
end

function on_stop()
  local order = {}
  for src in pairs(packets) do order[#order + 1] = src end
  table.sort(order, function(a, b) return packets[a] > packets[b] or (packets[a] == packets[b] and a < b) end)
  for i = 1, math.min(5, #order) do
    local src = order[i]
    log.info("%s: %d packets, %d bytes", src, packets[src], bytes[src])
    stats.set("top" .. i .. "_packets", packets[src])
  end
  log.info("%d sources", #order)
end
