// A minimal NFQUEUE consumer in C (libc + kernel headers only): the yardstick for psd's drain
// rate. recvmmsg up to 64 messages, then one sendto per batch: individual NF_DROP verdicts first
// (packets whose UDP payload starts with 'X', with -x), then one NFQNL_MSG_VERDICT_BATCH accepting
// the rest (the kernel accepts every waiting id <= the batch id). With -1, one verdict per packet.
//
//   nfq-c-consumer [-q queue] [-l maxlen] [-c copyrange] [-n packets] [-t seconds] [-w wait_ms] [-x] [-1]
//
// Stops after -n packets (default 100000, at most 10,000,000) or -t seconds (default 10, at most 120),
// whichever comes first, and prints one JSON line: packets, accepted, dropped, seconds (first to
// last packet), pps, cpu_us_per_packet. -w sleeps that long after binding before reading, so that
// a sender can fill the queue first (a drain measurement).
//
// Build: cc -O2 -o nfq-c-consumer bench/nfq-c-consumer.c
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <linux/netfilter.h>
#include <linux/netfilter/nfnetlink.h>
#include <linux/netfilter/nfnetlink_queue.h>
#include <linux/netlink.h>
#include <poll.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#define BATCH 64
#define SLOT (65536 + 4096)

static int fd = -1;
static uint32_t seq = 1;
static uint16_t qnum = 0;

static double now_s(void) {
  struct timespec t;
  clock_gettime(CLOCK_MONOTONIC, &t);
  return t.tv_sec + t.tv_nsec / 1e9;
}

static void die(const char *what) {
  fprintf(stderr, "nfq-c-consumer: %s: %s\n", what, strerror(errno));
  exit(1);
}

// Appends an attribute at b+*len (4-byte aligned).
static void attr(uint8_t *b, size_t *len, uint16_t type, const void *data, size_t dlen) {
  struct nlattr *a = (struct nlattr *)(b + *len);
  a->nla_type = type;
  a->nla_len = (uint16_t)(NLA_HDRLEN + dlen);
  memcpy(b + *len + NLA_HDRLEN, data, dlen);
  size_t tot = NLA_ALIGN(NLA_HDRLEN + dlen);
  memset(b + *len + NLA_HDRLEN + dlen, 0, tot - NLA_HDRLEN - dlen);
  *len += tot;
}

// Starts a queue message at b; returns the header length written.
static size_t header(uint8_t *b, uint8_t type, uint16_t flags) {
  struct nlmsghdr *h = (struct nlmsghdr *)b;
  memset(b, 0, NLMSG_HDRLEN + NLMSG_ALIGN(sizeof(struct nfgenmsg)));
  h->nlmsg_type = (NFNL_SUBSYS_QUEUE << 8) | type;
  h->nlmsg_flags = NLM_F_REQUEST | flags;
  h->nlmsg_seq = seq++;
  struct nfgenmsg *g = (struct nfgenmsg *)(b + NLMSG_HDRLEN);
  g->nfgen_family = AF_UNSPEC;
  g->version = NFNETLINK_V0;
  g->res_id = htons(qnum);
  return NLMSG_HDRLEN + NLMSG_ALIGN(sizeof(struct nfgenmsg));
}

static size_t verdict(uint8_t *b, uint8_t type, uint32_t id, uint32_t v) {
  size_t len = header(b, type, 0);
  struct nfqnl_msg_verdict_hdr vh = {htonl(v), htonl(id)};
  attr(b, &len, NFQA_VERDICT_HDR, &vh, sizeof vh);
  ((struct nlmsghdr *)b)->nlmsg_len = (uint32_t)len;
  return len;
}

static void send_all(uint8_t *b, size_t len) {
  struct sockaddr_nl to = {.nl_family = AF_NETLINK};
  for (;;) {
    if (sendto(fd, b, len, 0, (struct sockaddr *)&to, sizeof to) >= 0) return;
    if (errno == EINTR) continue;
    die("sendto");
  }
}

