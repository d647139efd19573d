// Bounded, bucketed request queue: producers never block (a full queue rejects), consumers take whole batches.
#pragma once

#include <condition_variable>
#include <deque>
#include <mutex>
#include <optional>
#include <stdexcept>
#include <vector>

#include "types.h"

namespace jrm {

// Thrown by push when max_queue requests are already waiting; bindings map it to a Python QueueFullError.
class QueueFull : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

// Thrown by push after close.
class QueueClosed : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

enum class CloseReason { kFull, kDelay, kDrain };

struct TakenBatch {
  int bucket = 0;
  CloseReason reason = CloseReason::kFull;
  std::vector<Request> requests;
};

class RequestQueue {
 public:
  RequestQueue(int num_buckets, int64_t max_batch, int64_t max_delay_us, int64_t max_queue);

  void push(Request&& request);

  // Blocks until a bucket holds max_batch requests or its first request is max_delay old, then takes up to
  // max_batch of them. After close(drain=true) remaining requests are taken without waiting; returns nullopt once
  // closed and empty.
  std::optional<TakenBatch> take();

  // Stops accepting requests. Without drain the waiting requests are returned (for the caller to fail them).
  std::vector<Request> close(bool drain);

  int64_t size() const;
  int64_t max_size_seen() const;

 private:
  std::vector<std::deque<Request>> buckets_;
  const int64_t max_batch_;
  const Clock::duration max_delay_;
  const int64_t max_queue_;
  int64_t size_ = 0;
  int64_t max_size_seen_ = 0;
  bool closed_ = false;
  mutable std::mutex mutex_;
  std::condition_variable ready_;
};

}  // namespace jrm
