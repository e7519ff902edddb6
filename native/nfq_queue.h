// One NFQUEUE queue bound over a netlink socket that this code speaks itself (no libmnl, no
// libnetfilter_queue): configuration with acknowledgements, batch receive into the record
// layout of src/batch-format.ts, and batch verdicts. No N-API in here: addon.cc wraps it.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

#include <sys/socket.h>

namespace psd {

// Record layout, kept in step with src/batch-format.ts (little-endian, 52-byte header).
namespace rec {
constexpr size_t HDR = 52;
constexpr uint32_t NONE = 0xffffffffu;
constexpr size_t RECLEN = 0, LEN = 4, ORIGLEN = 8, ID = 12, MARK = 16, SEC = 20, NSEC = 24,
                 FAMILY = 28, HOOK = 29, FLAGS = 30, PAD = 31, QUEUE = 32, UID = 36, GID = 40,
                 INDEV = 44, OUTDEV = 48;
constexpr uint8_t FLAG_GSO = 1, FLAG_CSUM_NOT_READY = 2;
}  // namespace rec

struct OpenOptions {
  uint16_t queue = 0;
  uint32_t maxlen = 4096;          // packets the kernel may hold for us (it caps at 65536)
  uint32_t copyRange = 0xffff;     // bytes of each packet copied to us (the kernel clamps to 65531)
  bool failOpen = false;           // NFQA_CFG_F_FAIL_OPEN
  bool gso = false;                // NFQA_CFG_F_GSO
  bool uidGid = false;             // NFQA_CFG_F_UID_GID
  bool conntrack = false;          // NFQA_CFG_F_CONNTRACK
  bool noEnobufs = true;           // NETLINK_NO_ENOBUFS
  uint64_t rcvbuf = 0;             // socket receive buffer; 0: sized from maxlen and copyRange
  uint32_t batch = 64;             // most messages one recvmmsg takes
};

// Counters kept by the queue; exported to JS as numbers.
struct Counters {
  double packets = 0;        // records delivered to the caller
  double recvCalls = 0;      // recvmmsg calls that returned messages
  double enobufs = 0;        // ENOBUFS seen on receive (socket overrun: the kernel lost messages)
  double eintr = 0;          // interrupted system calls retried
  double truncated = 0;      // packet messages cut by a too-small receive slot (delivered shortened)
  double verdicts = 0;       // packets given a verdict
  double verdictMsgs = 0;    // verdict messages sent (individual + batch)
  double batchMsgs = 0;      // NFQNL_MSG_VERDICT_BATCH messages sent
  double sendCalls = 0;      // sendmsg calls
  double sendErrors = 0;     // sendmsg calls that failed after retries
  double nlErrors = 0;       // error messages the kernel sent back (e.g. ENOENT: unknown packet id)
  double lastNlError = 0;    // errno of the last of those
  double rcvbuf = 0;         // effective SO_RCVBUF (bytes, as the kernel reports it)
};

// Where a verdict's new mark comes from: a Uint32Array (0xffffffff = unchanged) or a
// Float64Array (any value outside 0..2^32-1, e.g. -1, = unchanged).
struct MarkSource {
  const uint32_t* u32 = nullptr;
  const double* f64 = nullptr;
  bool get(size_t i, uint32_t* out) const {
    if (u32) {
      if (u32[i] == rec::NONE) return false;
      *out = u32[i];
      return true;
    }
    if (f64) {
      double v = f64[i];
      if (!(v >= 0 && v <= 4294967295.0)) return false;  // also catches NaN
      *out = (uint32_t)v;
      return true;
    }
    return false;
  }
};

// Replacement payloads: packet i gets data[off[i] .. off[i]+len[i]) when len[i] > 0.
struct PayloadSource {
  const uint8_t* data = nullptr;
  size_t size = 0;
  const uint32_t* off = nullptr;
  const uint32_t* len = nullptr;
};

struct ReceiveResult {
  uint32_t records = 0;
  uint32_t bytes = 0;
  double* ids = nullptr;  // when set (maxRecords slots), record k's packet id goes to ids[k] too
};

// What verdictRecords gave, for the caller's counters and log.
struct RecordVerdicts {
  uint32_t accepted = 0, dropped = 0, other = 0;  // by the code sent
  uint32_t faults = 0;                           // records whose fault byte is set
  uint32_t gso = 0, csumPartial = 0;             // records flagged GSO / checksum not ready
  uint32_t invalid = 0;                          // codes the kernel would not take (sent as faultCode)
  static constexpr size_t kShown = 4;
  uint32_t badId[kShown] = {}, badCode[kShown] = {};  // the first of those
};

class NfQueue {
 public:
  NfQueue() = default;
  ~NfQueue();
  NfQueue(const NfQueue&) = delete;
  NfQueue& operator=(const NfQueue&) = delete;

