#include "batcher.h"

#include <cstring>
#include <exception>
#include <string>

namespace jrm {

Batcher::Batcher(const RuntimeConfig& config, Backend& backend, RequestQueue& queue, CompletionQueue& done,
                 Stats& stats)
    : config_(config), backend_(backend), queue_(queue), done_(done), stats_(stats) {
  for (int w = 0; w < config.inflight; ++w) workers_.emplace_back([this, w] { work(w); });
}

Batcher::~Batcher() { join(); }

void Batcher::join() {
  for (auto& t : workers_) {
    if (t.joinable()) t.join();
  }
}

void Batcher::work(int worker) {
  backend_.start_worker(worker);
  while (auto batch = queue_.take()) run_batch(worker, *batch);
}

void Batcher::run_batch(int worker, TakenBatch& batch) {
  const auto taken = Clock::now();
  const auto& bucket = config_.buckets[batch.bucket];
  const int64_t n = static_cast<int64_t>(batch.requests.size());
  const size_t image_bytes = static_cast<size_t>(bucket.image_size * bucket.image_size * 3);
  const int64_t text_len = bucket.text_len;

  std::vector<double> waits_us;
  waits_us.reserve(n);
  std::vector<Completion> done(n);
  std::string error;
  try {
    HostSlot slot = backend_.slot(worker);
    for (int64_t i = 0; i < n; ++i) {
      const Request& r = batch.requests[i];
      waits_us.push_back(std::chrono::duration<double, std::micro>(taken - r.enqueued).count());
      std::memcpy(slot.source + i * image_bytes, r.source.data(), image_bytes);
      std::memcpy(slot.edited + i * image_bytes, r.edited.data(), image_bytes);
      int64_t* ids = slot.text_ids + i * text_len;
      const auto len = static_cast<int64_t>(r.text_ids.size());
      std::memcpy(ids, r.text_ids.data(), len * sizeof(int64_t));
      std::fill(ids + len, ids + text_len, int64_t{0});  // the contract's right padding
      slot.text_lengths[i] = len;
    }
    backend_.run(worker, batch.bucket, n);
    const bool two_outputs = config_.output_names.size() > 1;
    for (int64_t i = 0; i < n; ++i) {
      done[i].reward = slot.rewards[i];
      done[i].log_sigma = two_outputs ? slot.log_sigma[i] : 0.f;
    }
  } catch (const std::exception& e) {
    error = "batch of " + std::to_string(n) + " requests (image " + std::to_string(bucket.image_size) +
            ", text bucket " + std::to_string(text_len) + ") failed: " + e.what();
  }
  const double run_us = std::chrono::duration<double, std::micro>(Clock::now() - taken).count();
  for (int64_t i = 0; i < n; ++i) {
    done[i].id = batch.requests[i].id;
    done[i].error = error;
  }
  stats_.on_batch(n, batch.reason, batch.padded_up, waits_us, run_us, error.empty());
  done_.push(std::move(done));
}

}  // namespace jrm
