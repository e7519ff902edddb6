// N-API face of NfQueue: a Queue class for src/live/nfqueue.ts. Thin on purpose: argument
// checks, errors with a code, a uv_poll for readiness. No per-packet JS values anywhere.
#include <napi.h>
#include <uv.h>

#include <cerrno>
#include <cstring>
#include <string>

#include <linux/netfilter.h>

#include "nfq_queue.h"

namespace {

Napi::Error makeError(Napi::Env env, int negErrno, const std::string& msg) {
  Napi::Error e = Napi::Error::New(env, msg);
  int er = negErrno < 0 ? -negErrno : negErrno;
  const char* name = strerrorname_np(er);
  e.Set("code", Napi::String::New(env, name ? name : "EUNKNOWN"));
  e.Set("errno", Napi::Number::New(env, er));
  return e;
}

template <typename T>
bool getTyped(const Napi::Value& v, napi_typedarray_type want, T** data, size_t* len) {
  if (!v.IsTypedArray()) return false;
  Napi::TypedArray ta = v.As<Napi::TypedArray>();
  if (ta.TypedArrayType() != want) return false;
  napi_value ab;
  size_t n, off;
  void* base;
  napi_typedarray_type t;
  if (napi_get_typedarray_info(v.Env(), v, &t, &n, &base, &ab, &off) != napi_ok) return false;
  *data = static_cast<T*>(base);  // base already includes the byte offset
  *len = n;
  return true;
}

class Queue;

// The uv_poll lives apart from the Queue so that either can go first: the handle is freed
// only in its close callback, which libuv runs after the current callback returns.
struct Poller {
  uv_poll_t handle;
  Queue* owner = nullptr;
  napi_env env = nullptr;
  Napi::FunctionReference cb;
  napi_async_cleanup_hook_handle hook = nullptr;
  bool closing = false;
};

class Queue : public Napi::ObjectWrap<Queue> {
 public:
  static Napi::Function Init(Napi::Env env) {
    return DefineClass(env, "Queue",
                       {
                           InstanceMethod("receive", &Queue::Receive),
                           InstanceMethod("verdicts", &Queue::Verdicts),
                           InstanceMethod("verdictRecords", &Queue::VerdictRecords),
                           InstanceMethod("settleAll", &Queue::SettleAll),
                           InstanceMethod("startPoll", &Queue::StartPoll),
                           InstanceMethod("stopPoll", &Queue::StopPoll),
                           InstanceMethod("close", &Queue::Close),
                           InstanceMethod("stats", &Queue::Stats),
                           InstanceAccessor("fd", &Queue::GetFd, nullptr),
                           InstanceAccessor("portid", &Queue::GetPortid, nullptr),
                           InstanceAccessor("queue", &Queue::GetQueue, nullptr),
                           InstanceAccessor("outstanding", &Queue::GetOutstanding, nullptr),
                           InstanceAccessor("pending", &Queue::GetPending, nullptr),
                           InstanceAccessor("maxRecord", &Queue::GetMaxRecord, nullptr),
                       });
  }

  explicit Queue(const Napi::CallbackInfo& info) : Napi::ObjectWrap<Queue>(info) {
    Napi::Env env = info.Env();
    if (info.Length() < 1 || !info[0].IsObject()) {
      Napi::TypeError::New(env, "Queue(options): options object expected").ThrowAsJavaScriptException();
      return;
    }
    Napi::Object o = info[0].As<Napi::Object>();
    psd::OpenOptions opt;
    auto num = [&](const char* k, double def) {
      Napi::Value v = o.Get(k);
      return v.IsNumber() ? v.As<Napi::Number>().DoubleValue() : def;
    };
    auto flag = [&](const char* k, bool def) {
      Napi::Value v = o.Get(k);
      return v.IsBoolean() ? v.As<Napi::Boolean>().Value() : def;
    };
    double q = num("queue", 0), maxlen = num("maxlen", 4096), copy = num("copyRange", 0xffff);
    double rcv = num("rcvbuf", 0), batch = num("batch", 64);
    if (!(q >= 0 && q <= 65535 && q == (int)q)) {
      Napi::RangeError::New(env, "queue must be an integer 0..65535").ThrowAsJavaScriptException();
      return;
    }
    if (!(maxlen >= 1 && maxlen <= 65536 && maxlen == (int)maxlen)) {
      Napi::RangeError::New(env, "maxlen must be an integer 1..65536 (the kernel holds at most 65536 packets per queue)")
          .ThrowAsJavaScriptException();
      return;
    }
    if (!(copy >= 1 && copy <= 65535)) {
      Napi::RangeError::New(env, "copyRange must be 1..65535").ThrowAsJavaScriptException();
      return;
    }
    if (!(batch >= 1 && batch <= 1024)) {
      Napi::RangeError::New(env, "batch must be 1..1024").ThrowAsJavaScriptException();
      return;
    }
    if (!(rcv >= 0 && rcv <= 2147483647.0)) {
      Napi::RangeError::New(env, "rcvbuf must be 0..2^31-1 bytes").ThrowAsJavaScriptException();
      return;
    }
    opt.queue = (uint16_t)q;
    opt.maxlen = (uint32_t)maxlen;
    opt.copyRange = (uint32_t)copy;
    opt.rcvbuf = (uint64_t)rcv;
    opt.batch = (uint32_t)batch;
    opt.failOpen = flag("failOpen", false);
    opt.gso = flag("gso", false);
    opt.uidGid = flag("uidGid", false);
    opt.conntrack = flag("conntrack", false);
    opt.noEnobufs = flag("noEnobufs", true);
    std::string err;
    int r = q_.open(opt, &err);
    if (r < 0) makeError(env, r, err).ThrowAsJavaScriptException();
  }

