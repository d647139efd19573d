#include "batcher.h"

#include <algorithm>
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
  const bool group = batch.reason == CloseReason::kGroup;
  // One result per request, or per candidate of a group.
  const int64_t n = group ? batch.requests.front().size() : static_cast<int64_t>(batch.requests.size());

  std::vector<double> waits_us;
  for (const Request& r : batch.requests) {
    waits_us.push_back(std::chrono::duration<double, std::micro>(taken - r.enqueued).count());
  }
  std::vector<Completion> done(n);
  std::string error;
  try {
    pack_and_run(worker, batch, n);
    const HostSlot slot = backend_.slot(worker);
    const bool two_outputs = config_.output_names.size() > 1;
    for (int64_t i = 0; i < n; ++i) {
      done[i].reward = slot.rewards[i];
      done[i].log_sigma = two_outputs ? slot.log_sigma[i] : 0.f;
    }
  } catch (const std::exception& e) {
    error = std::string(group ? "group of " : "batch of ") + std::to_string(n) + (group ? " candidates" : " requests") +
            " (image " + std::to_string(bucket.image_size) + ", text bucket " + std::to_string(bucket.text_len) +
            ") failed: " + e.what();
  }
  const double run_us = std::chrono::duration<double, std::micro>(Clock::now() - taken).count();
  for (int64_t i = 0; i < n; ++i) {
    done[i].id = group ? batch.requests.front().candidate_ids[i] : batch.requests[i].id;
    done[i].error = error;
  }
  stats_.on_batch(n, batch.reason, batch.padded_up, waits_us, run_us, error.empty());
  done_.push(std::move(done));
}

void Batcher::pack_and_run(int worker, const TakenBatch& batch, int64_t n) {
  const auto& bucket = config_.buckets[batch.bucket];
  const size_t image_bytes = static_cast<size_t>(bucket.image_size * bucket.image_size * 3);
  const int64_t text_len = bucket.text_len;
  const HostSlot slot = backend_.slot(worker);
  auto pack_text = [&](int64_t row, const std::vector<int64_t>& ids) {
    int64_t* dst = slot.text_ids + row * text_len;
    const auto len = static_cast<int64_t>(ids.size());
    std::memcpy(dst, ids.data(), static_cast<size_t>(len) * sizeof(int64_t));
    std::fill(dst + len, dst + text_len, int64_t{0});  // the contract's right padding
    slot.text_lengths[row] = len;
  };
  if (batch.reason == CloseReason::kGroup) {
    const Request& r = batch.requests.front();
    std::memcpy(slot.source, r.source.data(), image_bytes);
    std::memcpy(slot.edited, r.edited.data(), static_cast<size_t>(n) * image_bytes);
    pack_text(0, r.text_ids);
    backend_.run_group(worker, batch.bucket, n);
    return;
  }
  for (int64_t i = 0; i < n; ++i) {
    const Request& r = batch.requests[i];
    std::memcpy(slot.source + i * image_bytes, r.source.data(), image_bytes);
    std::memcpy(slot.edited + i * image_bytes, r.edited.data(), image_bytes);
    pack_text(i, r.text_ids);
  }
  backend_.run(worker, batch.bucket, n);
}

}  // namespace jrm
