#include "runtime.h"

#include <algorithm>
#include <set>
#include <sstream>
#include <stdexcept>

namespace jrm {
namespace {

const std::vector<std::string> kInputs = {"source_pixels", "edited_pixels", "text_ids", "text_lengths"};

std::string shape_str(const std::vector<int64_t>& shape) {
  std::ostringstream s;
  s << "(";
  for (size_t i = 0; i < shape.size(); ++i) s << (i ? ", " : "") << shape[i];
  s << (shape.size() == 1 ? ",)" : ")");
  return s.str();
}

RuntimeConfig validated(RuntimeConfig c) {
  auto fail = [](const std::string& msg) { throw std::invalid_argument("runtime config: " + msg); };
  if (c.backend != "aoti" && c.backend != "tensorrt") fail("backend must be 'aoti' or 'tensorrt', got '" + c.backend + "'");
  if (c.buckets.empty()) fail("buckets is empty");
  std::set<std::pair<int64_t, int64_t>> seen;
  for (const auto& b : c.buckets) {
    if (b.image_size <= 0 || b.text_len <= 0) fail("bucket image_size and text_len must be positive");
    if (b.package.empty()) fail("bucket (image " + std::to_string(b.image_size) + ", text " + std::to_string(b.text_len) + ") has no package");
    if (!seen.insert({b.image_size, b.text_len}).second) fail("bucket text_len " + std::to_string(b.text_len) + " listed twice");
  }
  if (c.input_names != kInputs) fail("inputs must be [source_pixels, edited_pixels, text_ids, text_lengths] in that order");
  const bool one = c.output_names == std::vector<std::string>{"rewards"};
  const bool two = c.output_names == std::vector<std::string>{"rewards", "log_sigma"};
  if (!one && !two) fail("outputs must be [rewards] or [rewards, log_sigma]");
  if (c.vocab_size <= 0) fail("vocab_size must be positive");
  if (c.max_batch < 1) fail("max_batch must be >= 1");
  if (c.max_delay_us < 0) fail("max_delay must be >= 0");
  if (c.max_queue < 1) fail("max_queue must be >= 1");
  if (c.inflight < 1) fail("inflight must be >= 1");
  return c;
}

std::unique_ptr<Backend> make_backend(const RuntimeConfig& c) {
  if (c.backend == "aoti") return make_aoti_backend(c);
#ifdef JRM_WITH_TENSORRT
  return make_tensorrt_backend(c);
#else
  throw std::runtime_error(
      "this build of jrm_engine has no TensorRT backend: CMake did not find TensorRT (NvInfer.h, libnvinfer) and "
      "the CUDA toolkit when the package was built; install them and rebuild, or use the 'aoti' backend");
#endif
}

}  // namespace

Runtime::Runtime(RuntimeConfig config)
    : config_(validated(std::move(config))),
      backend_(make_backend(config_)),
      queue_(config_.buckets, config_.max_batch, config_.max_delay_us, config_.max_queue) {
  batcher_ = std::make_unique<Batcher>(config_, *backend_, queue_, completions_, stats_);
}

Runtime::~Runtime() { close(/*drain=*/true); }

int Runtime::pick_bucket(int64_t image_size, int64_t text_len) const {
  int best = -1;
  for (int b = 0; b < static_cast<int>(config_.buckets.size()); ++b) {
    const auto& spec = config_.buckets[b];
    if (spec.image_size != image_size || spec.text_len < text_len) continue;
    if (best < 0 || spec.text_len < config_.buckets[best].text_len) best = b;
  }
  return best;
}

void Runtime::validate(const ArrayArg& source, const ArrayArg& edited, const ArrayArg& text_ids) const {
  std::set<int64_t> sizes;
  for (const auto& b : config_.buckets) sizes.insert(b.image_size);
  std::string sizes_str;
  for (auto s : sizes) sizes_str += (sizes_str.empty() ? "" : ", ") + std::to_string(s);

  auto bad = [](const std::string& msg) { throw std::invalid_argument(msg); };
  for (const auto* arg : {&source, &edited}) {
    const char* name = arg == &source ? "source_pixels" : "edited_pixels";
    if (arg->dtype != "uint8") bad(std::string(name) + " must be uint8 RGB pixels, got dtype " + arg->dtype);
    const auto& s = arg->shape;
    if (s.size() != 3 || s[0] != s[1] || s[2] != 3 || !sizes.count(s[0])) {
      bad(std::string(name) + " must have shape (S, S, 3) with S in {" + sizes_str + "} (resize first), got " +
          shape_str(s));
    }
    if (!arg->contiguous) bad(std::string(name) + " must be C-contiguous");
  }
  if (source.shape != edited.shape) {
    bad("source_pixels " + shape_str(source.shape) + " and edited_pixels " + shape_str(edited.shape) + " differ in size");
  }
  if (text_ids.dtype != "int64") bad("text_ids must be int64 token ids, got dtype " + text_ids.dtype);
  if (text_ids.shape.size() != 1) bad("text_ids must be 1-D (one request's tokens), got shape " + shape_str(text_ids.shape));
  if (!text_ids.contiguous) bad("text_ids must be C-contiguous");
  const int64_t n = text_ids.shape[0];
  if (n == 0) bad("text_ids is empty: a request needs at least one instruction token (text_lengths >= 1)");
  const auto* ids = static_cast<const int64_t*>(text_ids.data);
  for (int64_t i = 0; i < n; ++i) {
    if (ids[i] < 0 || ids[i] >= config_.vocab_size) {
      bad("text_ids[" + std::to_string(i) + "] = " + std::to_string(ids[i]) + " is outside the vocabulary [0, " +
          std::to_string(config_.vocab_size) + ")");
    }
  }
  if (pick_bucket(source.shape[0], n) < 0) {
    int64_t longest = 0;
    for (const auto& b : config_.buckets) {
      if (b.image_size == source.shape[0]) longest = std::max(longest, b.text_len);
    }
    bad("text_ids has " + std::to_string(n) + " tokens, more than the largest text bucket (" +
        std::to_string(longest) + ")");
  }
}

void Runtime::submit(int64_t id, const ArrayArg& source, const ArrayArg& edited, const ArrayArg& text_ids) {
  try {
    validate(source, edited, text_ids);
  } catch (const std::invalid_argument&) {
    stats_.on_invalid();
    throw;
  }
  Request r;
  r.id = id;
  r.bucket = pick_bucket(source.shape[0], text_ids.shape[0]);
  const size_t image_bytes = static_cast<size_t>(source.shape[0] * source.shape[1] * 3);
  const auto* src = static_cast<const uint8_t*>(source.data);
  const auto* edt = static_cast<const uint8_t*>(edited.data);
  const auto* ids = static_cast<const int64_t*>(text_ids.data);
  r.source.assign(src, src + image_bytes);
  r.edited.assign(edt, edt + image_bytes);
  r.text_ids.assign(ids, ids + text_ids.shape[0]);
  r.enqueued = Clock::now();
  try {
    queue_.push(std::move(r));
  } catch (const QueueFull&) {
    stats_.on_rejected();
    throw;
  }
  stats_.on_request();
}

std::optional<std::vector<Completion>> Runtime::wait_completions(int64_t timeout_ms) {
  return completions_.pop_all(timeout_ms);
}

void Runtime::close(bool drain) {
  std::lock_guard<std::mutex> guard(close_mutex_);
  if (closed_) return;
  closed_ = true;
  std::vector<Request> dropped = queue_.close(drain);
  if (!dropped.empty()) {
    std::vector<Completion> failed(dropped.size());
    for (size_t i = 0; i < dropped.size(); ++i) {
      failed[i].id = dropped[i].id;
      failed[i].error = "the runtime was closed without draining before this request ran";
    }
    stats_.on_failed(static_cast<int64_t>(failed.size()));
    completions_.push(std::move(failed));
  }
  batcher_->join();
  completions_.close();
}

StatsSnapshot Runtime::stats() const {
  StatsSnapshot s = stats_.snapshot();
  s.queue_size = queue_.size();
  s.max_queue_size_seen = queue_.max_size_seen();
  return s;
}

}  // namespace jrm
