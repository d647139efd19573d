// AOTInductor backend: runs the .pt2 packages from `jrm-export --aoti` with libtorch's package loader, on CPU or
// CUDA. The only translation unit that includes torch headers (they dominate compile time).
//
// On CUDA each worker owns pinned host staging, device buffers and a stream from torch's pool, so a worker's
// copies and kernels never serialise against another worker's: with two workers, one batch's H2D copy and
// packing overlap the other's compute. Only device-generic c10 APIs are used, so this file compiles against a
// CPU-only torch and the same code runs on CUDA.
#include <ATen/Parallel.h>
#include <ATen/Tensor.h>
#include <ATen/ops/empty.h>
#include <c10/core/DeviceGuard.h>
#include <c10/core/Stream.h>
#include <c10/core/StreamGuard.h>
#include <c10/core/impl/DeviceGuardImplInterface.h>
#include <torch/csrc/inductor/aoti_package/model_package_loader.h>

#ifdef _OPENMP
#include <omp.h>
#endif

#include <map>
#include <mutex>
#include <optional>
#include <stdexcept>

#include "backend.h"

namespace jrm {
namespace {

using Loader = torch::inductor::AOTIModelPackageLoader;

struct Buffers {
  at::Tensor source, edited, text_ids, text_lengths;  // flat, sized for max(max_batch, max_group) of the largest bucket
};

struct Worker {
  Buffers host;                        // pinned on CUDA
  std::optional<Buffers> device;       // CUDA only
  at::Tensor rewards, log_sigma;       // host outputs (rows,)
  std::optional<c10::Stream> stream;   // CUDA only
};

Buffers allocate(const c10::Device& device, bool pinned, int64_t image_bytes, int64_t ids) {
  auto opt = at::TensorOptions().device(device).pinned_memory(pinned);
  return {at::empty({image_bytes}, opt.dtype(at::kByte)), at::empty({image_bytes}, opt.dtype(at::kByte)),
          at::empty({ids}, opt.dtype(at::kLong)), at::empty({ids}, opt.dtype(at::kLong))};
}

// "cuda" without an index means the device current when the runtime is built; resolve it once, so the loader,
// the buffers, the streams and every worker thread agree on one concrete device.
c10::Device resolve(const std::string& name) {
  c10::Device device(name);
  if (device.is_cuda() && !device.has_index()) {
    device.set_index(c10::impl::getDeviceGuardImpl(c10::kCUDA)->getDevice().index());
  }
  return device;
}

class AotiBackend final : public Backend {
 public:
  explicit AotiBackend(const RuntimeConfig& config) : config_(config), device_(resolve(config.device)) {
    const bool cuda = device_.is_cuda();
    if (!cuda && !device_.is_cpu()) throw std::invalid_argument("aoti backend runs on cpu or cuda, got " + config.device);
#ifndef _OPENMP
    if (config.intra_op_threads > 0) throw std::invalid_argument("intra_op_threads needs a build with OpenMP");
#endif
    // Constants, device buffers and pinned staging belong to the runtime's device, not whichever one the
    // constructing thread happens to have current.
    std::optional<c10::DeviceGuard> on_device;
    if (cuda) on_device.emplace(device_);

    // Buckets may share one package (dynamic text length) or have one each; load each file once.
    std::map<std::string, int> by_path;
    for (const auto& b : config.buckets) {
      auto it = by_path.find(b.package);
      if (it == by_path.end()) {
        it = by_path.emplace(b.package, static_cast<int>(loaders_.size())).first;
        loaders_.push_back(load(b.package, cuda));
      }
      bucket_loader_.push_back(it->second);
    }
    if (!config.group_package.empty()) group_loader_ = load(config.group_package, cuda);

    const int64_t rows = std::max(config.max_batch, config.max_group);
    int64_t image_bytes = 0, ids = 0;
    for (const auto& b : config.buckets) {
      image_bytes = std::max(image_bytes, rows * b.image_size * b.image_size * 3);
      ids = std::max(ids, rows * b.text_len);
    }
    const auto host = c10::Device(c10::kCPU);
    const auto out_opt = at::TensorOptions().dtype(at::kFloat).pinned_memory(cuda);
    for (int w = 0; w < config.inflight; ++w) {
      Worker worker;
      worker.host = allocate(host, cuda, image_bytes, ids);
      worker.rewards = at::empty({rows}, out_opt);
      worker.log_sigma = at::empty({rows}, out_opt);
      if (cuda) {
        worker.device = allocate(device_, false, image_bytes, ids);
        worker.stream = c10::impl::getDeviceGuardImpl(device_.type())->getStreamFromGlobalPool(device_);
      }
      workers_.push_back(std::move(worker));
    }
  }

  // Inductor's CPU kernels open OpenMP regions sized by the calling thread's setting, and a new thread starts
  // from OpenMP's default rather than torch's. Between batches an idle worker's OpenMP team goes to sleep and
  // waking it costs scheduler latency, so on a busy host fewer threads per worker (and more workers) can serve
  // small batches faster: intra_op_threads chooses.
  void start_worker(int) override {
    if (!device_.is_cpu()) return;
    if (config_.intra_op_threads <= 0) {
      at::init_num_threads();
      return;
    }
#ifdef _OPENMP
    omp_set_num_threads(static_cast<int>(config_.intra_op_threads));
#endif
  }

