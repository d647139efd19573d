#include "stats.h"

#include <algorithm>

namespace jrm {

void SampleWindow::add(double v) {
  samples_[next_] = v;
  next_ = (next_ + 1) % samples_.size();
  count_ = std::min(count_ + 1, samples_.size());
}

Percentiles SampleWindow::percentiles() const {
  Percentiles p;
  if (count_ == 0) return p;
  std::vector<double> v(samples_.begin(), samples_.begin() + count_);
  std::sort(v.begin(), v.end());
  auto at = [&](double q) { return v[std::min(v.size() - 1, static_cast<size_t>(q * (v.size() - 1) + 0.5))]; };
  p.p50 = at(0.50);
  p.p90 = at(0.90);
  p.p99 = at(0.99);
  p.max = v.back();
  return p;
}

void Stats::on_batch(int64_t size, CloseReason reason, int64_t padded_up, const std::vector<double>& waits_us,
                     double run_us, bool ok) {
  std::lock_guard<std::mutex> g(mutex_);
  ++s_.batches;
  batched_requests_ += size;
  s_.max_batch_size_seen = std::max(s_.max_batch_size_seen, size);
  switch (reason) {
    case CloseReason::kFull: ++s_.closed_full; break;
    case CloseReason::kDelay: ++s_.closed_delay; break;
    case CloseReason::kFlush: ++s_.closed_flush; break;
    case CloseReason::kDrain: ++s_.closed_drain; break;
    case CloseReason::kGroup: ++s_.groups; break;
  }
  s_.padded_up += padded_up;
  (ok ? s_.completed : s_.failed) += size;
  for (double w : waits_us) queue_wait_.add(w);
  run_.add(run_us);
}

StatsSnapshot Stats::snapshot() const {
  std::lock_guard<std::mutex> g(mutex_);
  StatsSnapshot out = s_;
  out.mean_batch_size = s_.batches ? static_cast<double>(batched_requests_) / s_.batches : 0.0;
  out.queue_wait_us = queue_wait_.percentiles();
  out.run_us = run_.percentiles();
  return out;
}

}  // namespace jrm
