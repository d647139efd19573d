# Two commands on a fresh machine:  `make train` (the embedded default job) and `make test` (the test suite).
# Both create .venv and install the pinned CPU environment and the package (with its C++ runtime) first.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.jrm-installed

.PHONY: setup train test test-sanitize bench clean

SOURCES := $(shell find jrm_engine kernels export csrc -type f \( -name "*.py" -o -name "*.cpp" -o -name "*.h" \) 2>/dev/null)

$(STAMP): requirements-cpu.txt pyproject.toml CMakeLists.txt $(SOURCES)
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -r requirements-cpu.txt
	# No build isolation: the C++ runtime compiles against the torch installed above. Not editable: an
	# editable scikit-build-core install puts the checkout on sys.path, exposing kernels/ and export/ as
	# top-level packages (transformers probes `import kernels`). Sources changed -> reinstalled (C++ build cached).
	$(PY) -m pip install -q --no-build-isolation --no-deps .
	touch $(STAMP)

setup: $(STAMP)

train: $(STAMP)
	$(VENV)/bin/jrm train $(ARGS)

test: $(STAMP)
	$(VENV)/bin/pytest tests -q $(ARGS)

# The runtime's tests against an AddressSanitizer + UBSan build of _runtime (CMake -DJRM_SANITIZE=ON), built in
# its own folder and found through PYTHONPATH after the source tree (jrm_engine/__init__.py takes _runtime from
# the first installed copy on sys.path). Python is not ASan-built, so the ASan runtime is preloaded; leak checks
# are off because CPython and torch keep allocations until exit by design.
SANITIZE_DIR := build/sanitize
SANITIZE_TESTS := tests/test_runtime_sanitizer.py tests/test_runtime.py tests/test_runtime_load.py \
  tests/test_runtime_export.py tests/test_scoring_runtime.py
test-sanitize: $(STAMP)
	$(PY) -m pip install -q --upgrade --no-build-isolation --no-deps --target $(SANITIZE_DIR)/site \
	  -C cmake.define.JRM_SANITIZE=ON -C cmake.build-type=RelWithDebInfo -C build-dir=$(SANITIZE_DIR)/cmake .
	LD_PRELOAD="$$($(CXX) -print-file-name=libasan.so):$$($(CXX) -print-file-name=libubsan.so)" \
	  ASAN_OPTIONS=detect_leaks=0 UBSAN_OPTIONS=halt_on_error=1:print_stacktrace=1 JRM_EXPECT_SANITIZER=1 \
	  PYTHONPATH="$(CURDIR):$(CURDIR)/$(SANITIZE_DIR)/site" $(PY) -m pytest $(SANITIZE_TESTS) -q $(ARGS)

bench: $(STAMP)
	$(VENV)/bin/pytest benchmarks -q --benchmark-json=benchmarks/results/cpu-benchmarks.json $(ARGS)

clean:
	rm -rf build $(VENV) runs
