// TensorRT backend: runs the .plan engines from `jrm-export --trt` (TensorRT 10.x / 11.x, named-tensor API).
// Compiled only when CMake finds TensorRT (NvInfer.h, libnvinfer) and the CUDA toolkit; it is not built or run
// on the project's CI machines, which have neither (it was compile-checked against the TensorRT 10.7 headers).
// The plan's sidecar (TensorRT version, GPU, SHA-256) is checked in jrm_engine/runtime.py before this code
// deserialises anything.
//
// Per worker: one CUDA stream, pinned host staging and device buffers sized for max_batch of the largest bucket,
// and one execution context per shape key (bucket, padded batch), created on first use with its shapes and
// addresses bound once. Batches are padded to a power of two, so a handful of keys covers every size. Each key's
// context replays a CUDA graph captured after its first enqueue: a graph records the kernels of one shape, and a
// context's shape state changes only at enqueueV3, so replaying a graph on a context since re-shaped for another
// key could run with the wrong shape. The contexts of a worker share one scratch allocation
// (kUSER_MANAGED): they run one at a time on the worker's stream.
#include <NvInfer.h>
#include <cuda_runtime_api.h>

#include <algorithm>
#include <fstream>
#include <iostream>
#include <iterator>
#include <map>
#include <memory>
#include <mutex>
#include <stdexcept>
#include <string>
#include <utility>
#include <vector>

#include "backend.h"

namespace jrm {
namespace {

void check(cudaError_t status, const char* what) {
  if (status != cudaSuccess) throw std::runtime_error(std::string(what) + ": " + cudaGetErrorString(status));
}

// TensorRT may log from any worker thread; the logger must be thread-safe.
class Logger final : public nvinfer1::ILogger {
 public:
  void log(Severity severity, nvinfer1::AsciiChar const* msg) noexcept override {
    if (severity > Severity::kWARNING) return;
    std::lock_guard<std::mutex> guard(mutex_);
    std::cerr << "[jrm tensorrt] " << msg << "\n";
  }

 private:
  std::mutex mutex_;
};

template <typename T>
T* cuda_malloc(int64_t count) {
  void* p = nullptr;
  check(cudaMalloc(&p, static_cast<size_t>(count) * sizeof(T)), "cudaMalloc");
  return static_cast<T*>(p);
}

template <typename T>
T* host_malloc(int64_t count) {
  void* p = nullptr;
  check(cudaMallocHost(&p, static_cast<size_t>(count) * sizeof(T)), "cudaMallocHost");
  return static_cast<T*>(p);
}

// A context bound to one (bucket, padded batch) shape, and the graph captured from it (null: not capturable).
struct ShapeKey {
  std::unique_ptr<nvinfer1::IExecutionContext> context;
  cudaGraphExec_t graph = nullptr;
};

// Owns everything it allocates, so a constructor that fails halfway leaks nothing.
struct Worker {
  cudaStream_t stream = nullptr;
  HostSlot host;
  uint8_t *d_source = nullptr, *d_edited = nullptr;
  int64_t *d_text_ids = nullptr, *d_text_lengths = nullptr;
  float *d_rewards = nullptr, *d_log_sigma = nullptr;
  void* scratch = nullptr;  // device memory shared by this worker's contexts
  int64_t scratch_bytes = 0;
  int profile = 0;                     // optimization profile this worker's contexts use
  std::vector<nvinfer1::ICudaEngine*> engines;  // plan -> the engine (or engine copy) this worker runs
  std::map<std::pair<int, int64_t>, ShapeKey> keys;

