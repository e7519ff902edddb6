-- A TCP reset injector: a connection to a blocked host fails at once ("connection refused")
-- instead of timing out. The segment is dropped and a RST is sent back to the client as if
-- the blocked host had sent it (RFC 9293 3.10.7.1: its seq is the segment's ack; a segment
-- without ACK gets seq 0 and an ACK of everything it carried). The RST is built from nothing
-- with string.pack; net.send fills in the lengths and checksums.
--
-- Live, on the client (or a router: use FORWARD); psd needs --allow-send:
--   iptables -A OUTPUT -p tcp -d 192.0.2.80 -m mark ! --mark 0x5053 -j NFQUEUE --queue-num 0
--   node psd.js --script scripts/tcp-reset.lua --allow-send
local BLOCKED = { ["192.0.2.80"] = true, ["2001:db8::80"] = true }

local pack = string.pack

local function rst(pkt, tcp)
  local seq, ack, flags
  if tcp.ack_flag then
    seq, ack, flags = tcp.ack, 0, 0x04                       -- RST
  else
    local len = #tcp.payload + (tcp.syn and 1 or 0) + (tcp.fin and 1 or 0)
    seq, ack, flags = 0, (tcp.seq + len) & 0xffffffff, 0x14  -- RST, ACK
  end
  -- TCP header: ports swapped, data offset 5 words, window 0, checksum left to net.send
  local t = pack(">I2I2I4I4BBI2I2I2", tcp.dstport, tcp.srcport, seq, ack, 0x50, flags, 0, 0, 0)
  if pkt.family == 4 then
    -- IPv4 header: version/IHL, DSCP, length, id, DF, TTL 64, TCP; addresses swapped
    return pack(">BBI2I2I2BBI2", 0x45, 0, 40, 0, 0x4000, 64, 6, 0) .. pkt:bytes(16, 4) .. pkt:bytes(12, 4) .. t
  end
  -- IPv6 header: version 6, payload length 20, next header TCP, hop limit 64
  return pack(">I4I2BB", 0x60000000, 20, 6, 64) .. pkt:bytes(24, 16) .. pkt:bytes(8, 16) .. t
end

function on_packet(pkt)
  local tcp = pkt.tcp
  if not tcp or tcp.rst or not BLOCKED[pkt.ip.dst] then return ACCEPT end
  net.send(rst(pkt, tcp))
  stats.inc("resets")
  return DROP
end
