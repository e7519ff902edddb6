-- Growth benchmark: a script whose work grows with the packet: a plain search of every byte for
-- a signature (pkt:find copies the packet's bytes out of the batch, then searches them).
function on_packet(pkt)
  if pkt:find('\0evil-signature\0') then return DROP end
  return ACCEPT
end
