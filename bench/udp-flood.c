// A bounded UDP sender for NFQUEUE tests and benchmarks (sendmmsg, 64 datagrams a call).
//
//   udp-flood -d ADDR:PORT [-n count] [-t seconds] [-s size] [-x every] [-r pps]
//
// Hard limits: at most 5,000,000 datagrams and 60 seconds, whichever comes first. The
// destination must be a loopback address (127.0.0.0/8), or an address in 10.0.0.0/8 on a directly
// connected link of a network namespace that has no default route (a test namespace: nothing
// there leads off the machine). Every -x'th datagram's payload starts with 'X' (the 1st, the every+1'th, ...), the
// others with 'A'; the rest of the payload is a sequence number and filler. -r paces to about
// that many datagrams per second. Prints one JSON line: sent, seconds, pps.
//
// Build: cc -O2 -o udp-flood bench/udp-flood.c
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#define MAX_COUNT 5000000L
#define MAX_SECONDS 60.0
#define BATCH 64

static double now_s(void) {
  struct timespec t;
  clock_gettime(CLOCK_MONOTONIC, &t);
  return t.tv_sec + t.tv_nsec / 1e9;
}

// True when dst can only be reached on a directly connected link of a network namespace with
// no way off it: no default route in this namespace, a gatewayless route covering dst, and (when
// PID 1's namespace can be seen) not PID 1's namespace.
static int private_link(uint32_t dst_host_order) {
  struct stat self, init;
  if (stat("/proc/self/ns/net", &self) == 0 && stat("/proc/1/ns/net", &init) == 0 &&
      self.st_ino == init.st_ino && self.st_dev == init.st_dev)
    return 0;
  FILE *f = fopen("/proc/net/route", "r");
  if (!f) return 0;
  char line[512], ifname[64];
  unsigned dest, gw, flags, mask;
  int covered = 0, deflt = 0;
  if (!fgets(line, sizeof line, f)) { fclose(f); return 0; }  // header
  while (fgets(line, sizeof line, f)) {
    int refcnt, use, metric;
    if (sscanf(line, "%63s %x %x %x %d %d %d %x", ifname, &dest, &gw, &flags, &refcnt, &use, &metric, &mask) != 8) continue;
    if (mask == 0) deflt = 1;  // /proc/net/route is in network byte order, read as host words
    else if (gw == 0 && (htonl(dst_host_order) & mask) == dest) covered = 1;
  }
  fclose(f);
  return covered && !deflt;
}

int main(int argc, char **argv) {
  const char *dst = NULL;
  long count = 1000, every = 0;
  double seconds = 10, rate = 0;
  long size = 64;
  int opt;
  while ((opt = getopt(argc, argv, "d:n:t:s:x:r:")) != -1) {
    switch (opt) {
      case 'd': dst = optarg; break;
      case 'n': count = atol(optarg); break;
      case 't': seconds = atof(optarg); break;
      case 's': size = atol(optarg); break;
      case 'x': every = atol(optarg); break;
      case 'r': rate = atof(optarg); break;
      default:
        fprintf(stderr, "usage: udp-flood -d ADDR:PORT [-n count] [-t seconds] [-s size] [-x every] [-r pps]\n");
        return 2;
    }
  }
  if (!dst) {
    fprintf(stderr, "udp-flood: -d ADDR:PORT is required\n");
    return 2;
  }
  if (count < 1 || count > MAX_COUNT) count = MAX_COUNT;
  if (seconds <= 0 || seconds > MAX_SECONDS) seconds = MAX_SECONDS;
  if (size < 16) size = 16;
  if (size > 8192) size = 8192;

  char host[64];
  const char *colon = strrchr(dst, ':');
  if (!colon || colon - dst >= (long)sizeof host) {
    fprintf(stderr, "udp-flood: bad destination %s\n", dst);
    return 2;
  }
  memcpy(host, dst, (size_t)(colon - dst));
  host[colon - dst] = 0;
  struct sockaddr_in to = {.sin_family = AF_INET, .sin_port = htons((uint16_t)atoi(colon + 1))};
  if (inet_pton(AF_INET, host, &to.sin_addr) != 1) {
    fprintf(stderr, "udp-flood: bad IPv4 address %s\n", host);
    return 2;
  }
  uint32_t a = ntohl(to.sin_addr.s_addr);
  int loopback = (a >> 24) == 127;
  int ten = (a >> 24) == 10;
  if (!loopback && !(ten && private_link(a))) {
    fprintf(stderr, "udp-flood: refusing %s: only 127.0.0.0/8, or 10.0.0.0/8 on a link of a network namespace without a default route\n", host);
    return 2;
  }

  int fd = socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0);
  if (fd < 0) {
    perror("udp-flood: socket");
    return 1;
  }
  int sb = 4 << 20;
  setsockopt(fd, SOL_SOCKET, SO_SNDBUF, &sb, sizeof sb);
  if (connect(fd, (struct sockaddr *)&to, sizeof to) < 0) {
    perror("udp-flood: connect");
    return 1;
  }

  static uint8_t bufs[BATCH][8192];
  struct mmsghdr msgs[BATCH];
  struct iovec iov[BATCH];
  for (int i = 0; i < BATCH; i++) {
    memset(bufs[i], 'p', (size_t)size);
    iov[i].iov_base = bufs[i];
    iov[i].iov_len = (size_t)size;
    memset(&msgs[i], 0, sizeof msgs[i]);
    msgs[i].msg_hdr.msg_iov = &iov[i];
    msgs[i].msg_hdr.msg_iovlen = 1;
  }
  long sent = 0;
  double t0 = now_s();
  while (sent < count && now_s() - t0 < seconds) {
    int n = (int)(count - sent < BATCH ? count - sent : BATCH);
    if (rate > 0) {
      // pace: do not get ahead of rate * elapsed
      double ahead = (sent + n) / rate - (now_s() - t0);
      if (ahead > 0) {
        struct timespec ts = {(time_t)ahead, (long)((ahead - (time_t)ahead) * 1e9)};
        nanosleep(&ts, NULL);
      }
    }
    for (int i = 0; i < n; i++) {
      long k = sent + i;
      bufs[i][0] = (every > 0 && k % every == 0) ? 'X' : 'A';
      snprintf((char *)bufs[i] + 1, 14, "%012ld", k);
      bufs[i][13] = ' ';
    }
    int r = sendmmsg(fd, msgs, (unsigned)n, 0);
    if (r < 0) {
      if (errno == EINTR || errno == ENOBUFS || errno == EAGAIN) continue;
      if (errno == ECONNREFUSED) continue;  // an ICMP port unreachable came back; keep going
      perror("udp-flood: sendmmsg");
      return 1;
    }
    sent += r;
  }
  double span = now_s() - t0;
  printf("{\"sent\":%ld,\"seconds\":%.6f,\"pps\":%.0f}\n", sent, span, span > 0 ? sent / span : 0);
  return 0;
}