  // Opens the socket and binds/configures the queue. On failure returns -errno and sets *err to
  // a message meant for a person.
  int open(const OpenOptions& o, std::string* err);
  void close();
  int fd() const { return fd_; }
  uint32_t portid() const { return portid_; }
  uint16_t queue() const { return opt_.queue; }
  const Counters& counters() const { return c_; }
  // Packets delivered to the caller and not yet given a verdict.
  size_t outstanding() const { return trackCount_ - trackDone_; }
  // Messages received from the socket and not yet delivered (the caller's buffer was full).
  bool hasPending() const { return pendIdx_ < pendN_; }
  // Reads and clears the socket's pending error (SO_ERROR), counting ENOBUFS. Returns it (0: none).
  int takeSocketError();
  // Largest record a single packet can need (header + copy range, aligned).
  size_t maxRecord() const;

  // Writes up to maxRecords records at dst[0..cap). Never blocks. Returns 0, or -errno on a
  // socket error that is not transient.
  int receive(uint8_t* dst, size_t cap, uint32_t maxRecords, ReceiveResult* out);

  // Sends verdicts for n packets. codes are the kernel's verdict values (NF_ACCEPT, NF_DROP,
  // NF_REPEAT, NF_QUEUE_NR(n) ...). Returns 0 or -errno (the verdicts that were not sent stay
  // outstanding). *err says why.
  int verdicts(const uint32_t* ids, const uint32_t* codes, const MarkSource& marks,
               const PayloadSource& payload, size_t n, std::string* err);

  // The verdicts of n records as receive() wrote them (ids and flags read from the records), with
  // verdict[k] and mark[k] (outside 0..2^32-1: unchanged) for record k and no new payloads: the
  // live loop's common case in one call. A code other than NF_ACCEPT, NF_DROP, NF_REPEAT or
  // NF_QUEUE_NR(n) is sent as faultCode with the mark unchanged and reported in *out.
  int verdictRecords(const uint8_t* recs, size_t bytes, size_t n, const int32_t* verdict, const double* mark,
                     const uint8_t* fault, uint32_t faultCode, RecordVerdicts* out, std::string* err);

  // Gives every outstanding packet (delivered or still pending in our buffer) the verdict code
  // with a single batch message. Used on shutdown.
  int settleAll(uint32_t code, std::string* err);

 private:
  // request/ack over the socket, used for configuration only
  int request(std::vector<uint8_t>& msg, std::string* extack, int timeoutMs);
  int sendAll(struct msghdr* mh, std::string* err);
  size_t parseDatagram(uint8_t* dst, size_t cap, uint32_t maxRecords, ReceiveResult* out,
                       const struct timespec& now);
  void track(uint32_t id);
  long findTracked(uint32_t id, long after = -1) const;
  void popDone();

  int fd_ = -1;
  uint32_t portid_ = 0;
  uint32_t seq_ = 1;
  OpenOptions opt_;
  Counters c_;

  // receive slots (scratch): datagrams land here, then are parsed into the caller's records
  size_t slot_ = 0;
  std::vector<uint8_t> scratch_;
  std::vector<struct mmsghdr> msgs_;
  std::vector<struct iovec> iovs_;
  uint32_t pendN_ = 0;     // datagrams received in the last recvmmsg
  uint32_t pendIdx_ = 0;   // next datagram to parse
  size_t pendOff_ = 0;     // offset of the next message inside that datagram
  struct timespec pendTime_ = {0, 0};

  // Outstanding packet ids in receive order (ids rise in that order, serial arithmetic), as a
  // ring with a state per entry. This is what makes batch verdicts safe, see verdicts().
  std::vector<uint32_t> trackId_;
  std::vector<uint8_t> trackState_;
  size_t trackHead_ = 0, trackCount_ = 0, trackDone_ = 0;

  // verdict send buffers, reused
  std::vector<uint8_t> vbuf_;
  std::vector<struct iovec> viov_;
  // verdictRecords' arrays for verdicts(), reused
  std::vector<uint32_t> recIds_, recCodes_;
  std::vector<double> recMarks_;
};

}  // namespace psd
