// Runtime counters. Latency percentiles come from a window of the most recent samples, so a long-running
// runtime keeps constant memory and reports current behaviour.
#pragma once

#include <cstdint>
#include <mutex>
#include <vector>

#include "types.h"

namespace jrm {

struct Percentiles {
  double p50 = 0, p90 = 0, p99 = 0, max = 0;
};

struct StatsSnapshot {
  int64_t requests = 0;   // accepted by submit (a group counts each candidate)
  int64_t completed = 0;  // answered with a reward
  int64_t failed = 0;     // answered with an error (backend failure, or not run because of close)
  int64_t rejected = 0;   // refused by submit: queue full
  int64_t invalid = 0;    // refused by submit: bad input
  int64_t batches = 0;
  int64_t closed_full = 0, closed_delay = 0, closed_flush = 0, closed_drain = 0;  // why each batch closed
  int64_t groups = 0;  // group requests run (each a batch of its candidates on the group engine)
  int64_t padded_up = 0;  // requests run in a longer text bucket than their own, riding in an early batch
  double mean_batch_size = 0;
  int64_t max_batch_size_seen = 0;
  int64_t queue_size = 0, max_queue_size_seen = 0;
  Percentiles queue_wait_us;  // submit -> taken into a batch
  Percentiles run_us;         // batch packed, run and unpacked
};

// A fixed-size ring of samples.
class SampleWindow {
 public:
  explicit SampleWindow(size_t capacity) : samples_(capacity) {}
  void add(double v);
  Percentiles percentiles() const;

 private:
  std::vector<double> samples_;
  size_t next_ = 0;
  size_t count_ = 0;
};

class Stats {
 public:
  void on_request(int64_t n = 1) { std::lock_guard<std::mutex> g(mutex_); s_.requests += n; }
  void on_rejected() { std::lock_guard<std::mutex> g(mutex_); ++s_.rejected; }
  void on_invalid() { std::lock_guard<std::mutex> g(mutex_); ++s_.invalid; }
  void on_failed(int64_t n) { std::lock_guard<std::mutex> g(mutex_); s_.failed += n; }
  void on_batch(int64_t size, CloseReason reason, int64_t padded_up, const std::vector<double>& waits_us,
                double run_us, bool ok);
  StatsSnapshot snapshot() const;

 private:
  static constexpr size_t kWindow = 8192;
  StatsSnapshot s_;
  int64_t batched_requests_ = 0;
  SampleWindow queue_wait_{kWindow};
  SampleWindow run_{kWindow};
  mutable std::mutex mutex_;
};

}  // namespace jrm
