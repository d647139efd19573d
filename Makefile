# Two commands on a fresh machine:  `make train` (the embedded default job) and `make test` (the test suite).
# Both create .venv and install the pinned CPU environment and the package (with its C++ runtime) first.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.jrm-installed

.PHONY: setup train test bench clean

$(STAMP): requirements-cpu.txt pyproject.toml CMakeLists.txt $(wildcard csrc/*)
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -r requirements-cpu.txt
	# No build isolation: the C++ runtime compiles against the torch installed above.
	$(PY) -m pip install -q --no-build-isolation --no-deps -e .
	touch $(STAMP)

setup: $(STAMP)

train: $(STAMP)
	$(PY) -m jrm_engine.train $(ARGS)

test: $(STAMP)
	$(PY) -m pytest tests -q $(ARGS)

bench: $(STAMP)
	$(PY) -m pytest benchmarks -q --benchmark-json=benchmarks/results/cpu-benchmarks.json $(ARGS)

clean:
	rm -rf build $(VENV) runs