  ~Queue() override { DetachPoller(true); }

 private:
  // receive(buf: Uint8Array, maxRecords: number, info: Uint32Array, ids?: Float64Array) -> records
  Napi::Value Receive(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    uint8_t* buf;
    size_t cap;
    uint32_t* out;
    size_t outLen;
    if (info.Length() < 3 || !getTyped(info[0], napi_uint8_array, &buf, &cap) || !info[1].IsNumber() ||
        !getTyped(info[2], napi_uint32_array, &out, &outLen) || outLen < 2) {
      Napi::TypeError::New(env, "receive(buf: Uint8Array, maxRecords: number, info: Uint32Array(2+), ids?: Float64Array)")
          .ThrowAsJavaScriptException();
      return env.Undefined();
    }
    double max = info[1].As<Napi::Number>().DoubleValue();
    uint32_t maxRecords = max >= 4294967295.0 ? 0xffffffffu : (max > 0 ? (uint32_t)max : 0);
    psd::ReceiveResult rr;
    if (info.Length() > 3 && !info[3].IsUndefined() && !info[3].IsNull()) {
      size_t nIds;
      if (!getTyped(info[3], napi_float64_array, &rr.ids, &nIds) || nIds < maxRecords) {
        Napi::TypeError::New(env, "receive: ids must be a Float64Array of at least maxRecords numbers").ThrowAsJavaScriptException();
        return env.Undefined();
      }
    }
    int r = q_.receive(buf, cap, maxRecords, &rr);
    out[0] = rr.records;
    out[1] = rr.bytes;
    if (outLen > 2) out[2] = q_.hasPending() ? 1 : 0;
    if (r == -EMSGSIZE) {
      makeError(env, r, "receive: buffer of " + std::to_string(cap) + " bytes cannot hold the next packet; give at least " +
                            std::to_string(q_.maxRecord()) + " bytes")
          .ThrowAsJavaScriptException();
      return env.Undefined();
    }
    if (r < 0) {
      makeError(env, r, "queue " + std::to_string(q_.queue()) + ": receive failed: " + strerror(-r))
          .ThrowAsJavaScriptException();
      return env.Undefined();
    }
    return Napi::Number::New(env, rr.records);
  }

