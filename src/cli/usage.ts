export const USAGE = `psd: packet scripts in sandboxed Lua, over NFQUEUE or pcap files

usage:
  node psd.js --script FILE [options]              live: bind NFQUEUE (queue 0 unless --queue)
  node psd.js --script FILE --pcap IN [options]    offline: read pcap or pcapng, no root needed
  node psd.js --config FILE [--pcap IN]            several tenants (JSON)
  node psd.js check FILE...                        load each script, print FILE:LINE of any error
  node psd.js bench --script FILE [--pcap IN] [--json]   per-packet cost of a script
  node psd.js ctl [--socket PATH] [--json] COMMAND list | stats [NAME] | load NAME FILE [--queue N] | unload NAME | reload [NAME [FILE]]
  node psd.js rules [--config FILE | --queue N]    print the iptables rules that feed psd's queues (--chain C, --match=ARGS)

options:
  --queue N, --queues A-B     NFQUEUE number(s), one worker per queue (default 0)
  --queue-maxlen N            packets the kernel may hold for psd (default 4096, max 65536)
  --fail-open                 the kernel accepts instead of dropping when the queue is full
  --function NAME             entry function (default on_packet)
  --fuel N                    VM instructions per call (default 1000000)
  --memory SIZE               bytes the script's VM may hold, e.g. 8MiB (default 16MiB)
  --timeout-ms N              wall-clock limit per call (default 50)
  --on-fault accept|drop      verdict on error or exhausted budget (default accept)
  --write-accepted F          pcap of the accepted packets, as sent back (edits applied)
  --write-dropped F           pcap of the dropped packets
  --write-sent F              offline: pcap of the packets the script sends with net.send
  --allow-send                the script may use net.send
  --verdicts F                one JSON line per packet
  --name NAME                 the tenant's name in logs, metrics and ctl (default "default")
  --workers N                 reserved (psd runs one VM per queue of the tenant)
  --metrics HOST:PORT         Prometheus text at /metrics
  --control PATH              control socket for psd ctl, mode 0600 (default /run/psd.sock)
  --chain C, --match=ARGS     psd rules: the iptables chain and matches of the tenant's rule
  --log-format json|text      log lines on stderr (default json)
  -h, --help                  this text
`
