# Two commands on a fresh machine:  `make train` (the embedded default job) and `make test` (the test suite).
# Both create .venv and install the pinned CPU environment and the package (with its C++ runtime) first.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.jrm-installed

.PHONY: setup train test bench clean

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

bench: $(STAMP)
	$(VENV)/bin/pytest benchmarks -q --benchmark-json=benchmarks/results/cpu-benchmarks.json $(ARGS)

clean:
	rm -rf build $(VENV) runs