  // verdicts(count, ids: Uint32Array, codes: Uint32Array, marks?: Uint32Array|Float64Array|null,
  //          data?: Uint8Array|null, offsets?: Uint32Array|null, lengths?: Uint32Array|null) -> count
  Napi::Value Verdicts(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    const char* usage =
        "verdicts(count, ids: Uint32Array, codes: Uint32Array, marks?: Uint32Array|Float64Array|null, "
        "data?: Uint8Array|null, offsets?: Uint32Array|null, lengths?: Uint32Array|null)";
    if (info.Length() < 3 || !info[0].IsNumber()) {
      Napi::TypeError::New(env, usage).ThrowAsJavaScriptException();
      return env.Undefined();
    }
    double nd = info[0].As<Napi::Number>().DoubleValue();
    if (!(nd >= 0 && nd == (double)(size_t)nd)) {
      Napi::RangeError::New(env, "verdicts: count must be a non-negative integer").ThrowAsJavaScriptException();
      return env.Undefined();
    }
    size_t n = (size_t)nd;
    uint32_t *ids, *codes;
    size_t nIds, nCodes;
    if (!getTyped(info[1], napi_uint32_array, &ids, &nIds) || !getTyped(info[2], napi_uint32_array, &codes, &nCodes)) {
      Napi::TypeError::New(env, usage).ThrowAsJavaScriptException();
      return env.Undefined();
    }
    if (nIds < n || nCodes < n) {
      Napi::RangeError::New(env, "verdicts: ids and codes must hold count entries").ThrowAsJavaScriptException();
      return env.Undefined();
    }
    for (size_t i = 0; i < n; i++) {
      uint32_t v = codes[i] & NF_VERDICT_MASK;
      if (v != NF_ACCEPT && v != NF_DROP && v != NF_REPEAT && v != NF_QUEUE && v != NF_STOP) {
        Napi::RangeError::New(env, "verdicts: code " + std::to_string(codes[i]) + " at " + std::to_string(i) +
                                       " is not NF_ACCEPT, NF_DROP, NF_REPEAT or NF_QUEUE_NR(n)")
            .ThrowAsJavaScriptException();
        return env.Undefined();
      }
    }
    psd::MarkSource marks;
    if (info.Length() > 3 && !info[3].IsNull() && !info[3].IsUndefined()) {
      size_t nm;
      uint32_t* m32;
      double* m64;
      if (getTyped(info[3], napi_uint32_array, &m32, &nm)) marks.u32 = m32;
      else if (getTyped(info[3], napi_float64_array, &m64, &nm)) marks.f64 = m64;
      else {
        Napi::TypeError::New(env, "verdicts: marks must be a Uint32Array or a Float64Array").ThrowAsJavaScriptException();
        return env.Undefined();
      }
      if (nm < n) {
        Napi::RangeError::New(env, "verdicts: marks must hold count entries").ThrowAsJavaScriptException();
        return env.Undefined();
      }
    }
    psd::PayloadSource pl;
    if (info.Length() > 4 && !info[4].IsNull() && !info[4].IsUndefined()) {
      uint8_t* data;
      size_t size, no, nl;
      uint32_t *offs, *lens;
      if (!getTyped(info[4], napi_uint8_array, &data, &size) || info.Length() < 7 ||
          !getTyped(info[5], napi_uint32_array, &offs, &no) || !getTyped(info[6], napi_uint32_array, &lens, &nl)) {
        Napi::TypeError::New(env, "verdicts: a payload needs data: Uint8Array, offsets and lengths: Uint32Array")
            .ThrowAsJavaScriptException();
        return env.Undefined();
      }
      if (no < n || nl < n) {
        Napi::RangeError::New(env, "verdicts: offsets and lengths must hold count entries").ThrowAsJavaScriptException();
        return env.Undefined();
      }
      for (size_t i = 0; i < n; i++) {
        if (lens[i] == 0) continue;
        if (lens[i] > 0xffff - 4) {
          Napi::RangeError::New(env, "verdicts: payload " + std::to_string(i) + " is longer than 65531 bytes")
              .ThrowAsJavaScriptException();
          return env.Undefined();
        }
        if ((uint64_t)offs[i] + lens[i] > size) {
          Napi::RangeError::New(env, "verdicts: payload " + std::to_string(i) + " lies outside data")
              .ThrowAsJavaScriptException();
          return env.Undefined();
        }
      }
      pl.data = data;
      pl.size = size;
      pl.off = offs;
      pl.len = lens;
    }
    std::string err;
    int r = q_.verdicts(ids, codes, marks, pl, n, &err);
    if (r < 0) {
      makeError(env, r, err).ThrowAsJavaScriptException();
      return env.Undefined();
    }
    return Napi::Number::New(env, (double)n);
  }

