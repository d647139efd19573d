// TensorRT backend: runs the .plan engines from `jrm-export --trt` (TensorRT 10.x / 11.x, named-tensor API).
// Compiled only when CMake finds TensorRT (NvInfer.h, libnvinfer) and the CUDA toolkit; it is not built or
// tested on the project's CI machines, which have neither. The plan's sidecar (TensorRT version, GPU, SHA-256)
// is checked in jrm_engine/runtime.py before this code deserialises anything.
//
// Per worker: one CUDA stream, one execution context per engine (a context serves one stream at a time), pinned
// host staging and device buffers sized for max_batch of the largest bucket, and CUDA graphs captured lazily per
// (bucket, padded batch size). Batches are padded to a power of two so a handful of graphs covers every size.
#include <NvInfer.h>
#include <cuda_runtime_api.h>

#include <fstream>
#include <iostream>
#include <iterator>
#include <map>
#include <stdexcept>
#include <string>
#include <utility>

#include "backend.h"

namespace jrm {
namespace {

void check(cudaError_t status, const char* what) {
  if (status != cudaSuccess) throw std::runtime_error(std::string(what) + ": " + cudaGetErrorString(status));
}

class Logger final : public nvinfer1::ILogger {
 public:
  void log(Severity severity, nvinfer1::AsciiChar const* msg) noexcept override {
    if (severity <= Severity::kWARNING) std::cerr << "[jrm tensorrt] " << msg << "\n";
  }
};

struct Engine {
  std::unique_ptr<nvinfer1::ICudaEngine> engine;
};

template <typename T>
T* cuda_malloc(size_t count) {
  void* p = nullptr;
  check(cudaMalloc(&p, count * sizeof(T)), "cudaMalloc");
  return static_cast<T*>(p);
}

template <typename T>
T* host_malloc(size_t count) {
  void* p = nullptr;
  check(cudaMallocHost(&p, count * sizeof(T)), "cudaMallocHost");
  return static_cast<T*>(p);
}

struct Worker {
  cudaStream_t stream = nullptr;
  std::vector<std::unique_ptr<nvinfer1::IExecutionContext>> contexts;  // one per plan
  HostSlot host;
  uint8_t *d_source = nullptr, *d_edited = nullptr;
  int64_t *d_text_ids = nullptr, *d_text_lengths = nullptr;
  float *d_rewards = nullptr, *d_log_sigma = nullptr;
  std::map<std::pair<int, int64_t>, cudaGraphExec_t> graphs;  // (bucket, padded batch) -> graph; null = not capturable
};

int64_t padded_batch(int64_t n, int64_t max_batch) {
  int64_t p = 1;
  while (p < n) p *= 2;
  return std::min(p, max_batch);
}

class TensorRTBackend final : public Backend {
 public:
  explicit TensorRTBackend(const RuntimeConfig& config) : config_(config) {
    device_ = 0;
    const auto colon = config.device.find(':');
    if (config.device.rfind("cuda", 0) != 0) throw std::invalid_argument("tensorrt backend needs a cuda device, got " + config.device);
    if (colon != std::string::npos) device_ = std::stoi(config.device.substr(colon + 1));
    check(cudaSetDevice(device_), "cudaSetDevice");
    runtime_.reset(nvinfer1::createInferRuntime(logger_));
    if (!runtime_) throw std::runtime_error("createInferRuntime failed");

    std::map<std::string, int> by_path;
    for (const auto& b : config.buckets) {
      auto it = by_path.find(b.package);
      if (it == by_path.end()) {
        it = by_path.emplace(b.package, static_cast<int>(plans_.size())).first;
        plan_paths_.push_back(b.package);
        plans_.push_back(read_file(b.package));
      }
      bucket_plan_.push_back(it->second);
    }

    int64_t image_bytes = 0, ids = 0;
    for (const auto& b : config.buckets) {
      image_bytes = std::max(image_bytes, config.max_batch * b.image_size * b.image_size * 3);
      ids = std::max(ids, config.max_batch * b.text_len);
    }
    for (int w = 0; w < config.inflight; ++w) {
      Worker k;
      check(cudaStreamCreateWithFlags(&k.stream, cudaStreamNonBlocking), "cudaStreamCreate");
      for (size_t p = 0; p < plans_.size(); ++p) k.contexts.push_back(make_context(p, w, k.stream));
      k.host = {host_malloc<uint8_t>(image_bytes), host_malloc<uint8_t>(image_bytes), host_malloc<int64_t>(ids),
                host_malloc<int64_t>(ids),         host_malloc<float>(config.max_batch), host_malloc<float>(config.max_batch)};
      k.d_source = cuda_malloc<uint8_t>(image_bytes);
      k.d_edited = cuda_malloc<uint8_t>(image_bytes);
      k.d_text_ids = cuda_malloc<int64_t>(ids);
      k.d_text_lengths = cuda_malloc<int64_t>(ids);
      k.d_rewards = cuda_malloc<float>(config.max_batch);
      k.d_log_sigma = cuda_malloc<float>(config.max_batch);
      workers_.push_back(std::move(k));
    }
  }

