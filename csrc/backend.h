// The engine interface the batcher drives. A backend owns one staging slot per worker (pinned host memory on
// CUDA, so copies are asynchronous) and runs one packed batch from a slot at a time per worker.
#pragma once

#include <cstdint>
#include <memory>
#include <stdexcept>
#include <string>

#include "types.h"

namespace jrm {

// Host staging buffers, each sized for max(max_batch, max_group) requests of the largest bucket. A batch of n
// requests of a bucket (S, L) is packed densely: source/edited (n, S, S, 3), text_ids (n, L) right-padded with
// 0, text_lengths (n,); the backend writes rewards (n,) and, for two-output heads, log_sigma (n,). A group of G
// candidates uses the first row of source, text_ids and text_lengths and G rows of edited; it writes G rewards.
struct HostSlot {
  uint8_t* source = nullptr;
  uint8_t* edited = nullptr;
  int64_t* text_ids = nullptr;
  int64_t* text_lengths = nullptr;
  float* rewards = nullptr;
  float* log_sigma = nullptr;
};

class Backend {
 public:
  virtual ~Backend() = default;
  virtual HostSlot slot(int worker) = 0;
  // Called first on each worker thread, for per-thread engine state.
  virtual void start_worker(int /*worker*/) {}
  // Runs n requests of `bucket` packed in worker's slot; blocks until the outputs are in the slot. Thread-safe
  // across different workers.
  virtual void run(int worker, int bucket, int64_t n) = 0;
  // Runs one group of g candidates packed in worker's slot on the group engine (RuntimeConfig.group_package).
  virtual void run_group(int /*worker*/, int /*bucket*/, int64_t /*g*/) {
    throw std::runtime_error("this backend has no group engine");
  }
};

// make_tensorrt_backend exists only in builds where CMake found TensorRT (JRM_WITH_TENSORRT).
std::unique_ptr<Backend> make_aoti_backend(const RuntimeConfig& config);
std::unique_ptr<Backend> make_tensorrt_backend(const RuntimeConfig& config);
std::string tensorrt_version();  // of the linked libnvinfer, "major.minor.patch"

}  // namespace jrm
