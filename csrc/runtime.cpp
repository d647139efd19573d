#include "runtime.h"

#include <algorithm>
#include <functional>
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
  if (!c.group_package.empty()) {
    if (c.backend != "aoti" || c.max_group < 1) fail("a group package needs the aoti backend and max_group >= 1");
    if (c.max_group > c.max_queue) {
      fail("max_group=" + std::to_string(c.max_group) + " exceeds max_queue=" + std::to_string(c.max_queue) +
           ": a full group could never be queued");
    }
    bool known = false;
    for (const auto& b : c.buckets) known = known || b.image_size == c.group_image_size;
    if (!known) fail("group_image_size " + std::to_string(c.group_image_size) + " matches no bucket's image size");
  }
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

void Runtime::validate_image(const ArrayArg& image, const char* name, size_t leading_dims) const {
  std::set<int64_t> sizes;
  for (const auto& b : config_.buckets) sizes.insert(b.image_size);
  std::string sizes_str;
  for (auto s : sizes) sizes_str += (sizes_str.empty() ? "" : ", ") + std::to_string(s);
  const std::string layout = leading_dims ? "(G, S, S, 3)" : "(S, S, 3)";

  auto bad = [](const std::string& msg) { throw std::invalid_argument(msg); };
  if (image.dtype != "uint8") bad(std::string(name) + " must be uint8 RGB pixels, got dtype " + image.dtype);
  const auto& s = image.shape;
  if (s.size() != 3 + leading_dims) bad(std::string(name) + " must have shape " + layout + ", got " + shape_str(s));
  const size_t h = leading_dims;
  if (s[h] != s[h + 1] || s[h + 2] != 3 || !sizes.count(s[h])) {
    bad(std::string(name) + " must have shape " + layout + " with S in {" + sizes_str + "} (resize first), got " +
        shape_str(s));
  }
  if (!image.contiguous) bad(std::string(name) + " must be C-contiguous");
}

void Runtime::validate_text(const ArrayArg& text_ids, int64_t image_size) const {
  auto bad = [](const std::string& msg) { throw std::invalid_argument(msg); };
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
  if (pick_bucket(image_size, n) < 0) {
    int64_t longest = 0;
    for (const auto& b : config_.buckets) {
      if (b.image_size == image_size) longest = std::max(longest, b.text_len);
    }
    bad("text_ids has " + std::to_string(n) + " tokens, more than the largest text bucket (" +
        std::to_string(longest) + ")");
  }
}

void Runtime::submit(int64_t id, const ArrayArg& source, const ArrayArg& edited, const ArrayArg& text_ids) {
  Request r;
  r.id = id;
  admit(std::move(r), source, edited, text_ids, [&] {
    validate_image(source, "source_pixels", 0);
    validate_image(edited, "edited_pixels", 0);
    if (source.shape != edited.shape) {
      throw std::invalid_argument("source_pixels " + shape_str(source.shape) + " and edited_pixels " +
                                  shape_str(edited.shape) + " differ in size");
    }
  });
}

void Runtime::submit_group(const std::vector<int64_t>& ids, const ArrayArg& source, const ArrayArg& edited,
                           const ArrayArg& text_ids) {
  Request r;
  r.candidate_ids = ids;
  admit(std::move(r), source, edited, text_ids, [&] {
    if (config_.group_package.empty()) {
      throw std::invalid_argument("this runtime has no group engine (its manifest names no group package)");
    }
    validate_image(source, "source_pixels", 0);
    validate_image(edited, "edited_pixels", 1);
    if (source.shape[0] != config_.group_image_size) {
      throw std::invalid_argument("source_pixels " + shape_str(source.shape) + ": the group package takes " +
                                  std::to_string(config_.group_image_size) + " px images only");
    }
    const int64_t g = edited.shape[0];
    if (g < 1 || g > config_.max_group) {
      throw std::invalid_argument("edited_pixels holds " + std::to_string(g) + " candidates, outside [1, max_group=" +
                                  std::to_string(config_.max_group) + "]");
    }
    if (static_cast<int64_t>(ids.size()) != g) {
      throw std::invalid_argument(std::to_string(ids.size()) + " ids for " + std::to_string(g) + " candidates");
    }
    if (edited.shape[1] != source.shape[0]) {
      throw std::invalid_argument("source_pixels " + shape_str(source.shape) + " and edited_pixels " +
                                  shape_str(edited.shape) + " differ in image size");
    }
  });
}

void Runtime::admit(Request&& r, const ArrayArg& source, const ArrayArg& edited, const ArrayArg& text_ids,
                    const std::function<void()>& check_images) {
  try {
    check_images();
    validate_text(text_ids, source.shape[0]);
  } catch (const std::invalid_argument&) {
    stats_.on_invalid();
    throw;
  }
  auto bytes = [](const ArrayArg& a) {
    int64_t n = 1;
    for (int64_t d : a.shape) n *= d;
    return static_cast<size_t>(n);
  };
  const auto* src = static_cast<const uint8_t*>(source.data);
  const auto* edt = static_cast<const uint8_t*>(edited.data);
  const auto* ids = static_cast<const int64_t*>(text_ids.data);
  r.bucket = pick_bucket(source.shape[0], text_ids.shape[0]);
  r.source.assign(src, src + bytes(source));
  r.edited.assign(edt, edt + bytes(edited));
  r.text_ids.assign(ids, ids + text_ids.shape[0]);
  const int64_t n = r.size();
  r.enqueued = Clock::now();
  try {
    queue_.push(std::move(r));
  } catch (const QueueFull&) {
    stats_.on_rejected();
    throw;
  }
  stats_.on_request(n);
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
    std::vector<Completion> failed;
    for (const Request& r : dropped) {  // one completion per request, or per candidate of a group
      for (int64_t id : r.is_group() ? r.candidate_ids : std::vector<int64_t>{r.id}) {
        Completion c;
        c.id = id;
        c.error = "the runtime was closed without draining before this request ran";
        failed.push_back(std::move(c));
      }
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
