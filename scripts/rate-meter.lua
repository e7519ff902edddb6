-- A rate meter: counts packets and bytes, and a timer logs the rates every second, also while
-- no packets arrive (then it logs zeros). Offline the timer runs on the capture's clock, so
-- each line covers one second of the capture.
--
--   node psd.js --script scripts/rate-meter.lua --pcap test/fixtures/sample.pcap
local packets, bytes = 0, 0

timer.every(1000, function()
  log.info("rate: %d packets/s, %d bytes/s", packets, bytes)
  stats.set("packets_per_second", packets)
  stats.set("bytes_per_second", bytes)
  packets, bytes = 0, 0
end)

function on_packet(pkt)
  packets = packets + 1
  bytes = bytes + pkt.len
  return ACCEPT
end