  Worker() = default;
  Worker(const Worker&) = delete;
  Worker& operator=(const Worker&) = delete;
  ~Worker() {
    if (stream) cudaStreamSynchronize(stream);  // nothing of ours may still run when its memory goes
    for (auto& [key, k] : keys) {
      if (k.graph) cudaGraphExecDestroy(k.graph);
    }
    keys.clear();  // contexts before their engines, which the backend destroys after the workers
    for (void* p : {static_cast<void*>(host.source), static_cast<void*>(host.edited),
                    static_cast<void*>(host.text_ids), static_cast<void*>(host.text_lengths),
                    static_cast<void*>(host.rewards), static_cast<void*>(host.log_sigma)}) {
      if (p) cudaFreeHost(p);
    }
    for (void* p : {static_cast<void*>(d_source), static_cast<void*>(d_edited), static_cast<void*>(d_text_ids),
                    static_cast<void*>(d_text_lengths), static_cast<void*>(d_rewards),
                    static_cast<void*>(d_log_sigma), scratch}) {
      if (p) cudaFree(p);
    }
    if (stream) cudaStreamDestroy(stream);
  }
};

int64_t padded_batch(int64_t n, int64_t max_batch) {
  int64_t p = 1;
  while (p < n) p *= 2;
  return std::min(p, max_batch);
}

nvinfer1::Dims dims(std::initializer_list<int64_t> d) {
  nvinfer1::Dims out{};
  out.nbDims = static_cast<int32_t>(d.size());
  int i = 0;
  for (auto v : d) out.d[i++] = v;
  return out;
}

class TensorRTBackend final : public Backend {
 public:
  explicit TensorRTBackend(const RuntimeConfig& config) : config_(config) {
    if (config.device.rfind("cuda", 0) != 0) throw std::invalid_argument("tensorrt backend needs a cuda device, got " + config.device);
    const auto colon = config.device.find(':');
    if (colon != std::string::npos) device_ = std::stoi(config.device.substr(colon + 1));
    check(cudaSetDevice(device_), "cudaSetDevice");
    runtime_.reset(nvinfer1::createInferRuntime(logger_));
    if (!runtime_) throw std::runtime_error("createInferRuntime failed");

    std::map<std::string, int> by_path;
    std::vector<std::string> plans;  // serialised engines, needed only while workers take their copies
    for (const auto& b : config.buckets) {
      auto it = by_path.find(b.package);
      if (it == by_path.end()) {
        it = by_path.emplace(b.package, static_cast<int>(plans.size())).first;
        plan_paths_.push_back(b.package);
        plans.push_back(read_file(b.package));
      }
      bucket_plan_.push_back(it->second);
    }
    engines_.resize(plans.size());

    int64_t image_bytes = 0, ids = 0;
    for (const auto& b : config.buckets) {
      image_bytes = std::max(image_bytes, config.max_batch * b.image_size * b.image_size * 3);
      ids = std::max(ids, config.max_batch * b.text_len);
    }
    for (int w = 0; w < config.inflight; ++w) {
      auto k = std::make_unique<Worker>();
      check(cudaStreamCreateWithFlags(&k->stream, cudaStreamNonBlocking), "cudaStreamCreate");
      for (size_t p = 0; p < plans.size(); ++p) assign_engine(*k, p, w, plans[p]);
      for (auto* e : k->engines) k->scratch_bytes = std::max(k->scratch_bytes, e->getDeviceMemorySizeForProfileV2(k->profile));
      if (k->scratch_bytes > 0) check(cudaMalloc(&k->scratch, static_cast<size_t>(k->scratch_bytes)), "cudaMalloc scratch");
      k->host.source = host_malloc<uint8_t>(image_bytes);
      k->host.edited = host_malloc<uint8_t>(image_bytes);
      k->host.text_ids = host_malloc<int64_t>(ids);
      k->host.text_lengths = host_malloc<int64_t>(config.max_batch);
      k->host.rewards = host_malloc<float>(config.max_batch);
      k->host.log_sigma = host_malloc<float>(config.max_batch);
      k->d_source = cuda_malloc<uint8_t>(image_bytes);
      k->d_edited = cuda_malloc<uint8_t>(image_bytes);
      k->d_text_ids = cuda_malloc<int64_t>(ids);
      k->d_text_lengths = cuda_malloc<int64_t>(config.max_batch);
      k->d_rewards = cuda_malloc<float>(config.max_batch);
      k->d_log_sigma = cuda_malloc<float>(config.max_batch);
      workers_.push_back(std::move(k));
    }
  }

