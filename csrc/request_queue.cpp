#include "request_queue.h"

#include <string>

namespace jrm {

RequestQueue::RequestQueue(const std::vector<BucketSpec>& buckets, int64_t max_batch, int64_t max_delay_us,
                           int64_t max_queue)
    : buckets_(buckets.size()),
      same_image_(buckets.size()),
      max_batch_(max_batch),
      max_delay_(std::chrono::microseconds(max_delay_us)),
      max_queue_(max_queue) {
  for (size_t b = 0; b < buckets.size(); ++b) {
    text_len_.push_back(buckets[b].text_len);
    for (size_t o = 0; o < buckets.size(); ++o) {
      if (buckets[o].image_size == buckets[b].image_size) same_image_[b].push_back(static_cast<int>(o));
    }
  }
}

void RequestQueue::push(Request&& request) {
  std::unique_lock<std::mutex> lock(mutex_);
  if (closed_) throw QueueClosed("the runtime is closed and accepts no more requests");
  if (size_ + request.size() > max_queue_) {
    throw QueueFull("request queue is full: max_queue=" + std::to_string(max_queue_) + " requests, " +
                    std::to_string(size_) + " already waiting; retry later or raise max_queue");
  }
  if (request.is_group()) {
    size_ += request.size();
    max_size_seen_ = std::max(max_size_seen_, size_);
    groups_.push_back(std::move(request));
    ready_.notify_one();
    return;
  }
  auto& bucket = buckets_[request.bucket];
  bucket.push_back(std::move(request));
  max_size_seen_ = std::max(max_size_seen_, ++size_);
  // Only these two events change what a waiting worker should do: a new earliest deadline or a full batch.
  const auto n = static_cast<int64_t>(bucket.size());
  if (n == 1 || n == max_batch_) ready_.notify_one();
}

void RequestQueue::flush() {
  {
    std::unique_lock<std::mutex> lock(mutex_);
    flushed_ = Clock::now();
  }
  ready_.notify_all();
}

std::optional<TakenBatch> RequestQueue::take() {
  std::unique_lock<std::mutex> lock(mutex_);
  while (true) {
    const auto now = Clock::now();
    int pick = -1;
    CloseReason reason = CloseReason::kFull;
    Clock::time_point oldest = Clock::time_point::max();
    Clock::time_point next_deadline = Clock::time_point::max();
    for (int b = 0; b < static_cast<int>(buckets_.size()); ++b) {
      const auto& q = buckets_[b];
      if (q.empty()) continue;
      const auto first = q.front().enqueued;
      const bool full = static_cast<int64_t>(q.size()) >= max_batch_;
      const bool due = first + max_delay_ <= now;
      const bool flushed = first <= flushed_;
      // Among the buckets that may close, serve the one whose first request has waited longest.
      if ((full || due || flushed || closed_) && first < oldest) {
        pick = b;
        oldest = first;
        reason = full      ? CloseReason::kFull
                 : due     ? CloseReason::kDelay
                 : flushed ? CloseReason::kFlush
                           : CloseReason::kDrain;
      }
      next_deadline = std::min(next_deadline, first + max_delay_);
    }
    if (!groups_.empty() && (pick < 0 || groups_.front().enqueued < oldest)) {
      TakenBatch batch;
      batch.bucket = groups_.front().bucket;
      batch.reason = CloseReason::kGroup;
      size_ -= groups_.front().size();
      batch.requests.push_back(std::move(groups_.front()));
      groups_.pop_front();
      if (size_ > 0) ready_.notify_one();
      return batch;
    }
    if (pick >= 0) {
      TakenBatch batch;
      batch.bucket = pick;
      batch.reason = reason;
      // A full bucket runs alone; an early batch fills its room from every text bucket of its image size.
      const std::vector<int> own{pick};
      const std::vector<int>& sources = reason == CloseReason::kFull ? own : same_image_[pick];
      while (static_cast<int64_t>(batch.requests.size()) < max_batch_) {
        int from = -1;
        for (int b : sources) {
          if (!buckets_[b].empty() && (from < 0 || buckets_[b].front().enqueued < buckets_[from].front().enqueued)) {
            from = b;
          }
        }
        if (from < 0) break;
        if (text_len_[from] > text_len_[batch.bucket]) batch.bucket = from;
        batch.requests.push_back(std::move(buckets_[from].front()));
        buckets_[from].pop_front();
      }
      for (const auto& r : batch.requests) batch.padded_up += r.bucket != batch.bucket;
      size_ -= static_cast<int64_t>(batch.requests.size());
      // Another batch may already be ready; let an idle worker look.
      if (size_ > 0) ready_.notify_one();
      return batch;
    }
    if (closed_) return std::nullopt;  // closed and empty
    if (next_deadline == Clock::time_point::max()) {
      ready_.wait(lock);
    } else {
      ready_.wait_until(lock, next_deadline);
    }
  }
}

std::vector<Request> RequestQueue::close(bool drain) {
  std::vector<Request> dropped;
  {
    std::unique_lock<std::mutex> lock(mutex_);
    closed_ = true;
    if (!drain) {
      for (auto& r : groups_) dropped.push_back(std::move(r));
      groups_.clear();
      for (auto& q : buckets_) {
        for (auto& r : q) dropped.push_back(std::move(r));
        q.clear();
      }
      size_ = 0;
    }
  }
  ready_.notify_all();
  return dropped;
}

int64_t RequestQueue::size() const {
  std::unique_lock<std::mutex> lock(mutex_);
  return size_;
}

int64_t RequestQueue::max_size_seen() const {
  std::unique_lock<std::mutex> lock(mutex_);
  return max_size_seen_;
}

}  // namespace jrm
