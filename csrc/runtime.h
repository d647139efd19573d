// The runtime facade: validates requests at the door, owns the queue, the backend and the workers.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <vector>

#include "backend.h"
#include "batcher.h"
#include "completion_queue.h"
#include "request_queue.h"
#include "stats.h"
#include "types.h"

namespace jrm {

// A borrowed view of a caller's array, described the way numpy does, so all input checks live here in C++.
struct ArrayArg {
  const void* data = nullptr;
  std::string dtype;  // numpy name: "uint8", "int64", ...
  std::vector<int64_t> shape;
  bool contiguous = true;
};

class Runtime {
 public:
  // Validates the config and loads every engine; throws std::invalid_argument naming the bad field.
  explicit Runtime(RuntimeConfig config);
  ~Runtime();

  // Copies one request into the queue. Throws std::invalid_argument for bad input (the message names the
  // argument and the rule), QueueFull at max_queue, QueueClosed after close.
  void submit(int64_t id, const ArrayArg& source, const ArrayArg& edited, const ArrayArg& text_ids);

  // Queues G candidate edits (edited: (G, S, S, 3)) of one source and instruction as one request for the group
  // engine; candidate i is answered under ids[i]. Errors as for submit; also G outside [1, max_group], or no
  // group engine configured.
  void submit_group(const std::vector<int64_t>& ids, const ArrayArg& source, const ArrayArg& edited,
                    const ArrayArg& text_ids);

  // Every request queued so far is due now (a caller that waits for its own requests need not wait max_delay).
  void flush() { queue_.flush(); }

  std::optional<std::vector<Completion>> wait_completions(int64_t timeout_ms);

  // drain=true answers every queued request first; drain=false fails them. Idempotent.
  void close(bool drain);

  StatsSnapshot stats() const;
  const RuntimeConfig& config() const { return config_; }

 private:
  int pick_bucket(int64_t image_size, int64_t text_len) const;
  // Each throws std::invalid_argument naming the argument and the rule.
  void validate_image(const ArrayArg& image, const char* name, size_t leading_dims) const;
  void validate_text(const ArrayArg& text_ids, int64_t image_size) const;
  // Runs `check_images` and the text checks (counting a failure as invalid), then copies the arrays into the
  // request (id or candidate ids already set) and queues it.
  void admit(Request&& request, const ArrayArg& source, const ArrayArg& edited, const ArrayArg& text_ids,
             const std::function<void()>& check_images);

  RuntimeConfig config_;
  std::unique_ptr<Backend> backend_;
  Stats stats_;
  RequestQueue queue_;
  CompletionQueue completions_;
  std::unique_ptr<Batcher> batcher_;
  std::mutex close_mutex_;
  bool closed_ = false;
};

}  // namespace jrm