  ~TensorRTBackend() override {
    cudaSetDevice(device_);
    for (auto& k : workers_) {
      for (auto& [key, exec] : k.graphs) {
        if (exec) cudaGraphExecDestroy(exec);
      }
      k.contexts.clear();
      for (void* p : {static_cast<void*>(k.host.source), static_cast<void*>(k.host.edited),
                      static_cast<void*>(k.host.text_ids), static_cast<void*>(k.host.text_lengths),
                      static_cast<void*>(k.host.rewards), static_cast<void*>(k.host.log_sigma)}) {
        cudaFreeHost(p);
      }
      for (void* p : {static_cast<void*>(k.d_source), static_cast<void*>(k.d_edited),
                      static_cast<void*>(k.d_text_ids), static_cast<void*>(k.d_text_lengths),
                      static_cast<void*>(k.d_rewards), static_cast<void*>(k.d_log_sigma)}) {
        cudaFree(p);
      }
      cudaStreamDestroy(k.stream);
    }
  }

  HostSlot slot(int w) override { return workers_[w].host; }

  void run(int w, int bucket, int64_t n) override {
    check(cudaSetDevice(device_), "cudaSetDevice");
    Worker& k = workers_[w];
    const auto& spec = config_.buckets[bucket];
    const int64_t s = spec.image_size, len = spec.text_len;
    const int64_t padded = padded_batch(n, config_.max_batch);
    // Padding rows: one token (id 0) each, so every row is a valid input; their outputs are dropped.
    std::fill(k.host.text_ids + n * len, k.host.text_ids + padded * len, int64_t{0});
    std::fill(k.host.text_lengths + n, k.host.text_lengths + padded, int64_t{1});

    const size_t image_bytes = static_cast<size_t>(padded * s * s * 3);
    check(cudaMemcpyAsync(k.d_source, k.host.source, image_bytes, cudaMemcpyHostToDevice, k.stream), "copy source");
    check(cudaMemcpyAsync(k.d_edited, k.host.edited, image_bytes, cudaMemcpyHostToDevice, k.stream), "copy edited");
    check(cudaMemcpyAsync(k.d_text_ids, k.host.text_ids, padded * len * sizeof(int64_t), cudaMemcpyHostToDevice, k.stream), "copy text_ids");
    check(cudaMemcpyAsync(k.d_text_lengths, k.host.text_lengths, padded * sizeof(int64_t), cudaMemcpyHostToDevice, k.stream), "copy text_lengths");

    nvinfer1::IExecutionContext& ctx = *k.contexts[bucket_plan_[bucket]];
    bind(ctx, k, padded, s, len);
    const auto key = std::make_pair(bucket, padded);
    auto it = k.graphs.find(key);
    if (it == k.graphs.end()) {
      // First use of this shape: a plain enqueue flushes TensorRT's deferred shape work, then try to capture.
      if (!ctx.enqueueV3(k.stream)) throw std::runtime_error("enqueueV3 failed");
      it = k.graphs.emplace(key, capture(ctx, k.stream)).first;
    } else if (it->second) {
      check(cudaGraphLaunch(it->second, k.stream), "cudaGraphLaunch");
    } else if (!ctx.enqueueV3(k.stream)) {
      throw std::runtime_error("enqueueV3 failed");
    }
    check(cudaMemcpyAsync(k.host.rewards, k.d_rewards, n * sizeof(float), cudaMemcpyDeviceToHost, k.stream), "copy rewards");
    if (config_.output_names.size() > 1) {
      check(cudaMemcpyAsync(k.host.log_sigma, k.d_log_sigma, n * sizeof(float), cudaMemcpyDeviceToHost, k.stream), "copy log_sigma");
    }
    check(cudaStreamSynchronize(k.stream), "cudaStreamSynchronize");
  }

 private:
  static std::string read_file(const std::string& path) {
    std::ifstream f(path, std::ios::binary);
    if (!f) throw std::invalid_argument("cannot open TensorRT plan " + path);
    return std::string(std::istreambuf_iterator<char>(f), std::istreambuf_iterator<char>());
  }

  // A context with dynamic shapes needs an optimization profile of its own while it runs: worker w takes
  // profile w when the plan has enough of them, otherwise it gets its own copy of the engine.
  std::unique_ptr<nvinfer1::IExecutionContext> make_context(size_t plan, int worker, cudaStream_t stream) {
    if (engines_.size() <= plan) engines_.resize(plan + 1);
    auto& copies = engines_[plan];
    const std::string& blob = plans_[plan];
    auto deserialize = [&] {
      std::unique_ptr<nvinfer1::ICudaEngine> e(runtime_->deserializeCudaEngine(blob.data(), blob.size()));
      if (!e) throw std::runtime_error("deserializeCudaEngine failed for " + plan_paths_[plan]);
      validate_io(*e);
      return e;
    };
    if (copies.empty()) copies.push_back(deserialize());
    const int profiles = copies.front()->getNbOptimizationProfiles();
    nvinfer1::ICudaEngine* engine = nullptr;
    int profile = 0;
    if (worker < profiles) {
      engine = copies.front().get();
      profile = worker;
    } else {
      while (static_cast<int>(copies.size()) <= worker) copies.push_back(deserialize());
      engine = copies[worker].get();
    }
    std::unique_ptr<nvinfer1::IExecutionContext> ctx(engine->createExecutionContext());
    if (!ctx) throw std::runtime_error("createExecutionContext failed");
    if (profile != 0 && !ctx->setOptimizationProfileAsync(profile, stream)) {
      throw std::runtime_error("setOptimizationProfileAsync(" + std::to_string(profile) + ") failed");
    }
    return ctx;
  }

