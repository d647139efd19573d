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

struct TakenBatch {
  int bucket = 0;  // the batch runs padded to this bucket's text length (a group: its one request's bucket)
  CloseReason reason = CloseReason::kFull;
  std::vector<Request> requests;
  int64_t padded_up = 0;  // requests from a shorter text bucket riding in this batch
};

class RequestQueue {
 public:
  // buckets: the (image size, text length) of each bucket index that requests carry.
  RequestQueue(const std::vector<BucketSpec>& buckets, int64_t max_batch, int64_t max_delay_us, int64_t max_queue);

  void push(Request&& request);

  // Blocks until a bucket holds max_batch requests, or its first request is max_delay old or was queued before a
  // flush; then takes a batch. A full bucket gives max_batch of its own requests. A batch that closes early
  // (delay, flush, drain) has room, so it takes the oldest waiting requests of the same image size from every
  // text bucket, up to max_batch, and runs padded to the longest of them: one engine call instead of one per
  // bucket, for a little padding (text is a small part of the sequence next to two images). After
  // close(drain=true) remaining requests are taken without waiting; returns nullopt once closed and empty.
  // A group request is a batch of its own, due at once; it goes first when it is older than every closable
  // bucket's first request.
  std::optional<TakenBatch> take();

  // Every request queued so far is due now: its caller has submitted all it will wait for.
  void flush();

  // Stops accepting requests. Without drain the waiting requests are returned (for the caller to fail them).
  std::vector<Request> close(bool drain);

  int64_t size() const;
  int64_t max_size_seen() const;

 private:
  std::vector<std::deque<Request>> buckets_;
  std::deque<Request> groups_;
  std::vector<std::vector<int>> same_image_;  // bucket -> every bucket with its image size (itself included)
  std::vector<int64_t> text_len_;
  Clock::time_point flushed_ = Clock::time_point::min();  // requests queued up to here are due
  const int64_t max_batch_;
  const Clock::duration max_delay_;
  const int64_t max_queue_;
  int64_t size_ = 0;  // candidates waiting (a group counts each of its candidates)
  int64_t max_size_seen_ = 0;
  bool closed_ = false;
  mutable std::mutex mutex_;
  std::condition_variable ready_;
};

}  // namespace jrm