  // verdictRecords(records: Uint8Array, count, verdict: Int32Array, mark: Float64Array, fault: Uint8Array,
  //                faultCode, res: Float64Array(15)) -> count
  // res: accepted, dropped, other, faults, gso, csumPartial, invalid, then (id, code) of the first
  // four invalid codes.
  Napi::Value VerdictRecords(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    uint8_t *recs, *fault;
    int32_t* verdict;
    double *mark, *res;
    size_t bytes, nv, nm, nf, nr;
    if (info.Length() < 7 || !getTyped(info[0], napi_uint8_array, &recs, &bytes) || !info[1].IsNumber() ||
        !getTyped(info[2], napi_int32_array, &verdict, &nv) || !getTyped(info[3], napi_float64_array, &mark, &nm) ||
        !getTyped(info[4], napi_uint8_array, &fault, &nf) || !info[5].IsNumber() ||
        !getTyped(info[6], napi_float64_array, &res, &nr)) {
      Napi::TypeError::New(env, "verdictRecords(records: Uint8Array, count, verdict: Int32Array, mark: Float64Array, "
                                "fault: Uint8Array, faultCode, res: Float64Array(15))")
          .ThrowAsJavaScriptException();
      return env.Undefined();
    }
    double nd = info[1].As<Napi::Number>().DoubleValue();
    if (!(nd >= 0 && nd == (double)(size_t)nd) || nv < (size_t)nd || nm < (size_t)nd || nf < (size_t)nd || nr < 15) {
      Napi::RangeError::New(env, "verdictRecords: count must be a non-negative integer that verdict, mark and fault hold, "
                                 "and res must hold 15 numbers")
          .ThrowAsJavaScriptException();
      return env.Undefined();
    }
    size_t n = (size_t)nd;
    psd::RecordVerdicts rv;
    std::string err;
    int r = q_.verdictRecords(recs, bytes, n, verdict, mark, fault, info[5].As<Napi::Number>().Uint32Value(), &rv, &err);
    res[0] = rv.accepted;
    res[1] = rv.dropped;
    res[2] = rv.other;
    res[3] = rv.faults;
    res[4] = rv.gso;
    res[5] = rv.csumPartial;
    res[6] = rv.invalid;
    for (size_t i = 0; i < psd::RecordVerdicts::kShown; i++) {
      res[7 + 2 * i] = rv.badId[i];
      res[8 + 2 * i] = rv.badCode[i];
    }
    if (r < 0) {
      makeError(env, r, err).ThrowAsJavaScriptException();
      return env.Undefined();
    }
    return Napi::Number::New(env, (double)n);
  }

  Napi::Value SettleAll(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    uint32_t code = NF_ACCEPT;
    if (info.Length() > 0 && info[0].IsNumber()) code = info[0].As<Napi::Number>().Uint32Value();
    std::string err;
    int r = q_.settleAll(code, &err);
    if (r < 0) makeError(env, r, err).ThrowAsJavaScriptException();
    return env.Undefined();
  }

  Napi::Value StartPoll(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    if (info.Length() < 1 || !info[0].IsFunction()) {
      Napi::TypeError::New(env, "startPoll(callback: (status: number) => void)").ThrowAsJavaScriptException();
      return env.Undefined();
    }
    if (q_.fd() < 0) {
      makeError(env, -EBADF, "the queue is closed").ThrowAsJavaScriptException();
      return env.Undefined();
    }
    if (poller_) {  // replace the callback only
      poller_->cb = Napi::Persistent(info[0].As<Napi::Function>());
      return env.Undefined();
    }
    uv_loop_t* loop = nullptr;
    if (napi_get_uv_event_loop(env, &loop) != napi_ok || !loop) {
      Napi::Error::New(env, "no event loop").ThrowAsJavaScriptException();
      return env.Undefined();
    }
    Poller* p = new Poller();
    int r = uv_poll_init(loop, &p->handle, q_.fd());
    if (r < 0) {
      delete p;
      makeError(env, r, std::string("uv_poll_init: ") + uv_strerror(r)).ThrowAsJavaScriptException();
      return env.Undefined();
    }
    p->handle.data = p;
    p->owner = this;
    p->env = env;
    p->cb = Napi::Persistent(info[0].As<Napi::Function>());
    r = uv_poll_start(&p->handle, UV_READABLE, OnPoll);
    if (r < 0) {
      p->closing = true;
      uv_close(reinterpret_cast<uv_handle_t*>(&p->handle), [](uv_handle_t* h) { delete static_cast<Poller*>(h->data); });
      makeError(env, r, std::string("uv_poll_start: ") + uv_strerror(r)).ThrowAsJavaScriptException();
      return env.Undefined();
    }
    napi_add_async_cleanup_hook(env, OnEnvCleanup, p, &p->hook);
    poller_ = p;
    Ref();  // a queue being polled must not be collected
    return env.Undefined();
  }

  Napi::Value StopPoll(const Napi::CallbackInfo& info) {
    DetachPoller(false);
    return info.Env().Undefined();
  }

  Napi::Value Close(const Napi::CallbackInfo& info) {
    DetachPoller(false);
    q_.close();
    return info.Env().Undefined();
  }

