// The scripts bench/budgets*.bench.ts run: from nothing to a little protocol and string work.
export const SCRIPTS: Record<string, string> = {
  'accept-all': 'function on_packet(pkt) return ACCEPT end',
  'header bytes': `
function on_packet(pkt)
  if pkt:u8(0) >> 4 == 4 then
    if pkt:u8(8) <= 1 then return DROP end
    if pkt:u8(9) == 17 and pkt:u16((pkt:u8(0) & 15) * 4 + 2) == 53 then return DROP end
  end
  return ACCEPT
end`,
  'protocol fields': `
local blocked, seen = { [53] = true, [123] = true }, 0
function on_packet(pkt)
  seen = seen + 1
  local ip = pkt.ip
  if not ip then return ACCEPT end
  if ip.ttl < 2 then return DROP end
  local udp = pkt.udp
  if udp and blocked[udp.dstport] then return DROP end
  local tcp = pkt.tcp
  if tcp and tcp.syn and not tcp.ack_flag and tcp.dstport == 22 then return DROP end
  return ACCEPT
end`,
  'string work': `
local hosts = {}
function on_packet(pkt)
  local http = pkt.http
  if http and http.host then
    local h = http.host:lower():gsub('^www%.', '')
    hosts[h] = (hosts[h] or 0) + 1
    if h:find('example', 1, true) then return DROP end
  end
  return ACCEPT
end`,
}
