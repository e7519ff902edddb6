-- The script of the live drain benchmark (bench/live-drain.ts): every packet accepted, as cheaply
-- as a script can, so the figure is psd's own cost per packet around the VM call.
function on_packet(pkt)
  return ACCEPT
end