  Napi::Value Stats(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    const psd::Counters& c = q_.counters();
    Napi::Object o = Napi::Object::New(env);
    o.Set("packets", c.packets);
    o.Set("recvCalls", c.recvCalls);
    o.Set("enobufs", c.enobufs);
    o.Set("eintr", c.eintr);
    o.Set("truncated", c.truncated);
    o.Set("verdicts", c.verdicts);
    o.Set("verdictMsgs", c.verdictMsgs);
    o.Set("batchMsgs", c.batchMsgs);
    o.Set("sendCalls", c.sendCalls);
    o.Set("sendErrors", c.sendErrors);
    o.Set("nlErrors", c.nlErrors);
    o.Set("lastNlError", c.lastNlError);
    o.Set("rcvbuf", c.rcvbuf);
    o.Set("outstanding", (double)q_.outstanding());
    return o;
  }

  Napi::Value GetFd(const Napi::CallbackInfo& info) { return Napi::Number::New(info.Env(), q_.fd()); }
  Napi::Value GetPortid(const Napi::CallbackInfo& info) { return Napi::Number::New(info.Env(), q_.portid()); }
  Napi::Value GetQueue(const Napi::CallbackInfo& info) { return Napi::Number::New(info.Env(), q_.queue()); }
  Napi::Value GetOutstanding(const Napi::CallbackInfo& info) {
    return Napi::Number::New(info.Env(), (double)q_.outstanding());
  }
  Napi::Value GetPending(const Napi::CallbackInfo& info) { return Napi::Boolean::New(info.Env(), q_.hasPending()); }
  Napi::Value GetMaxRecord(const Napi::CallbackInfo& info) {
    return Napi::Number::New(info.Env(), (double)q_.maxRecord());
  }

  static void OnPoll(uv_poll_t* h, int status, int /*events*/) {
    Poller* p = static_cast<Poller*>(h->data);
    if (p->closing || !p->owner || p->cb.IsEmpty()) return;
    Queue* owner = p->owner;
    if (status < 0) {
      // libuv reports a socket error (POLLERR) as UV_EBADF and stops the poll. On netlink that is
      // mostly ENOBUFS (the kernel overran our receive buffer and lost messages): count it,
      // clear it and carry on reading.
      int e = owner->q_.takeSocketError();
      if (e == 0 || e == ENOBUFS) {
        status = uv_poll_start(&p->handle, UV_READABLE, OnPoll);
      }
    }
    Napi::Env env(p->env);
    Napi::HandleScope scope(env);
    // MakeCallback runs the microtask queue and process.nextTick afterwards, like any I/O callback.
    p->cb.MakeCallback(owner->Value(), {Napi::Number::New(env, status)});
    if (env.IsExceptionPending()) {
      Napi::Error e = env.GetAndClearPendingException();
      napi_fatal_exception(env, e.Value());  // to process 'uncaughtException', as for any callback
    }
  }

  static void OnClosed(uv_handle_t* h) { delete static_cast<Poller*>(h->data); }

  // Environment teardown (process or worker exit) with the poll still running.
  static void OnEnvCleanup(napi_async_cleanup_hook_handle handle, void* arg) {
    Poller* p = static_cast<Poller*>(arg);
    p->closing = true;
    if (p->owner) p->owner->poller_ = nullptr;
    p->owner = nullptr;
    p->hook = handle;
    uv_poll_stop(&p->handle);
    uv_close(reinterpret_cast<uv_handle_t*>(&p->handle), [](uv_handle_t* h) {
      Poller* q = static_cast<Poller*>(h->data);
      napi_remove_async_cleanup_hook(q->hook);
      delete q;
    });
  }

  void DetachPoller(bool inDestructor) {
    Poller* p = poller_;
    if (!p) return;
    poller_ = nullptr;
    p->closing = true;
    p->owner = nullptr;
    uv_poll_stop(&p->handle);
    if (p->hook) napi_remove_async_cleanup_hook(p->hook);
    p->hook = nullptr;
    if (!inDestructor) p->cb.Reset();
    uv_close(reinterpret_cast<uv_handle_t*>(&p->handle), OnClosed);
    if (!inDestructor) Unref();
  }

  psd::NfQueue q_;
  Poller* poller_ = nullptr;
};

Napi::Object InitModule(Napi::Env env, Napi::Object exports) {
  exports.Set("Queue", Queue::Init(env));
  Napi::Object c = Napi::Object::New(env);
  c.Set("NF_DROP", NF_DROP);
  c.Set("NF_ACCEPT", NF_ACCEPT);
  c.Set("NF_QUEUE", NF_QUEUE);
  c.Set("NF_REPEAT", NF_REPEAT);
  c.Set("NF_STOP", NF_STOP);
  exports.Set("constants", c);
  return exports;
}

}  // namespace

NODE_API_MODULE(psd_nfqueue, InitModule)
