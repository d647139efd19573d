// Python bindings for jrm_engine._runtime. This layer only converts: numpy arrays become borrowed ArrayArg
// views and config fields become a plain RuntimeConfig; the C++ core validates, copies and queues with the GIL
// released, so no Python object ever reaches a worker thread.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <torch/version.h>  // macros only: which libtorch this module was compiled against

#include <string>

#include "runtime.h"

namespace py = pybind11;

namespace {

jrm::ArrayArg view(const py::array& a) {
  jrm::ArrayArg out;
  out.data = a.data();
  out.dtype = py::str(a.dtype());
  out.shape.assign(a.shape(), a.shape() + a.ndim());
  out.contiguous = (a.flags() & py::array::c_style) != 0;
  return out;
}

py::dict percentiles(const jrm::Percentiles& p) {
  py::dict d;
  d["p50"] = p.p50;
  d["p90"] = p.p90;
  d["p99"] = p.p99;
  d["max"] = p.max;
  return d;
}

}  // namespace

PYBIND11_MODULE(_runtime, m) {
  m.doc() = "Dynamic-batching scoring runtime (C++). Use jrm_engine.runtime.RuntimeScorer, not this module.";
  // jrm_engine.runtime refuses to use this module under another torch: libtorch's C++ ABI is not stable across
  // releases, and a mismatch may only show as a crash inside the engine.
  m.attr("torch_version") = std::to_string(TORCH_VERSION_MAJOR) + "." + std::to_string(TORCH_VERSION_MINOR) + "." +
                            std::to_string(TORCH_VERSION_PATCH);
  py::register_exception<jrm::QueueFull>(m, "QueueFullError", PyExc_RuntimeError);
  py::register_exception<jrm::QueueClosed>(m, "RuntimeClosedError", PyExc_RuntimeError);

#ifdef JRM_WITH_TENSORRT
  m.attr("has_tensorrt") = true;
  m.def("tensorrt_version", &jrm::tensorrt_version);
#else
  m.attr("has_tensorrt") = false;
#endif

  py::class_<jrm::BucketSpec>(m, "BucketSpec")
      .def(py::init([](int64_t image_size, int64_t text_len, std::string package) {
             return jrm::BucketSpec{image_size, text_len, std::move(package)};
           }),
           py::arg("image_size"), py::arg("text_len"), py::arg("package"))
      .def_readonly("image_size", &jrm::BucketSpec::image_size)
      .def_readonly("text_len", &jrm::BucketSpec::text_len)
      .def_readonly("package", &jrm::BucketSpec::package);

  py::class_<jrm::RuntimeConfig>(m, "RuntimeConfig")
      .def(py::init<>())
      .def_readwrite("backend", &jrm::RuntimeConfig::backend)
      .def_readwrite("device", &jrm::RuntimeConfig::device)
      .def_readwrite("buckets", &jrm::RuntimeConfig::buckets)
      .def_readwrite("input_names", &jrm::RuntimeConfig::input_names)
      .def_readwrite("output_names", &jrm::RuntimeConfig::output_names)
      .def_readwrite("vocab_size", &jrm::RuntimeConfig::vocab_size)
      .def_readwrite("max_batch", &jrm::RuntimeConfig::max_batch)
      .def_readwrite("max_delay_us", &jrm::RuntimeConfig::max_delay_us)
      .def_readwrite("max_queue", &jrm::RuntimeConfig::max_queue)
      .def_readwrite("inflight", &jrm::RuntimeConfig::inflight)
      .def_readwrite("intra_op_threads", &jrm::RuntimeConfig::intra_op_threads)
      .def_readwrite("group_package", &jrm::RuntimeConfig::group_package)
      .def_readwrite("max_group", &jrm::RuntimeConfig::max_group)
      .def_readwrite("group_image_size", &jrm::RuntimeConfig::group_image_size);

  py::class_<jrm::Runtime>(m, "Runtime")
      // Built with the GIL held, like torch's own package binding: torch's loader is not safe to construct
      // concurrently (a shared static in its metadata parsing), and the GIL also keeps torch's Python loaders
      // out while ours loads. Loading takes seconds; other Python threads wait that long.
      .def(py::init([](const jrm::RuntimeConfig& config) { return std::make_unique<jrm::Runtime>(config); }),
           py::arg("config"))
      .def(
          "submit",
          [](jrm::Runtime& rt, int64_t id, const py::array& source, const py::array& edited, const py::array& text_ids) {
            const jrm::ArrayArg s = view(source), e = view(edited), t = view(text_ids);
            py::gil_scoped_release release;  // the arrays stay alive in this frame while the core copies them
            rt.submit(id, s, e, t);
          },
          py::arg("id"), py::arg("source_pixels"), py::arg("edited_pixels"), py::arg("text_ids"))
      .def(
          "submit_group",
          [](jrm::Runtime& rt, const std::vector<int64_t>& ids, const py::array& source, const py::array& edited,
             const py::array& text_ids) {
            const jrm::ArrayArg s = view(source), e = view(edited), t = view(text_ids);
            py::gil_scoped_release release;
            rt.submit_group(ids, s, e, t);
          },
          py::arg("ids"), py::arg("source_pixels"), py::arg("edited_pixels"), py::arg("text_ids"))
      .def(
          "wait_completions",
          [](jrm::Runtime& rt, int64_t timeout_ms) -> py::object {
            std::optional<std::vector<jrm::Completion>> done;
            {
              py::gil_scoped_release release;
              done = rt.wait_completions(timeout_ms);
            }
            if (!done) return py::none();
            py::list out(done->size());
            for (size_t i = 0; i < done->size(); ++i) {
              const auto& c = (*done)[i];
              out[i] = py::make_tuple(c.id, c.reward, c.log_sigma,
                                      c.error.empty() ? py::object(py::none()) : py::object(py::str(c.error)));
            }
            return std::move(out);
          },
          py::arg("timeout_ms"),
          "Completions as (id, reward, log_sigma, error or None); [] on timeout; None once closed and drained.")
      .def("flush", [](jrm::Runtime& rt) {
             py::gil_scoped_release release;
             rt.flush();
           }, "Close the open batches now: every request queued so far is due without waiting for max_delay.")
      .def("close", [](jrm::Runtime& rt, bool drain) {
             py::gil_scoped_release release;
             rt.close(drain);
           }, py::arg("drain") = true)
      .def("stats", [](const jrm::Runtime& rt) {
        const jrm::StatsSnapshot s = rt.stats();
        py::dict d;
        d["requests"] = s.requests;
        d["completed"] = s.completed;
        d["failed"] = s.failed;
        d["rejected"] = s.rejected;
        d["invalid"] = s.invalid;
        d["batches"] = s.batches;
        d["closed_full"] = s.closed_full;
        d["closed_delay"] = s.closed_delay;
        d["closed_flush"] = s.closed_flush;
        d["closed_drain"] = s.closed_drain;
        d["padded_up"] = s.padded_up;
        d["groups"] = s.groups;
        d["mean_batch_size"] = s.mean_batch_size;
        d["max_batch_size_seen"] = s.max_batch_size_seen;
        d["queue_size"] = s.queue_size;
        d["max_queue_size_seen"] = s.max_queue_size_seen;
        d["queue_wait_us"] = percentiles(s.queue_wait_us);
        d["run_us"] = percentiles(s.run_us);
        return d;
      });
}
