-- Comparison filter 1: the floor. Every engine's fixed cost per packet and nothing else.
function on_packet(pkt)
  return ACCEPT
end
