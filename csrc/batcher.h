// Worker threads that turn queued requests into engine batches. Each worker takes a closed batch from the
// queue, packs it into its own staging slot (padding text to the bucket), runs it, and posts one completion per
// request. With `inflight` workers that many batches run at once; while all are busy, new requests keep
// filling the next batch instead of waiting in a second queue.
#pragma once

#include <thread>
#include <vector>

#include "backend.h"
#include "completion_queue.h"
#include "request_queue.h"
#include "stats.h"

namespace jrm {

class Batcher {
 public:
  Batcher(const RuntimeConfig& config, Backend& backend, RequestQueue& queue, CompletionQueue& done, Stats& stats);
  ~Batcher();
  // Returns once the queue is closed and every taken batch is answered.
  void join();

 private:
  void work(int worker);
  void run_batch(int worker, TakenBatch& batch);
  // Packs the batch into the worker's slot and runs it; the per-candidate results are in the slot after.
  void pack_and_run(int worker, const TakenBatch& batch, int64_t n);

  const RuntimeConfig& config_;
  Backend& backend_;
  RequestQueue& queue_;
  CompletionQueue& done_;
  Stats& stats_;
  std::vector<std::thread> workers_;
};

}  // namespace jrm
