// Plain structs shared by every part of the runtime. No Python and no torch types: the batcher and the backends
// work on these and on raw buffers only.
#pragma once

#include <chrono>
#include <cstdint>
#include <string>
#include <vector>

namespace jrm {

using Clock = std::chrono::steady_clock;

// One shape bucket: every request in a batch shares its image size and is right-padded to its text length.
struct BucketSpec {
  int64_t image_size = 0;
  int64_t text_len = 0;
  std::string package;  // engine file (AOTInductor .pt2 or TensorRT .plan) that runs this bucket
};

struct RuntimeConfig {
  std::string backend = "aoti";  // "aoti" | "tensorrt"
  std::string device = "cpu";    // "cpu" | "cuda" | "cuda:N"
  std::vector<BucketSpec> buckets;
  std::vector<std::string> input_names;   // contract order: source, edited, ids, lengths
  std::vector<std::string> output_names;  // "rewards" [+ "log_sigma"]
  int64_t vocab_size = 0;
  int64_t max_batch = 8;       // a batch closes when it holds this many requests...
  int64_t max_delay_us = 2000;  // ...or this long after its first request arrived
  int64_t max_queue = 1024;    // requests waiting for a batch; more are rejected
  int64_t inflight = 1;        // batches running at once (one worker thread, staging slot and stream each)
  int64_t intra_op_threads = 0;  // CPU: OpenMP threads per worker's engine call; 0 = torch's setting
  // Optional group engine: (source [1,S,S,3], text_ids [1,L], text_lengths [1], edited [G,S,S,3]) -> [G], the
  // source and instruction encoded once for G <= max_group candidates. Empty: groups are not accepted.
  std::string group_package;
  int64_t max_group = 0;
  int64_t group_image_size = 0;  // the one image size the group package was compiled for
};

struct Request {
  int64_t id = 0;
  int bucket = 0;
  std::vector<uint8_t> source;   // (S, S, 3)
  std::vector<uint8_t> edited;   // (S, S, 3), or (G, S, S, 3) for a group
  std::vector<int64_t> text_ids; // (n,), unpadded
  std::vector<int64_t> candidate_ids;  // a group: one id per candidate (`id` unused); empty for one request
  Clock::time_point enqueued;

  bool is_group() const { return !candidate_ids.empty(); }
  int64_t size() const { return is_group() ? static_cast<int64_t>(candidate_ids.size()) : 1; }
};

// Why a batch closed: it held max_batch requests, its first request waited max_delay, a caller flushed the
// queue (it has submitted everything it will wait for), or the runtime is closing with drain. A group is a
// batch of its own as soon as a worker is free.
enum class CloseReason { kFull, kDelay, kFlush, kDrain, kGroup };

struct Completion {
  int64_t id = 0;
  float reward = 0.f;
  float log_sigma = 0.f;
  std::string error;  // empty on success
};

}  // namespace jrm
