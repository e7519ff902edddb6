-- A user-defined binary protocol with proto.define: "telemetry" datagrams on UDP port 9999.
--
--   byte 0   version (high 4 bits), kind (low 4 bits)
--   byte 1   flags: bit 0 (the top bit) = urgent
--   2..3     sensor id (big-endian)
--   4..7     reading (signed, little-endian: the sensors are little-endian)
--   8        name length n, then n bytes of name, then the rest is opaque
--
-- The script drops datagrams of an unknown version, marks urgent ones (mark 1, for routing),
-- and rewrites the kind of sensor 7's readings to 2 ("calibrated"), in place.
--
--   node psd.js --script scripts/binary-proto.lua --pcap capture.pcap --write-accepted out.pcap
proto.define{
  name = "telemetry", over = "udp", port = 9999,
  fields = {
    version = { bit = 0, bits = 4 },
    kind    = { bit = 4, bits = 4 },
    urgent  = { bit = 8, type = "bool" },
    sensor  = { offset = 2, size = 2 },
    reading = { offset = 4, size = 4, signed = true, le = true },
    namelen = { offset = 8, size = 1 },
    name    = { offset = 9, len = "namelen" },
  },
  -- computed field: the reading in degrees (the wire carries hundredths)
  parse = function(bytes, t)
    if t.reading then t.degrees = t.reading / 100 end
  end,
}

function on_packet(pkt)
  local t = pkt.telemetry
  if not t then return ACCEPT end
  if t.version ~= 1 then
    stats.inc("telemetry_bad_version")
    return DROP
  end
  if t.sensor == 7 then t.kind = 2 end
  log.debug("sensor %d (%s): %.2f degrees", t.sensor, t.name or "?", t.degrees or 0)
  if t.urgent then return ACCEPT, 1 end
  return ACCEPT
end