  ~TensorRTBackend() override {
    cudaSetDevice(device_);
    workers_.clear();  // their contexts go before the engines and the runtime (members destroyed after this)
  }

  HostSlot slot(int w) override { return workers_[w]->host; }

  void run(int w, int bucket, int64_t n) override {
    if (n < 1 || n > config_.max_batch) {
      throw std::invalid_argument("batch of " + std::to_string(n) + " outside [1, max_batch=" +
                                  std::to_string(config_.max_batch) + "]");
    }
    check(cudaSetDevice(device_), "cudaSetDevice");
    Worker& k = *workers_[w];
    const auto& spec = config_.buckets[bucket];
    const int64_t s = spec.image_size, len = spec.text_len;
    const int64_t padded = padded_batch(n, config_.max_batch);
    // Padding rows: one token (id 0) each, so every row is a valid input; their outputs are dropped.
    std::fill(k.host.text_ids + n * len, k.host.text_ids + padded * len, int64_t{0});
    std::fill(k.host.text_lengths + n, k.host.text_lengths + padded, int64_t{1});

    const auto image_bytes = static_cast<size_t>(padded * s * s * 3);
    check(cudaMemcpyAsync(k.d_source, k.host.source, image_bytes, cudaMemcpyHostToDevice, k.stream), "copy source");
    check(cudaMemcpyAsync(k.d_edited, k.host.edited, image_bytes, cudaMemcpyHostToDevice, k.stream), "copy edited");
    check(cudaMemcpyAsync(k.d_text_ids, k.host.text_ids, static_cast<size_t>(padded * len) * sizeof(int64_t),
                          cudaMemcpyHostToDevice, k.stream), "copy text_ids");
    check(cudaMemcpyAsync(k.d_text_lengths, k.host.text_lengths, static_cast<size_t>(padded) * sizeof(int64_t),
                          cudaMemcpyHostToDevice, k.stream), "copy text_lengths");

    const auto key = std::make_pair(bucket, padded);
    auto it = k.keys.find(key);
    if (it == k.keys.end()) {
      ShapeKey fresh;
      fresh.context = make_context(k, bucket_plan_[bucket]);
      bind(*fresh.context, k, padded, s, len);
      // The first enqueue does TensorRT's deferred shape work for this context; capture the next one.
      if (!fresh.context->enqueueV3(k.stream)) throw std::runtime_error("enqueueV3 failed");
      fresh.graph = capture(*fresh.context, k.stream);
      k.keys.emplace(key, std::move(fresh));
    } else if (it->second.graph) {
      check(cudaGraphLaunch(it->second.graph, k.stream), "cudaGraphLaunch");
    } else if (!it->second.context->enqueueV3(k.stream)) {
      throw std::runtime_error("enqueueV3 failed");
    }
    check(cudaMemcpyAsync(k.host.rewards, k.d_rewards, static_cast<size_t>(n) * sizeof(float), cudaMemcpyDeviceToHost,
                          k.stream), "copy rewards");
    if (config_.output_names.size() > 1) {
      check(cudaMemcpyAsync(k.host.log_sigma, k.d_log_sigma, static_cast<size_t>(n) * sizeof(float),
                            cudaMemcpyDeviceToHost, k.stream), "copy log_sigma");
    }
    check(cudaStreamSynchronize(k.stream), "cudaStreamSynchronize");
  }

 private:
  static std::string read_file(const std::string& path) {
    std::ifstream f(path, std::ios::binary);
    if (!f) throw std::invalid_argument("cannot open TensorRT plan " + path);
    return std::string(std::istreambuf_iterator<char>(f), std::istreambuf_iterator<char>());
  }