  HostSlot slot(int w) override {
    Worker& k = workers_[w];
    return {k.host.source.data_ptr<uint8_t>(), k.host.edited.data_ptr<uint8_t>(),
            k.host.text_ids.data_ptr<int64_t>(), k.host.text_lengths.data_ptr<int64_t>(),
            k.rewards.data_ptr<float>(),       k.log_sigma.data_ptr<float>()};
  }

  void run(int w, int bucket, int64_t n) override {
    const auto& spec = config_.buckets[bucket];
    const int64_t s = spec.image_size, len = spec.text_len;
    execute(workers_[w], *loaders_[bucket_loader_[bucket]], n, [&](const Buffers& b) {
      return std::vector<at::Tensor>{
          b.source.narrow(0, 0, n * s * s * 3).view({n, s, s, 3}),
          b.edited.narrow(0, 0, n * s * s * 3).view({n, s, s, 3}),
          b.text_ids.narrow(0, 0, n * len).view({n, len}),
          b.text_lengths.narrow(0, 0, n)};
    });
  }

  void run_group(int w, int bucket, int64_t g) override {
    if (!group_loader_) throw std::runtime_error("no group package was loaded (RuntimeConfig.group_package)");
    const auto& spec = config_.buckets[bucket];
    const int64_t s = spec.image_size, len = spec.text_len;
    // The group engine's contract order: source, text_ids, text_lengths, edited.
    execute(workers_[w], *group_loader_, g, [&](const Buffers& b) {
      return std::vector<at::Tensor>{
          b.source.narrow(0, 0, s * s * 3).view({1, s, s, 3}),
          b.text_ids.narrow(0, 0, len).view({1, len}),
          b.text_lengths.narrow(0, 0, 1),
          b.edited.narrow(0, 0, g * s * s * 3).view({g, s, s, 3})};
    });
  }

 private:
  std::unique_ptr<Loader> load(const std::string& path, bool cuda) {
    // torch's loader parses package metadata into one shared static JSON object, so two loaders built at once
    // can corrupt the heap (pytorch PR #194128); torch's own binding relies on the GIL, which the pybind layer
    // holds while a Runtime is built. This lock covers runtimes built from C++ threads.
    static std::mutex construction;
    std::lock_guard<std::mutex> one_at_a_time(construction);
    // One runner per worker: the package's container then serves `inflight` concurrent run() calls.
    auto loader = std::make_unique<Loader>(path, "model", /*run_single_threaded=*/false,
                                           /*num_runners=*/static_cast<size_t>(config_.inflight),
                                           cuda ? device_.index() : c10::DeviceIndex(-1));
    // A package runs only on the device type it was compiled for; say so instead of failing inside a kernel.
    const auto meta = loader->get_metadata();
    const auto it = meta.find("AOTI_DEVICE_KEY");
    if (it != meta.end() && it->second != c10::DeviceTypeName(device_.type(), /*lower_case=*/true)) {
      throw std::invalid_argument("package " + path + " was compiled for device '" + it->second +
                                  "' but the runtime device is '" + config_.device + "'");
    }
    return loader;
  }

  // Runs `loader` on the inputs `views` cuts from a worker's buffers; n results land in the worker's outputs.
  // On CUDA the host staging is copied to the worker's device buffers and everything runs on its stream.
  template <typename Views>
  void execute(Worker& k, Loader& loader, int64_t n, const Views& views) {
    if (!k.stream) {
      store(loader.run(views(k.host)), k, n);
      return;
    }
    c10::StreamGuard guard(*k.stream);
    try {
      std::vector<at::Tensor> inputs = views(*k.device);
      const std::vector<at::Tensor> staged = views(k.host);
      for (size_t i = 0; i < inputs.size(); ++i) inputs[i].copy_(staged[i], /*non_blocking=*/true);
      // The engine's outputs stay alive until the stream has finished the asynchronous copies out of them.
      const std::vector<at::Tensor> outputs = loader.run(inputs, k.stream->native_handle());
      store(outputs, k, n);
    } catch (...) {
      // The next batch refills this worker's staging: copies queued before the failure must finish first.
      k.stream->synchronize();
      throw;
    }
    k.stream->synchronize();
  }

  // Copies outputs into the worker's host output buffers (asynchronously on CUDA; run() syncs the stream).
  void store(const std::vector<at::Tensor>& outputs, Worker& k, int64_t n) {
    const size_t expected = config_.output_names.size();
    if (outputs.size() != expected) {
      throw std::runtime_error("engine returned " + std::to_string(outputs.size()) + " outputs, the manifest declares " +
                               std::to_string(expected));
    }
    at::Tensor* dst[] = {&k.rewards, &k.log_sigma};
    for (size_t i = 0; i < expected; ++i) {
      const at::Tensor& out = outputs[i];
      if (out.scalar_type() != at::kFloat || out.numel() != n) {
        throw std::runtime_error("engine output '" + config_.output_names[i] + "' must be float32 with " +
                                 std::to_string(n) + " elements, got " + std::string(out.dtype().name()) +
                                 " with " + std::to_string(out.numel()));
      }
      dst[i]->narrow(0, 0, n).copy_(out.reshape({n}), /*non_blocking=*/true);
    }
  }

  const RuntimeConfig config_;
  const c10::Device device_;
  std::vector<std::unique_ptr<Loader>> loaders_;
  std::vector<int> bucket_loader_;  // bucket -> loaders_ index
  std::unique_ptr<Loader> group_loader_;  // null: no group package
  std::vector<Worker> workers_;
};

}  // namespace

std::unique_ptr<Backend> make_aoti_backend(const RuntimeConfig& config) {
  return std::make_unique<AotiBackend>(config);
}

}  // namespace jrm