int main(int argc, char **argv) {
  uint32_t maxlen = 65536, copy = 0xffff;
  long limit = 100000, waitms = 0;
  double seconds = 10;
  int drop_x = 0, single = 0, opt;
  while ((opt = getopt(argc, argv, "q:l:c:n:t:w:x1")) != -1) {
    switch (opt) {
      case 'q': qnum = (uint16_t)atoi(optarg); break;
      case 'l': maxlen = (uint32_t)atol(optarg); break;
      case 'c': copy = (uint32_t)atol(optarg); break;
      case 'n': limit = atol(optarg); break;
      case 't': seconds = atof(optarg); break;
      case 'w': waitms = atol(optarg); break;
      case 'x': drop_x = 1; break;
      case '1': single = 1; break;
      default:
        fprintf(stderr, "usage: nfq-c-consumer [-q queue] [-l maxlen] [-c copyrange] [-n packets] [-t seconds] [-w wait_ms] [-x] [-1]\n");
        return 2;
    }
  }
  if (limit < 1 || limit > 10000000) limit = 10000000;
  if (seconds <= 0 || seconds > 120) seconds = 120;
  if (maxlen < 1 || maxlen > 65536) maxlen = 65536;

  fd = socket(AF_NETLINK, SOCK_RAW | SOCK_CLOEXEC, NETLINK_NETFILTER);
  if (fd < 0) die("socket");
  struct sockaddr_nl sa = {.nl_family = AF_NETLINK};
  if (bind(fd, (struct sockaddr *)&sa, sizeof sa) < 0) die("bind");
  int one = 1, rb = 256 << 20;
  setsockopt(fd, SOL_NETLINK, NETLINK_NO_ENOBUFS, &one, sizeof one);
  if (setsockopt(fd, SOL_SOCKET, SO_RCVBUFFORCE, &rb, sizeof rb) < 0) die("SO_RCVBUFFORCE");

  static uint8_t tx[BATCH * 64 + 256];
  size_t len = header(tx, NFQNL_MSG_CONFIG, NLM_F_ACK);
  struct nfqnl_msg_config_cmd cmd = {NFQNL_CFG_CMD_BIND, 0, 0};
  attr(tx, &len, NFQA_CFG_CMD, &cmd, sizeof cmd);
  struct nfqnl_msg_config_params par = {htonl(copy), NFQNL_COPY_PACKET};
  attr(tx, &len, NFQA_CFG_PARAMS, &par, sizeof par);
  uint32_t ml = htonl(maxlen);
  attr(tx, &len, NFQA_CFG_QUEUE_MAXLEN, &ml, 4);
  ((struct nlmsghdr *)tx)->nlmsg_len = (uint32_t)len;
  send_all(tx, len);
  static uint8_t ack[8192];
  for (;;) {
    ssize_t n = recv(fd, ack, sizeof ack, 0);
    if (n < 0) {
      if (errno == EINTR) continue;
      die("recv ack");
    }
    struct nlmsghdr *h = (struct nlmsghdr *)ack;
    if (h->nlmsg_type == NLMSG_ERROR) {
      int e = ((struct nlmsgerr *)NLMSG_DATA(h))->error;
      if (e) {
        errno = -e;
        die(e == -EPERM ? "bind queue (held by another process, or not root)" : "bind queue");
      }
      break;
    }
  }
  if (waitms > 0) usleep((useconds_t)waitms * 1000);

  static uint8_t rx[BATCH][SLOT];
  struct mmsghdr msgs[BATCH];
  struct iovec iov[BATCH];
  for (int i = 0; i < BATCH; i++) {
    iov[i].iov_base = rx[i];
    iov[i].iov_len = SLOT;
    memset(&msgs[i], 0, sizeof msgs[i]);
    msgs[i].msg_hdr.msg_iov = &iov[i];
    msgs[i].msg_hdr.msg_iovlen = 1;
  }
  long packets = 0, accepted = 0, dropped = 0;
  double t0 = now_s(), first = 0, last = 0;
  struct rusage ru0, ru1;
  getrusage(RUSAGE_SELF, &ru0);
  while (packets < limit) {
    double left = seconds - (now_s() - t0);
    if (left <= 0) break;
    struct pollfd p = {fd, POLLIN, 0};
    int pr = poll(&p, 1, (int)(left * 1000) + 1);
    if (pr < 0 && errno == EINTR) continue;
    if (pr <= 0) continue;
    int r = recvmmsg(fd, msgs, BATCH, MSG_DONTWAIT, NULL);
    if (r < 0) {
      if (errno == EINTR || errno == EAGAIN || errno == ENOBUFS) continue;
      die("recvmmsg");
    }
    if (!first) first = now_s();
    size_t off = 0;
    uint32_t max_accept = 0;
    int have_accept = 0;
    for (int i = 0; i < r; i++) {
      struct nlmsghdr *h = (struct nlmsghdr *)rx[i];
      if (msgs[i].msg_len < NLMSG_HDRLEN || h->nlmsg_type != ((NFNL_SUBSYS_QUEUE << 8) | NFQNL_MSG_PACKET)) continue;
      uint8_t *a = rx[i] + NLMSG_HDRLEN + NLMSG_ALIGN(sizeof(struct nfgenmsg));
      uint8_t *end = rx[i] + (h->nlmsg_len < msgs[i].msg_len ? h->nlmsg_len : msgs[i].msg_len);
      uint32_t id = 0;
      const uint8_t *pl = NULL;
      size_t plen = 0;
      while (a + NLA_HDRLEN <= end) {
        struct nlattr *na = (struct nlattr *)a;
        if (na->nla_len < NLA_HDRLEN || a + na->nla_len > end) break;
        uint16_t t = na->nla_type & NLA_TYPE_MASK;
        if (t == NFQA_PACKET_HDR) id = ntohl(((struct nfqnl_msg_packet_hdr *)(a + NLA_HDRLEN))->packet_id);
        if (t == NFQA_PAYLOAD) { pl = a + NLA_HDRLEN; plen = na->nla_len - NLA_HDRLEN; }
        a += NLA_ALIGN(na->nla_len);
      }
      packets++;
      int drop = 0;
      if (drop_x && pl && plen > 28 && (pl[0] >> 4) == 4 && pl[9] == 17) {
        size_t ihl = (size_t)(pl[0] & 15) * 4;
        drop = plen > ihl + 8 && pl[ihl + 8] == 'X';
      }
      if (drop || single) {
        off += verdict(tx + off, NFQNL_MSG_VERDICT, id, drop ? NF_DROP : NF_ACCEPT);
        if (drop) dropped++; else accepted++;
      } else {
        max_accept = id;
        have_accept = 1;
        accepted++;
      }
      if (single) { send_all(tx, off); off = 0; }
    }
    if (have_accept) off += verdict(tx + off, NFQNL_MSG_VERDICT_BATCH, max_accept, NF_ACCEPT);
    if (off) send_all(tx, off);
    last = now_s();
  }
  getrusage(RUSAGE_SELF, &ru1);
  double cpu = (ru1.ru_utime.tv_sec - ru0.ru_utime.tv_sec) + (ru1.ru_utime.tv_usec - ru0.ru_utime.tv_usec) / 1e6 +
               (ru1.ru_stime.tv_sec - ru0.ru_stime.tv_sec) + (ru1.ru_stime.tv_usec - ru0.ru_stime.tv_usec) / 1e6;
  double span = last > first ? last - first : 0;
  printf("{\"consumer\":\"c\",\"mode\":\"%s\",\"packets\":%ld,\"accepted\":%ld,\"dropped\":%ld,\"seconds\":%.6f,"
         "\"pps\":%.0f,\"cpu_us_per_packet\":%.3f}\n",
         single ? "single" : "batch", packets, accepted, dropped, span, span > 0 ? packets / span : 0,
         packets ? cpu * 1e6 / packets : 0);
  close(fd);
  return 0;
}
