// NFQUEUE over a raw netlink socket. See nfq_queue.h for the shape; the comments here say why.
#include "nfq_queue.h"

#include <algorithm>
#include <cerrno>
#include <climits>
#include <cstring>
#include <ctime>

#include <arpa/inet.h>
#include <poll.h>
#include <sys/uio.h>
#include <unistd.h>

#include <linux/netfilter.h>
#include <linux/netfilter/nfnetlink.h>
#include <linux/netfilter/nfnetlink_queue.h>
#include <linux/netlink.h>

namespace psd {

namespace {

constexpr uint16_t kMsgType(uint8_t m) { return (uint16_t)((NFNL_SUBSYS_QUEUE << 8) | m); }
constexpr uint32_t kMaxCopy = 0xffff - NLA_HDRLEN;  // the kernel's NFQNL_MAX_COPY_RANGE
// Attribute bytes a packet message can carry besides the payload: headers, ifindexes, mark,
// hw address, timestamp, skb info, cap len, uid/gid, conntrack (a few hundred bytes), vlan and
// l2 header for bridges. A message larger than its slot arrives cut (MSG_TRUNC) and is counted.
constexpr size_t kMsgOverhead = 2048;
constexpr size_t kSendChunk = 1 << 20;  // bytes per sendmsg; the socket's sndbuf is set above it
constexpr size_t kMaxIov = 1024;        // IOV_MAX
// Plain accepts per NFQNL_MSG_VERDICT_BATCH message. The kernel dequeues a batch's packets with
// the queue's lock held and softirqs off on that CPU, then reinjects them one by one: spans of 64
// (as the C consumer of bench/ sends) bound that time and keep the two walks over the same
// packets within the CPU's caches, where one message for a thousand packets did neither.
constexpr size_t kBatchSpan = 64;
constexpr uint8_t ST_PENDING = 0, ST_DONE = 1, ST_INDIV = 2, ST_CAND = 3, ST_BATCHED = 4;

inline size_t align4(size_t n) { return (n + 3) & ~(size_t)3; }

inline void putLE32(uint8_t* p, uint32_t v) {
  p[0] = (uint8_t)v;
  p[1] = (uint8_t)(v >> 8);
  p[2] = (uint8_t)(v >> 16);
  p[3] = (uint8_t)(v >> 24);
}

inline uint32_t getLE32(const uint8_t* p) {
  return (uint32_t)p[0] | ((uint32_t)p[1] << 8) | ((uint32_t)p[2] << 16) | ((uint32_t)p[3] << 24);
}

inline uint32_t getBE32(const uint8_t* p) {
  return ((uint32_t)p[0] << 24) | ((uint32_t)p[1] << 16) | ((uint32_t)p[2] << 8) | p[3];
}

inline uint64_t getBE64(const uint8_t* p) {
  return ((uint64_t)getBE32(p) << 32) | getBE32(p + 4);
}

std::string errnoText(int e) {
  const char* name = strerrorname_np(e);
  std::string s = strerror(e);
  if (name) s += std::string(" (") + name + ")";
  return s;
}

// Appends a netlink attribute (header + data + padding) to a message being built.
void putAttr(std::vector<uint8_t>& b, uint16_t type, const void* data, size_t len) {
  struct nlattr a;
  a.nla_len = (uint16_t)(NLA_HDRLEN + len);
  a.nla_type = type;
  size_t at = b.size();
  b.resize(at + NLA_ALIGN(NLA_HDRLEN + len), 0);
  memcpy(&b[at], &a, sizeof a);
  if (len) memcpy(&b[at + NLA_HDRLEN], data, len);
}

void putBE32Attr(std::vector<uint8_t>& b, uint16_t type, uint32_t v) {
  uint32_t be = htonl(v);
  putAttr(b, type, &be, 4);
}

// Starts an nfnetlink queue message: nlmsghdr + nfgenmsg. The length is fixed by the caller.
void putHeader(std::vector<uint8_t>& b, uint8_t msgType, uint16_t flags, uint32_t seq, uint16_t queue) {
  struct nlmsghdr h;
  memset(&h, 0, sizeof h);
  h.nlmsg_type = kMsgType(msgType);
  h.nlmsg_flags = (uint16_t)(NLM_F_REQUEST | flags);
  h.nlmsg_seq = seq;
  struct nfgenmsg g;
  g.nfgen_family = AF_UNSPEC;
  g.version = NFNETLINK_V0;
  g.res_id = htons(queue);
  size_t at = b.size();
  b.resize(at + NLMSG_HDRLEN + NLMSG_ALIGN(sizeof g), 0);
  memcpy(&b[at], &h, sizeof h);
  memcpy(&b[at + NLMSG_HDRLEN], &g, sizeof g);
}

void setLen(std::vector<uint8_t>& b, size_t start, size_t len) {
  uint32_t l = (uint32_t)len;
  memcpy(&b[start], &l, 4);  // nlmsg_len is the first field, host order
}

// Receive-buffer size for maxlen queued packets: what one queued message costs the socket
// (its truesize: data rounded up by the allocator plus the skb overhead), measured at ~830 bytes
// for a 64-byte packet. Big packets (GSO) cost more; a queue full of them needs rcvbuf set by hand.
uint64_t defaultRcvbuf(uint32_t maxlen, uint32_t copyRange) {
  uint64_t data = std::min<uint64_t>(copyRange, 1500) + 256;
  uint64_t alloc = 256;
  while (alloc < data) alloc <<= 1;
  uint64_t per = alloc + 640;
  uint64_t total = per * std::max<uint32_t>(maxlen, 64);
  return std::max<uint64_t>(total, 1 << 20);
}

const uint8_t kZero[4] = {0, 0, 0, 0};

}  // namespace

NfQueue::~NfQueue() { close(); }

void NfQueue::close() {
  if (fd_ >= 0) {
    ::close(fd_);  // the kernel unbinds the queue and drops packets still waiting for a verdict
    fd_ = -1;
  }
  pendN_ = pendIdx_ = 0;
  trackCount_ = trackDone_ = trackHead_ = 0;
}

int NfQueue::takeSocketError() {
  if (fd_ < 0) return EBADF;
  int e = 0;
  socklen_t l = sizeof e;
  if (getsockopt(fd_, SOL_SOCKET, SO_ERROR, &e, &l) < 0) return errno;
  if (e == ENOBUFS) c_.enobufs++;
  return e;
}

size_t NfQueue::maxRecord() const {
  return align4(rec::HDR + std::min(opt_.copyRange ? opt_.copyRange : kMaxCopy, kMaxCopy));
}

int NfQueue::open(const OpenOptions& o, std::string* err) {
  opt_ = o;
  if (opt_.copyRange == 0 || opt_.copyRange > kMaxCopy) opt_.copyRange = kMaxCopy;
  if (opt_.batch == 0) opt_.batch = 1;
  if (opt_.batch > 1024) opt_.batch = 1024;
  std::string q = "queue " + std::to_string(o.queue);

  fd_ = socket(AF_NETLINK, SOCK_RAW | SOCK_CLOEXEC | SOCK_NONBLOCK, NETLINK_NETFILTER);
  if (fd_ < 0) {
    int e = errno;
    *err = "cannot open a netfilter netlink socket: " + errnoText(e) +
           (e == EPROTONOSUPPORT ? "; the kernel lacks nfnetlink (CONFIG_NETFILTER_NETLINK)" : "");
    return -e;
  }
  struct sockaddr_nl sa;
  memset(&sa, 0, sizeof sa);
  sa.nl_family = AF_NETLINK;
  if (bind(fd_, (struct sockaddr*)&sa, sizeof sa) < 0) {
    int e = errno;
    *err = "cannot bind the netlink socket: " + errnoText(e);
    close();
    return -e;
  }
  socklen_t sl = sizeof sa;
  if (getsockname(fd_, (struct sockaddr*)&sa, &sl) < 0) {
    int e = errno;
    *err = "getsockname on the netlink socket: " + errnoText(e);
    close();
    return -e;
  }
  portid_ = sa.nl_pid;

  int one = 1;
  // Error reports as text and without the echoed request; both are optional niceties.
  setsockopt(fd_, SOL_NETLINK, NETLINK_EXT_ACK, &one, sizeof one);
  setsockopt(fd_, SOL_NETLINK, NETLINK_CAP_ACK, &one, sizeof one);
  if (opt_.noEnobufs && setsockopt(fd_, SOL_NETLINK, NETLINK_NO_ENOBUFS, &one, sizeof one) < 0) {
    int e = errno;
    *err = "setsockopt NETLINK_NO_ENOBUFS: " + errnoText(e);
    close();
    return -e;
  }
  // The receive buffer must hold the whole queue, or the kernel loses messages (user_dropped)
  // before the queue limit is reached. SO_RCVBUFFORCE ignores rmem_max but needs CAP_NET_ADMIN.
  uint64_t want = opt_.rcvbuf ? opt_.rcvbuf : defaultRcvbuf(opt_.maxlen, opt_.copyRange);
  int rb = (int)std::min<uint64_t>(want, INT_MAX / 2);
  if (setsockopt(fd_, SOL_SOCKET, SO_RCVBUFFORCE, &rb, sizeof rb) < 0)
    setsockopt(fd_, SOL_SOCKET, SO_RCVBUF, &rb, sizeof rb);
  int got = 0;
  socklen_t gl = sizeof got;
  if (getsockopt(fd_, SOL_SOCKET, SO_RCVBUF, &got, &gl) == 0) c_.rcvbuf = got;
  // Verdicts with new payloads go out in datagrams up to kSendChunk bytes.
  int sb = 4 * (int)kSendChunk;
  if (setsockopt(fd_, SOL_SOCKET, SO_SNDBUFFORCE, &sb, sizeof sb) < 0)
    setsockopt(fd_, SOL_SOCKET, SO_SNDBUF, &sb, sizeof sb);

  // Receive slots. Each holds the largest message the kernel can send with this copy range.
  slot_ = align4(opt_.copyRange + kMsgOverhead);
  scratch_.assign(slot_ * opt_.batch, 0);
  msgs_.assign(opt_.batch, mmsghdr{});
  iovs_.assign(opt_.batch, iovec{});
  for (uint32_t i = 0; i < opt_.batch; i++) {
    iovs_[i].iov_base = &scratch_[i * slot_];
    iovs_[i].iov_len = slot_;
    msgs_[i].msg_hdr.msg_iov = &iovs_[i];
    msgs_[i].msg_hdr.msg_iovlen = 1;
  }
  trackId_.assign(1024, 0);
  trackState_.assign(1024, 0);

  // One config message does it all: bind, copy mode and range, queue length, flags. The kernel
  // checks the flags before binding, so a failure leaves nothing half-configured.
  std::vector<uint8_t> m;
  putHeader(m, NFQNL_MSG_CONFIG, NLM_F_ACK, 0, o.queue);
  struct nfqnl_msg_config_cmd cmd;
  memset(&cmd, 0, sizeof cmd);
  cmd.command = NFQNL_CFG_CMD_BIND;
  putAttr(m, NFQA_CFG_CMD, &cmd, sizeof cmd);
  struct nfqnl_msg_config_params params;
  memset(&params, 0, sizeof params);
  params.copy_range = htonl(opt_.copyRange);
  params.copy_mode = NFQNL_COPY_PACKET;
  putAttr(m, NFQA_CFG_PARAMS, &params, sizeof params);
  putBE32Attr(m, NFQA_CFG_QUEUE_MAXLEN, opt_.maxlen);
  uint32_t flags = (opt_.failOpen ? NFQA_CFG_F_FAIL_OPEN : 0) | (opt_.gso ? NFQA_CFG_F_GSO : 0) |
                   (opt_.uidGid ? NFQA_CFG_F_UID_GID : 0) | (opt_.conntrack ? NFQA_CFG_F_CONNTRACK : 0);
  uint32_t mask = NFQA_CFG_F_FAIL_OPEN | NFQA_CFG_F_GSO | NFQA_CFG_F_UID_GID | NFQA_CFG_F_CONNTRACK;
  putBE32Attr(m, NFQA_CFG_FLAGS, flags);
  putBE32Attr(m, NFQA_CFG_MASK, mask);  // the kernel rejects FLAGS without MASK (EINVAL)
  setLen(m, 0, m.size());

  std::string extack;
  int r = request(m, &extack, 3000);
  if (r < 0) {
    int e = -r;
    std::string why;
    switch (e) {
      case EPERM:
        why = q + " is held by another process or you are not root (CAP_NET_ADMIN)";
        break;
      case EBUSY:
        why = q + " is already bound by this socket";
        break;
      case EOPNOTSUPP:
      case 524:  // ENOTSUPP, kernel-internal
        why = q + ": the kernel does not support the requested flags" +
              std::string(opt_.conntrack ? " (conntrack needs nf_conntrack_netlink)" : "");
        break;
      case EINVAL:
        why = q + ": the kernel rejected the configuration";
        break;
      case ETIMEDOUT:
        why = q + ": no answer from the kernel to the bind request";
        break;
      default:
        why = q + ": bind failed";
    }
    *err = why + ": " + errnoText(e) + (extack.empty() ? "" : "; kernel says: " + extack);
    close();
    return r;
  }
  return 0;
}

// Sends one config message and waits for its acknowledgement. Packet messages that arrive
// meanwhile (the queue is live as soon as the bind is done) are kept as pending datagrams, so
// none is lost.
int NfQueue::request(std::vector<uint8_t>& msg, std::string* extack, int timeoutMs) {
  struct nlmsghdr* h = (struct nlmsghdr*)msg.data();
  uint32_t seq = ++seq_;
  h->nlmsg_seq = seq;
  struct sockaddr_nl to;
  memset(&to, 0, sizeof to);
  to.nl_family = AF_NETLINK;
  for (;;) {
    ssize_t s = sendto(fd_, msg.data(), msg.size(), 0, (struct sockaddr*)&to, sizeof to);
    if (s >= 0) break;
    if (errno == EINTR) { c_.eintr++; continue; }
    return -errno;
  }
  struct timespec start;
  clock_gettime(CLOCK_MONOTONIC, &start);
  std::vector<uint8_t> tmp(slot_);
  for (;;) {
    struct timespec now;
    clock_gettime(CLOCK_MONOTONIC, &now);
    long waited = (now.tv_sec - start.tv_sec) * 1000 + (now.tv_nsec - start.tv_nsec) / 1000000;
    if (waited >= timeoutMs) return -ETIMEDOUT;
    struct pollfd p = {fd_, POLLIN, 0};
    int pr = poll(&p, 1, (int)(timeoutMs - waited));
    if (pr < 0) {
      if (errno == EINTR) { c_.eintr++; continue; }
      return -errno;
    }
    if (pr == 0) continue;
    // Receive into the next free slot, so that a packet message can stay there as pending.
    bool inSlot = pendN_ < opt_.batch;
    uint8_t* buf = inSlot ? &scratch_[pendN_ * slot_] : tmp.data();
    struct iovec iov = {buf, slot_};
    struct msghdr mh;
    memset(&mh, 0, sizeof mh);
    mh.msg_iov = &iov;
    mh.msg_iovlen = 1;
    ssize_t n = recvmsg(fd_, &mh, MSG_DONTWAIT);
    if (n < 0) {
      if (errno == EINTR) { c_.eintr++; continue; }
      if (errno == EAGAIN || errno == EWOULDBLOCK) continue;
      if (errno == ENOBUFS) { c_.enobufs++; continue; }
      return -errno;
    }
    bool ours = false;
    int result = 0;
    for (size_t off = 0; off + NLMSG_HDRLEN <= (size_t)n;) {
      struct nlmsghdr* r = (struct nlmsghdr*)(buf + off);
      if (r->nlmsg_len < NLMSG_HDRLEN || off + r->nlmsg_len > (size_t)n) break;
      if (r->nlmsg_type == NLMSG_ERROR && r->nlmsg_seq == seq &&
          r->nlmsg_len >= NLMSG_HDRLEN + sizeof(struct nlmsgerr)) {
        struct nlmsgerr* e = (struct nlmsgerr*)NLMSG_DATA(r);
        ours = true;
        result = e->error;
        if (r->nlmsg_flags & NLM_F_ACK_TLVS) {
          // TLVs follow the error header, and the echoed request unless it was capped.
          size_t tlv = NLMSG_HDRLEN + sizeof(struct nlmsgerr);
          if (!(r->nlmsg_flags & NLM_F_CAPPED)) tlv += NLMSG_ALIGN(e->msg.nlmsg_len) - NLMSG_HDRLEN;
          while (tlv + NLA_HDRLEN <= r->nlmsg_len) {
            struct nlattr* a = (struct nlattr*)((uint8_t*)r + tlv);
            if (a->nla_len < NLA_HDRLEN || tlv + a->nla_len > r->nlmsg_len) break;
            if ((a->nla_type & NLA_TYPE_MASK) == NLMSGERR_ATTR_MSG && a->nla_len > NLA_HDRLEN)
              extack->assign((const char*)a + NLA_HDRLEN, strnlen((const char*)a + NLA_HDRLEN, a->nla_len - NLA_HDRLEN));
            tlv += NLA_ALIGN(a->nla_len);
          }
        }
      }
      off += NLMSG_ALIGN(r->nlmsg_len);
    }
    if (ours) return result;
    if (inSlot) {  // not our answer: a packet (or another error), keep it for receive()
      msgs_[pendN_].msg_len = (unsigned)n;
      msgs_[pendN_].msg_hdr.msg_flags = mh.msg_flags;
      if (pendN_ == 0) clock_gettime(CLOCK_REALTIME, &pendTime_);
      pendN_++;
    }
  }
}

void NfQueue::track(uint32_t id) {
  size_t cap = trackId_.size();
  if (trackCount_ == cap) {  // grow, unrolling the ring
    std::vector<uint32_t> ids(cap * 2);
    std::vector<uint8_t> st(cap * 2);
    for (size_t i = 0; i < trackCount_; i++) {
      ids[i] = trackId_[(trackHead_ + i) & (cap - 1)];
      st[i] = trackState_[(trackHead_ + i) & (cap - 1)];
    }
    trackId_.swap(ids);
    trackState_.swap(st);
    trackHead_ = 0;
    cap *= 2;
  }
  size_t i = (trackHead_ + trackCount_) & (cap - 1);
  trackId_[i] = id;
  trackState_[i] = ST_PENDING;
  trackCount_++;
}

// Ring index of a tracked id, or -1. Ids rise in ring order (the kernel numbers packets in the
// order it queues them and the socket delivers them in that order), so measure each id as an
// offset from the oldest one and binary-search: this also survives the 32-bit wrap. `after` is
// the ring index found for the verdict before (-1: none), checked first.
long NfQueue::findTracked(uint32_t id, long after) const {
  if (trackCount_ == 0) return -1;
  size_t mask = trackId_.size() - 1;
  // Verdicts usually come in the order the packets were received: try the slot after the last
  // one found before searching.
  if (after >= 0) {
    size_t next = ((size_t)after + 1) & mask;
    if (((next - trackHead_) & mask) < trackCount_ && trackId_[next] == id) return (long)next;
  }
  uint32_t base = trackId_[trackHead_];
  uint32_t key = id - base;
  size_t lo = 0, hi = trackCount_;
  while (lo < hi) {
    size_t mid = (lo + hi) / 2;
    uint32_t v = trackId_[(trackHead_ + mid) & mask] - base;
    if (v < key) lo = mid + 1;
    else hi = mid;
  }
  if (lo < trackCount_ && trackId_[(trackHead_ + lo) & mask] == id) return (long)((trackHead_ + lo) & mask);
  return -1;
}

void NfQueue::popDone() {
  size_t mask = trackId_.size() - 1;
  while (trackCount_ > 0 && trackState_[trackHead_] == ST_DONE) {
    trackHead_ = (trackHead_ + 1) & mask;
    trackCount_--;
    trackDone_--;
  }
  if (trackCount_ == 0) trackHead_ = 0;
}

int NfQueue::receive(uint8_t* dst, size_t cap, uint32_t maxRecords, ReceiveResult* out) {
  out->records = 0;
  out->bytes = 0;
  if (fd_ < 0) return -EBADF;
  if (maxRecords == 0) return 0;
  if (!hasPending()) {
    pendN_ = pendIdx_ = 0;
    pendOff_ = 0;
    unsigned vlen = std::min<uint32_t>(maxRecords, opt_.batch);
    for (unsigned i = 0; i < vlen; i++) {
      msgs_[i].msg_len = 0;
      msgs_[i].msg_hdr.msg_flags = 0;
    }
    for (;;) {
      int r = recvmmsg(fd_, msgs_.data(), vlen, MSG_DONTWAIT, nullptr);
      if (r > 0) {
        pendN_ = (uint32_t)r;
        break;
      }
      if (r == 0) return 0;
      int e = errno;
      if (e == EINTR) { c_.eintr++; continue; }
      if (e == EAGAIN || e == EWOULDBLOCK) return 0;
      // The socket overran and the kernel lost messages; it has said so once, go on reading.
      if (e == ENOBUFS) { c_.enobufs++; continue; }
      return -e;
    }
    c_.recvCalls++;
    clock_gettime(CLOCK_REALTIME, &pendTime_);
  }
  while (pendIdx_ < pendN_) {
    size_t stopped = parseDatagram(dst, cap, maxRecords, out, pendTime_);
    if (stopped == 1) break;
    if (stopped == 2) return -EMSGSIZE;
  }
  c_.packets += out->records;
  return 0;
}

// Parses the pending datagram from pendOff_ on, writing records. Returns 0 when the datagram
// is used up, 1 when the caller's buffer or record limit is reached (the rest stays pending),
// 2 when even one record does not fit an empty buffer.
size_t NfQueue::parseDatagram(uint8_t* dst, size_t cap, uint32_t maxRecords, ReceiveResult* out,
                              const struct timespec& now) {
  uint8_t* d = &scratch_[pendIdx_ * slot_];
  size_t len = msgs_[pendIdx_].msg_len;
  bool cut = (msgs_[pendIdx_].msg_hdr.msg_flags & MSG_TRUNC) != 0;
  while (pendOff_ + NLMSG_HDRLEN <= len) {
    struct nlmsghdr* h = (struct nlmsghdr*)(d + pendOff_);
    size_t mlen = h->nlmsg_len;
    if (mlen < NLMSG_HDRLEN) break;
    size_t avail = std::min(mlen, len - pendOff_);
    if (h->nlmsg_type == kMsgType(NFQNL_MSG_PACKET) && avail >= NLMSG_HDRLEN + sizeof(struct nfgenmsg)) {
      if (out->records >= maxRecords) return 1;
      const struct nfgenmsg* g = (const struct nfgenmsg*)(d + pendOff_ + NLMSG_HDRLEN);
      const uint8_t* p = d + pendOff_ + NLMSG_HDRLEN + NLMSG_ALIGN(sizeof(struct nfgenmsg));
      const uint8_t* end = d + pendOff_ + avail;
      bool haveId = false, truncated = false;
      uint32_t id = 0, mark = 0, indev = 0, outdev = 0, uid = rec::NONE, gid = rec::NONE;
      uint32_t capLen = 0, skbInfo = 0;
      bool haveCap = false;
      uint8_t hook = 0;
      const uint8_t* payload = nullptr;
      size_t plen = 0, pdeclared = 0;
      uint64_t tsSec = 0, tsUsec = 0;
      bool haveTs = false;
      while (p + NLA_HDRLEN <= end) {
        const struct nlattr* a = (const struct nlattr*)p;
        size_t alen = a->nla_len;
        if (alen < NLA_HDRLEN) break;
        uint16_t type = a->nla_type & NLA_TYPE_MASK;
        const uint8_t* v = p + NLA_HDRLEN;
        size_t vlen = alen - NLA_HDRLEN;
        if (p + alen > end) {  // cut off by a short read: only the payload may be used shortened
          if (type != NFQA_PAYLOAD) break;
          pdeclared = vlen;
          vlen = (size_t)(end - v);
          truncated = true;
          payload = v;
          plen = vlen;
          break;
        }
        switch (type) {
          case NFQA_PACKET_HDR:
            if (vlen >= 7) {
              id = getBE32(v);
              hook = v[6];
              haveId = true;
            }
            break;
          case NFQA_MARK: if (vlen >= 4) mark = getBE32(v); break;
          case NFQA_IFINDEX_INDEV: if (vlen >= 4) indev = getBE32(v); break;
          case NFQA_IFINDEX_OUTDEV: if (vlen >= 4) outdev = getBE32(v); break;
          case NFQA_UID: if (vlen >= 4) uid = getBE32(v); break;
          case NFQA_GID: if (vlen >= 4) gid = getBE32(v); break;
          case NFQA_CAP_LEN: if (vlen >= 4) { capLen = getBE32(v); haveCap = true; } break;
          case NFQA_SKB_INFO: if (vlen >= 4) skbInfo = getBE32(v); break;
          case NFQA_TIMESTAMP:
            if (vlen >= 16) {
              tsSec = getBE64(v);
              tsUsec = getBE64(v + 8);
              haveTs = true;
            }
            break;
          case NFQA_PAYLOAD:
            payload = v;
            plen = vlen;
            pdeclared = vlen;
            break;
          default: break;
        }
        p += NLA_ALIGN(alen);
      }
      if (cut && !truncated && payload && avail < mlen) truncated = true;
      if (haveId) {
        size_t need = align4(rec::HDR + plen);
        if (out->bytes + need > cap) return out->records == 0 ? 2 : 1;
        uint8_t* r = dst + out->bytes;
        putLE32(r + rec::RECLEN, (uint32_t)need);
        putLE32(r + rec::LEN, (uint32_t)plen);
        putLE32(r + rec::ORIGLEN, haveCap ? capLen : (uint32_t)pdeclared);
        putLE32(r + rec::ID, id);
        putLE32(r + rec::MARK, mark);
        if (haveTs) {
          putLE32(r + rec::SEC, (uint32_t)tsSec);
          putLE32(r + rec::NSEC, (uint32_t)(tsUsec * 1000));
        } else {
          putLE32(r + rec::SEC, (uint32_t)now.tv_sec);
          putLE32(r + rec::NSEC, (uint32_t)now.tv_nsec);
        }
        uint8_t fam = 0;
        if (g->nfgen_family == AF_INET) fam = 4;
        else if (g->nfgen_family == AF_INET6) fam = 6;
        else if (plen > 0 && ((payload[0] >> 4) == 4 || (payload[0] >> 4) == 6)) fam = payload[0] >> 4;
        r[rec::FAMILY] = fam;
        r[rec::HOOK] = hook <= 4 ? (uint8_t)(hook + 1) : 0;
        r[rec::FLAGS] = (uint8_t)(((skbInfo & NFQA_SKB_GSO) ? rec::FLAG_GSO : 0) |
                                  ((skbInfo & NFQA_SKB_CSUMNOTREADY) ? rec::FLAG_CSUM_NOT_READY : 0));
        r[rec::PAD] = 0;
        putLE32(r + rec::QUEUE, ntohs(g->res_id));
        putLE32(r + rec::UID, uid);
        putLE32(r + rec::GID, gid);
        putLE32(r + rec::INDEV, indev);
        putLE32(r + rec::OUTDEV, outdev);
        if (plen) memcpy(r + rec::HDR, payload, plen);
        for (size_t i = rec::HDR + plen; i < need; i++) r[i] = 0;
        if (truncated) c_.truncated++;
        track(id);
        if (out->ids) out->ids[out->records] = id;
        out->records++;
        out->bytes += (uint32_t)need;
      }
    } else if (h->nlmsg_type == NLMSG_ERROR && avail >= NLMSG_HDRLEN + sizeof(int)) {
      int e = *(const int*)(d + pendOff_ + NLMSG_HDRLEN);
      if (e != 0) {  // errors for verdicts (which are never acked when they succeed)
        c_.nlErrors++;
        c_.lastNlError = -e;
      }
    }
    pendOff_ += NLMSG_ALIGN(mlen);
  }
  pendIdx_++;
  pendOff_ = 0;
  return 0;
}

int NfQueue::sendAll(struct msghdr* mh, std::string* err) {
  for (int attempt = 0;; attempt++) {
    ssize_t s = sendmsg(fd_, mh, 0);
    if (s >= 0) {
      c_.sendCalls++;
      return 0;
    }
    int e = errno;
    if (e == EINTR) { c_.eintr++; attempt--; continue; }
    // Memory pressure in the kernel while copying the datagram: try again a few times.
    if ((e == ENOBUFS || e == ENOMEM || e == EAGAIN) && attempt < 8) {
      if (e == ENOBUFS) c_.enobufs++;
      struct timespec ts = {0, 100000L << attempt};
      nanosleep(&ts, nullptr);
      continue;
    }
    c_.sendErrors++;
    *err = "queue " + std::to_string(opt_.queue) + ": sending verdicts failed: " + errnoText(e);
    return -e;
  }
}

// Verdicts go out in as few sendmsg calls as the sizes allow. Plain accepts (NF_ACCEPT, mark
// unchanged, no new payload) are folded into NFQNL_MSG_VERDICT_BATCH messages (one per kBatchSpan)
// where that is valid; everything else gets its own NFQNL_MSG_VERDICT, placed before the batches
// in the same datagram.
//
// The rule relied on: the kernel applies a batch verdict with id X to every packet still waiting
// in that queue whose id is <= X (serial arithmetic), walking its list in queue order. Ids are
// given in queue order and the socket delivers them in that order, so the waiting packets with
// ids <= X are exactly those we have received with ids <= X minus those already given a verdict.
// So X may be the id of a plain accept only if every received packet before it in receive order
// already has a verdict, gets an individual one earlier in this send, or is a plain accept of this
// call. We track received ids to know that; plain accepts beyond the first packet that is still
// undecided are sent as individual accepts (same syscall, no waiting for the straggler).
int NfQueue::verdicts(const uint32_t* ids, const uint32_t* codes, const MarkSource& marks,
                      const PayloadSource& payload, size_t n, std::string* err) {
  if (fd_ < 0) {
    *err = "the queue is closed";
    return -EBADF;
  }
  if (n == 0) return 0;
  size_t mask = trackId_.size() - 1;

  struct Msg {
    size_t hdrOff, hdrLen;    // header bytes in vbuf_
    const uint8_t* data;      // replacement payload, or null
    size_t dataLen;
    long track;               // tracker index covered, -1 when none
    bool batch;
    size_t b0, b1;            // a batch: the entries of `batched` it covers
  };
  std::vector<Msg> msgs;
  msgs.reserve(n + 1);
  vbuf_.clear();
  vbuf_.reserve(n * 48 + 64);
  std::vector<long> cand;  // tracker indexes of plain accepts
  cand.reserve(n);

  std::vector<long> batched;  // tracker indexes of the plain accepts sent in batch messages, in queue order
  auto addVerdict = [&](uint32_t id, uint32_t code, bool hasMark, uint32_t mark, const uint8_t* data,
                        size_t dlen, long track, bool batch, size_t b0 = 0, size_t b1 = 0) {
    size_t start = vbuf_.size();
    putHeader(vbuf_, batch ? NFQNL_MSG_VERDICT_BATCH : NFQNL_MSG_VERDICT, 0, 0, opt_.queue);
    struct nfqnl_msg_verdict_hdr vh;
    vh.verdict = htonl(code);
    vh.id = htonl(id);
    putAttr(vbuf_, NFQA_VERDICT_HDR, &vh, sizeof vh);
    if (hasMark) putBE32Attr(vbuf_, NFQA_MARK, mark);
    if (data) {
      struct nlattr a;
      a.nla_len = (uint16_t)(NLA_HDRLEN + dlen);
      a.nla_type = NFQA_PAYLOAD;
      size_t at = vbuf_.size();
      vbuf_.resize(at + NLA_HDRLEN);
      memcpy(&vbuf_[at], &a, sizeof a);
    }
    size_t hlen = vbuf_.size() - start;
    setLen(vbuf_, start, hlen + (data ? dlen : 0));
    msgs.push_back(Msg{start, hlen, data, data ? dlen : 0, track, batch, b0, b1});
  };

  long prevK = -1;
  for (size_t i = 0; i < n; i++) {
    uint32_t mark = 0;
    bool hasMark = marks.get(i, &mark);
    size_t plen = payload.len ? payload.len[i] : 0;
    long k = findTracked(ids[i], prevK);
    if (k >= 0) prevK = k;
    if (k >= 0 && trackState_[k] != ST_PENDING) k = -1;  // a repeat: send it, the kernel says ENOENT
    if (codes[i] == NF_ACCEPT && !hasMark && plen == 0 && k >= 0) {
      trackState_[k] = ST_CAND;
      cand.push_back(k);
      continue;
    }
    if (k >= 0) trackState_[k] = ST_INDIV;
    addVerdict(ids[i], codes[i], hasMark, mark, plen ? payload.data + payload.off[i] : nullptr, plen, k, false);
  }

  // The longest prefix of received packets that are all decided; its last plain accept is X.
  long lastPos = -1;
  for (size_t j = 0; j < trackCount_; j++) {
    uint8_t s = trackState_[(trackHead_ + j) & mask];
    if (s == ST_PENDING) break;
    if (s == ST_CAND) lastPos = (long)j;
  }
  auto posOf = [&](long k) { return ((size_t)k - trackHead_) & mask; };
  for (long k : cand) {
    if ((long)posOf(k) <= lastPos) {
      trackState_[k] = ST_BATCHED;
      batched.push_back(k);
    } else {
      trackState_[k] = ST_INDIV;
      addVerdict(trackId_[k], NF_ACCEPT, false, 0, nullptr, 0, k, false);
    }
  }
  // One batch message per kBatchSpan plain accepts, in queue order: each takes the packets still
  // waiting up to its id, which are exactly its span (everything before is decided and sent).
  std::sort(batched.begin(), batched.end(), [&](long a, long b) { return posOf(a) < posOf(b); });
  for (size_t b = 0; b < batched.size(); b += kBatchSpan) {
    size_t e = std::min(batched.size(), b + kBatchSpan);
    addVerdict(trackId_[batched[e - 1]], NF_ACCEPT, false, 0, nullptr, 0, -1, true, b, e);
  }

  // Send in chunks of whole messages; the batches, being last, go only after all the
  // individual verdicts before them were accepted by the kernel.
  struct sockaddr_nl to;
  memset(&to, 0, sizeof to);
  to.nl_family = AF_NETLINK;
  size_t mi = 0;
  int rc = 0;
  while (mi < msgs.size()) {
    viov_.clear();
    size_t bytes = 0, first = mi;
    while (mi < msgs.size()) {
      const Msg& m = msgs[mi];
      size_t mbytes = NLMSG_ALIGN(m.hdrLen + m.dataLen);
      size_t iovNeed = m.data ? 3 : 1;
      if (mi > first && (bytes + mbytes > kSendChunk || viov_.size() + iovNeed > kMaxIov)) break;
      uint8_t* hp = &vbuf_[m.hdrOff];
      // merge with the previous header bytes when they are contiguous in vbuf_
      if (!viov_.empty() && (uint8_t*)viov_.back().iov_base + viov_.back().iov_len == hp)
        viov_.back().iov_len += m.hdrLen;
      else
        viov_.push_back(iovec{hp, m.hdrLen});
      if (m.data) {
        viov_.push_back(iovec{(void*)m.data, m.dataLen});
        size_t pad = NLMSG_ALIGN(m.hdrLen + m.dataLen) - (m.hdrLen + m.dataLen);
        if (pad) viov_.push_back(iovec{(void*)kZero, pad});
      }
      bytes += mbytes;
      mi++;
    }
    struct msghdr mh;
    memset(&mh, 0, sizeof mh);
    mh.msg_name = &to;
    mh.msg_namelen = sizeof to;
    mh.msg_iov = viov_.data();
    mh.msg_iovlen = viov_.size();
    rc = sendAll(&mh, err);
    if (rc < 0) {
      mi = first;
      break;
    }
    for (size_t j = first; j < mi; j++) {
      c_.verdictMsgs++;
      if (msgs[j].batch) {
        c_.batchMsgs++;
        for (size_t b = msgs[j].b0; b < msgs[j].b1; b++) {
          trackState_[batched[b]] = ST_DONE;
          trackDone_++;
          c_.verdicts++;
        }
      } else {
        c_.verdicts++;
        long k = msgs[j].track;
        if (k >= 0) {
          trackState_[k] = ST_DONE;
          trackDone_++;
        }
      }
    }
  }
  if (rc < 0) {  // what was not sent is still waiting for a verdict
    for (size_t j = mi; j < msgs.size(); j++)
      if (msgs[j].track >= 0) trackState_[msgs[j].track] = ST_PENDING;
    for (long k : batched)
      if (trackState_[k] == ST_BATCHED) trackState_[k] = ST_PENDING;
  }
  popDone();
  return rc;
}

int NfQueue::verdictRecords(const uint8_t* recs, size_t bytes, size_t n, const int32_t* verdict,
                            const double* mark, const uint8_t* fault, uint32_t faultCode,
                            RecordVerdicts* out, std::string* err) {
  recIds_.resize(n);
  recCodes_.resize(n);
  recMarks_.resize(n);
  size_t pos = 0;
  for (size_t k = 0; k < n; k++) {
    const uint8_t* r = recs + pos;
    uint32_t reclen = pos + rec::HDR <= bytes ? getLE32(r + rec::RECLEN) : 0;
    if (reclen < rec::HDR || pos + reclen > bytes) {
      *err = "verdictRecords: record " + std::to_string(k) + " of " + std::to_string(n) + " lies outside the " +
             std::to_string(bytes) + " bytes given";
      return -EINVAL;
    }
    uint8_t flags = r[rec::FLAGS];
    if (flags & rec::FLAG_GSO) out->gso++;
    if (flags & rec::FLAG_CSUM_NOT_READY) out->csumPartial++;
    uint32_t id = getLE32(r + rec::ID);
    uint32_t code = (uint32_t)verdict[k];
    double m = mark[k];
    if (!(code == NF_ACCEPT || code == NF_DROP || code == NF_REPEAT || (code & 0xffff) == NF_QUEUE)) {
      if (out->invalid < RecordVerdicts::kShown) {
        out->badId[out->invalid] = id;
        out->badCode[out->invalid] = code;
      }
      out->invalid++;
      code = faultCode;
      m = -1;
    }
    if (fault[k]) out->faults++;
    if (code == NF_ACCEPT) out->accepted++;
    else if (code == NF_DROP) out->dropped++;
    else out->other++;
    recIds_[k] = id;
    recCodes_[k] = code;
    recMarks_[k] = m;
    pos += reclen;
  }
  MarkSource marks;
  marks.f64 = recMarks_.data();
  return verdicts(recIds_.data(), recCodes_.data(), marks, PayloadSource(), n, err);
}

int NfQueue::settleAll(uint32_t code, std::string* err) {
  if (fd_ < 0) return 0;
  bool have = false;
  uint32_t maxId = 0;
  auto see = [&](uint32_t id) {
    if (!have || (int32_t)(id - maxId) > 0) maxId = id;
    have = true;
  };
  size_t mask = trackId_.size() - 1;
  for (size_t j = 0; j < trackCount_; j++)
    if (trackState_[(trackHead_ + j) & mask] != ST_DONE) see(trackId_[(trackHead_ + j) & mask]);
  // Messages not yet delivered to the caller: those in our slots, then whatever the socket holds.
  auto scan = [&](uint32_t from) {
    for (uint32_t i = from; i < pendN_; i++) {
      const uint8_t* d = &scratch_[i * slot_];
      size_t len = msgs_[i].msg_len;
      for (size_t off = 0; off + NLMSG_HDRLEN <= len;) {
        const struct nlmsghdr* h = (const struct nlmsghdr*)(d + off);
        if (h->nlmsg_len < NLMSG_HDRLEN) break;
        size_t avail = std::min<size_t>(h->nlmsg_len, len - off);
        if (h->nlmsg_type == kMsgType(NFQNL_MSG_PACKET)) {
          const uint8_t* p = d + off + NLMSG_HDRLEN + NLMSG_ALIGN(sizeof(struct nfgenmsg));
          const uint8_t* end = d + off + avail;
          while (p + NLA_HDRLEN <= end) {
            const struct nlattr* a = (const struct nlattr*)p;
            if (a->nla_len < NLA_HDRLEN || p + a->nla_len > end) break;
            if ((a->nla_type & NLA_TYPE_MASK) == NFQA_PACKET_HDR && a->nla_len >= NLA_HDRLEN + 4) {
              see(getBE32(p + NLA_HDRLEN));
              break;
            }
            p += NLA_ALIGN(a->nla_len);
          }
        }
        off += NLMSG_ALIGN(h->nlmsg_len);
      }
    }
  };
  if (hasPending()) scan(pendIdx_);
  for (int rounds = 0; rounds < 4096; rounds++) {
    for (uint32_t i = 0; i < opt_.batch; i++) {
      msgs_[i].msg_len = 0;
      msgs_[i].msg_hdr.msg_flags = 0;
    }
    int r = recvmmsg(fd_, msgs_.data(), opt_.batch, MSG_DONTWAIT, nullptr);
    if (r < 0) {
      if (errno == EINTR) { c_.eintr++; continue; }
      if (errno == ENOBUFS) { c_.enobufs++; continue; }
      break;
    }
    if (r == 0) break;
    pendN_ = (uint32_t)r;
    scan(0);
  }
  pendN_ = pendIdx_ = 0;
  pendOff_ = 0;
  trackCount_ = trackDone_ = trackHead_ = 0;
  if (!have) return 0;
  vbuf_.clear();
  putHeader(vbuf_, NFQNL_MSG_VERDICT_BATCH, 0, 0, opt_.queue);
  struct nfqnl_msg_verdict_hdr vh;
  vh.verdict = htonl(code);
  vh.id = htonl(maxId);
  putAttr(vbuf_, NFQA_VERDICT_HDR, &vh, sizeof vh);
  setLen(vbuf_, 0, vbuf_.size());
  struct sockaddr_nl to;
  memset(&to, 0, sizeof to);
  to.nl_family = AF_NETLINK;
  struct iovec iov = {vbuf_.data(), vbuf_.size()};
  struct msghdr mh;
  memset(&mh, 0, sizeof mh);
  mh.msg_name = &to;
  mh.msg_namelen = sizeof to;
  mh.msg_iov = &iov;
  mh.msg_iovlen = 1;
  int rc = sendAll(&mh, err);
  if (rc == 0) {
    c_.verdictMsgs++;
    c_.batchMsgs++;
  }
  return rc;
}

}  // namespace psd