  // Contexts that may run concurrently need optimization profiles of their own: worker w takes profile
  // w % profiles of engine copy w / profiles (a plan exported with one profile per worker shares its weights).
  void assign_engine(Worker& k, size_t plan, int worker, const std::string& blob) {
    auto& copies = engines_[plan];
    auto deserialize = [&] {
      std::unique_ptr<nvinfer1::ICudaEngine> e(runtime_->deserializeCudaEngine(blob.data(), blob.size()));
      if (!e) throw std::runtime_error("deserializeCudaEngine failed for " + plan_paths_[plan]);
      return e;
    };
    if (copies.empty()) copies.push_back(deserialize());
    const int profiles = copies.front()->getNbOptimizationProfiles();
    const auto copy = static_cast<size_t>(worker / profiles);
    while (copies.size() <= copy) copies.push_back(deserialize());
    k.profile = worker % profiles;
    validate_io(*copies[copy], plan, k.profile);
    if (k.engines.size() <= plan) k.engines.resize(plan + 1);
    k.engines[plan] = copies[copy].get();
  }

  // All contexts of one worker use its profile; they never run concurrently (one stream). TensorRT 10 assigns
  // profile 0 to a new context; a plan with several profiles whose TensorRT insists on one context per profile
  // would make setOptimizationProfileAsync fail below, failing that batch with a clear error.
  std::unique_ptr<nvinfer1::IExecutionContext> make_context(Worker& k, int plan) {
    std::unique_ptr<nvinfer1::IExecutionContext> ctx(
        k.engines[plan]->createExecutionContext(nvinfer1::ExecutionContextAllocationStrategy::kUSER_MANAGED));
    if (!ctx) throw std::runtime_error("createExecutionContext failed");
    ctx->setDeviceMemoryV2(k.scratch, k.scratch_bytes);
    if (k.profile != 0 && !ctx->setOptimizationProfileAsync(k.profile, k.stream)) {
      throw std::runtime_error("setOptimizationProfileAsync(" + std::to_string(k.profile) + ") failed");
    }
    return ctx;
  }

  // The plan must have exactly the contract's tensors, on the device, in its dtypes and ranks, and its profile
  // must cover every batch and text bucket this runtime will ask for.
  void validate_io(const nvinfer1::ICudaEngine& e, size_t plan, int profile) const {
    using nvinfer1::DataType;
    const std::string where = "TensorRT plan " + plan_paths_[plan] + ": ";
    const size_t expected = config_.input_names.size() + config_.output_names.size();
    if (e.getNbIOTensors() != static_cast<int32_t>(expected)) {
      throw std::invalid_argument(where + "has " + std::to_string(e.getNbIOTensors()) + " input/output tensors, the manifest declares " +
                                  std::to_string(expected));
    }
    const DataType want[] = {DataType::kUINT8, DataType::kUINT8, DataType::kINT64, DataType::kINT64};
    const int32_t rank[] = {4, 4, 2, 1};
    auto on_device = [&](const char* name) {
      if (e.getTensorLocation(name) != nvinfer1::TensorLocation::kDEVICE || e.isShapeInferenceIO(name)) {
        throw std::invalid_argument(where + "tensor '" + name + "' is not an ordinary device tensor");
      }
    };
    for (size_t i = 0; i < config_.input_names.size(); ++i) {
      const char* name = config_.input_names[i].c_str();
      if (e.getTensorIOMode(name) != nvinfer1::TensorIOMode::kINPUT) throw std::invalid_argument(where + "has no input tensor '" + name + "'");
      if (e.getTensorDataType(name) != want[i]) throw std::invalid_argument(where + "input '" + name + "' has another dtype than the contract");
      if (e.getTensorShape(name).nbDims != rank[i]) throw std::invalid_argument(where + "input '" + name + "' has another rank than the contract");
      on_device(name);
    }
    for (const auto& out : config_.output_names) {
      if (e.getTensorIOMode(out.c_str()) != nvinfer1::TensorIOMode::kOUTPUT || e.getTensorDataType(out.c_str()) != DataType::kFLOAT) {
        throw std::invalid_argument(where + "has no float32 output tensor '" + out + "'");
      }
      on_device(out.c_str());
    }
    const char* ids = config_.input_names[2].c_str();
    const nvinfer1::Dims lo = e.getProfileShape(ids, profile, nvinfer1::OptProfileSelector::kMIN);
    const nvinfer1::Dims hi = e.getProfileShape(ids, profile, nvinfer1::OptProfileSelector::kMAX);
    for (size_t b = 0; b < config_.buckets.size(); ++b) {
      if (bucket_plan_[b] != static_cast<int>(plan)) continue;
      const int64_t len = config_.buckets[b].text_len;
      if (lo.d[1] > len || hi.d[1] < len || lo.d[0] > 1 || hi.d[0] < config_.max_batch) {
        throw std::invalid_argument(where + "profile " + std::to_string(profile) + " covers batch [" + std::to_string(lo.d[0]) + ", " +
                                    std::to_string(hi.d[0]) + "] x text [" + std::to_string(lo.d[1]) + ", " + std::to_string(hi.d[1]) +
                                    "], not batch [1, " + std::to_string(config_.max_batch) + "] x text " + std::to_string(len));
      }
    }
  }

