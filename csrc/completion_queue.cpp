#include "completion_queue.h"

#include <chrono>

namespace jrm {

void CompletionQueue::push(std::vector<Completion>&& done) {
  {
    std::unique_lock<std::mutex> lock(mutex_);
    for (auto& c : done) items_.push_back(std::move(c));
  }
  changed_.notify_all();
}

std::optional<std::vector<Completion>> CompletionQueue::pop_all(int64_t timeout_ms) {
  std::unique_lock<std::mutex> lock(mutex_);
  changed_.wait_for(lock, std::chrono::milliseconds(timeout_ms), [&] { return closed_ || !items_.empty(); });
  if (items_.empty() && closed_) return std::nullopt;
  std::vector<Completion> out(std::make_move_iterator(items_.begin()), std::make_move_iterator(items_.end()));
  items_.clear();
  return out;
}

void CompletionQueue::close() {
  {
    std::unique_lock<std::mutex> lock(mutex_);
    closed_ = true;
  }
  changed_.notify_all();
}

}  // namespace jrm