  void validate_io(const nvinfer1::ICudaEngine& e) const {
    using nvinfer1::DataType;
    const DataType want[] = {DataType::kUINT8, DataType::kUINT8, DataType::kINT64, DataType::kINT64};
    for (size_t i = 0; i < config_.input_names.size(); ++i) {
      const char* name = config_.input_names[i].c_str();
      if (e.getTensorIOMode(name) != nvinfer1::TensorIOMode::kINPUT) {
        throw std::invalid_argument(std::string("TensorRT plan has no input tensor '") + name + "'");
      }
      if (e.getTensorDataType(name) != want[i]) {
        throw std::invalid_argument(std::string("TensorRT plan input '") + name + "' has another dtype than the contract");
      }
    }
    for (const auto& out : config_.output_names) {
      if (e.getTensorIOMode(out.c_str()) != nvinfer1::TensorIOMode::kOUTPUT ||
          e.getTensorDataType(out.c_str()) != DataType::kFLOAT) {
        throw std::invalid_argument("TensorRT plan has no float32 output tensor '" + out + "'");
      }
    }
  }

  void bind(nvinfer1::IExecutionContext& ctx, Worker& k, int64_t b, int64_t s, int64_t len) const {
    const auto& in = config_.input_names;
    auto dims = [](std::initializer_list<int64_t> d) {
      nvinfer1::Dims out{};
      out.nbDims = static_cast<int32_t>(d.size());
      int i = 0;
      for (auto v : d) out.d[i++] = v;
      return out;
    };
    bool ok = ctx.setInputShape(in[0].c_str(), dims({b, s, s, 3})) && ctx.setInputShape(in[1].c_str(), dims({b, s, s, 3})) &&
              ctx.setInputShape(in[2].c_str(), dims({b, len})) && ctx.setInputShape(in[3].c_str(), dims({b}));
    if (!ok) throw std::runtime_error("batch " + std::to_string(b) + " x text " + std::to_string(len) + " is outside the plan's optimization profile");
    ok = ctx.setTensorAddress(in[0].c_str(), k.d_source) && ctx.setTensorAddress(in[1].c_str(), k.d_edited) &&
         ctx.setTensorAddress(in[2].c_str(), k.d_text_ids) && ctx.setTensorAddress(in[3].c_str(), k.d_text_lengths) &&
         ctx.setTensorAddress(config_.output_names[0].c_str(), k.d_rewards);
    if (ok && config_.output_names.size() > 1) ok = ctx.setTensorAddress(config_.output_names[1].c_str(), k.d_log_sigma);
    if (!ok) throw std::runtime_error("setTensorAddress failed");
  }

  // Returns an instantiated graph, or null when this engine cannot be captured (then enqueueV3 is used).
  static cudaGraphExec_t capture(nvinfer1::IExecutionContext& ctx, cudaStream_t stream) {
    cudaGraph_t graph = nullptr;
    cudaGraphExec_t exec = nullptr;
    if (cudaStreamBeginCapture(stream, cudaStreamCaptureModeThreadLocal) != cudaSuccess) return nullptr;
    const bool enqueued = ctx.enqueueV3(stream);
    const bool captured = cudaStreamEndCapture(stream, &graph) == cudaSuccess && enqueued;
    if (captured && cudaGraphInstantiate(&exec, graph, 0) != cudaSuccess) exec = nullptr;
    if (graph) cudaGraphDestroy(graph);
    cudaGetLastError();  // clear the error a failed capture leaves, so the next CUDA call is not blamed for it
    return exec;
  }

  const RuntimeConfig config_;
  int device_ = 0;
  Logger logger_;
  std::unique_ptr<nvinfer1::IRuntime> runtime_;
  std::vector<std::string> plan_paths_;
  std::vector<std::string> plans_;  // serialized engines, kept for per-worker copies
  std::vector<int> bucket_plan_;
  std::vector<std::vector<std::unique_ptr<nvinfer1::ICudaEngine>>> engines_;  // plan -> engine copies
  std::vector<Worker> workers_;
};

}  // namespace

std::string tensorrt_version() {
  const int32_t v = getInferLibVersion();  // major * 10000 + minor * 100 + patch
  return std::to_string(v / 10000) + "." + std::to_string(v / 100 % 100) + "." + std::to_string(v % 100);
}

std::unique_ptr<Backend> make_tensorrt_backend(const RuntimeConfig& config) {
  return std::make_unique<TensorRTBackend>(config);
}

}  // namespace jrm