  void bind(nvinfer1::IExecutionContext& ctx, Worker& k, int64_t b, int64_t s, int64_t len) const {
    const auto& in = config_.input_names;
    bool ok = ctx.setInputShape(in[0].c_str(), dims({b, s, s, 3})) && ctx.setInputShape(in[1].c_str(), dims({b, s, s, 3})) &&
              ctx.setInputShape(in[2].c_str(), dims({b, len})) && ctx.setInputShape(in[3].c_str(), dims({b}));
    if (!ok) throw std::runtime_error("batch " + std::to_string(b) + " x text " + std::to_string(len) + " is outside the plan's optimization profile");
    ok = ctx.setTensorAddress(in[0].c_str(), k.d_source) && ctx.setTensorAddress(in[1].c_str(), k.d_edited) &&
         ctx.setTensorAddress(in[2].c_str(), k.d_text_ids) && ctx.setTensorAddress(in[3].c_str(), k.d_text_lengths) &&
         ctx.setTensorAddress(config_.output_names[0].c_str(), k.d_rewards);
    if (ok && config_.output_names.size() > 1) ok = ctx.setTensorAddress(config_.output_names[1].c_str(), k.d_log_sigma);
    if (!ok) throw std::runtime_error("setTensorAddress failed");
    // The output buffers hold max_batch floats: the plan must give one value per row.
    for (const auto& out : config_.output_names) {
      const nvinfer1::Dims d = ctx.getTensorShape(out.c_str());
      int64_t volume = 1;
      for (int i = 0; i < d.nbDims; ++i) volume *= d.d[i];
      if (d.nbDims < 1 || volume != b) {
        throw std::runtime_error("TensorRT output '" + out + "' has " + std::to_string(volume) + " values for a batch of " + std::to_string(b));
      }
    }
  }

  // Returns an instantiated graph, or null when this engine cannot be captured (then enqueueV3 is used).
  static cudaGraphExec_t capture(nvinfer1::IExecutionContext& ctx, cudaStream_t stream) {
    cudaGraph_t graph = nullptr;
    cudaGraphExec_t exec = nullptr;
    if (cudaStreamBeginCapture(stream, cudaStreamCaptureModeThreadLocal) != cudaSuccess) return nullptr;
    const bool enqueued = ctx.enqueueV3(stream);
    const bool captured = cudaStreamEndCapture(stream, &graph) == cudaSuccess && enqueued;
    // The WithFlags form also exists before CUDA 12 (TensorRT 10 ships for CUDA 11.8 too).
    if (captured && cudaGraphInstantiateWithFlags(&exec, graph, 0) != cudaSuccess) exec = nullptr;
    if (graph) cudaGraphDestroy(graph);
    cudaGetLastError();  // clear the error a failed capture leaves, so the next CUDA call is not blamed for it
    return exec;
  }

  const RuntimeConfig config_;
  int device_ = 0;
  Logger logger_;
  std::unique_ptr<nvinfer1::IRuntime> runtime_;
  std::vector<std::string> plan_paths_;
  std::vector<int> bucket_plan_;
  std::vector<std::vector<std::unique_ptr<nvinfer1::ICudaEngine>>> engines_;  // plan -> engine copies
  std::vector<std::unique_ptr<Worker>> workers_;  // declared last: destroyed first, before the engines
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
