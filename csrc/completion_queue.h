// Finished requests, handed from the worker threads to the one Python thread that resolves the futures.
#pragma once

#include <condition_variable>
#include <deque>
#include <mutex>
#include <optional>
#include <vector>

#include "types.h"

namespace jrm {

class CompletionQueue {
 public:
  void push(std::vector<Completion>&& done);

  // Waits up to timeout_ms for completions and returns all that are there (possibly none). Returns nullopt once
  // closed and empty: the reader's signal to stop.
  std::optional<std::vector<Completion>> pop_all(int64_t timeout_ms);

  void close();

 private:
  std::deque<Completion> items_;
  bool closed_ = false;
  std::mutex mutex_;
  std::condition_variable changed_;
};

}  // namespace jrm
