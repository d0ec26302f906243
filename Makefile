# The two commands a newcomer runs: `make demo` and `make test`.
# Both go through `make setup`, which creates .venv and installs fmforge once;
# it reinstalls only when pyproject.toml changes.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: setup demo test test-fast faults bench clean llama-cpp mutate chromium

setup: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	# Without CUDA, take the CPU build of torch first; a bare torch requirement
	# would pull a multi-GB CUDA build (see README.md, "Two commands").
	if ! command -v nvidia-smi >/dev/null 2>&1; then \
		$(BIN)/python -m pip install --quiet torch==2.13.0 ; fi
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

demo: setup
	$(BIN)/fmforge run configs/demo.yaml

test: setup llama-cpp chromium
	$(BIN)/python -m pytest -q

# The system's Chromium, for the chat page's browser tests (Playwright drives it;
# nothing is downloaded from Playwright's servers) and the report screenshots. On a
# Debian or Ubuntu machine where we are root it is installed from the distribution
# (about 30 s); elsewhere the page tests skip, saying so.
chromium:
	@if ! command -v chromium >/dev/null 2>&1; then \
		if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
			(apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null) \
				|| echo "chromium could not be installed: the chat page tests will skip"; \
		else echo "no chromium and no root apt-get: the chat page tests will skip (Debian: apt-get install chromium)"; fi; \
	fi

test-fast: setup
	$(BIN)/python -m pytest -q -m "not slow"

# The fault-injection suite alone (also part of `make test`): kill -9 during a DDP
# run, a disk that fills while a checkpoint is saved, a read-only run directory,
# damaged data shards, token files and sources. The disk cases mount a small tmpfs
# and skip without root.
faults: setup
	$(BIN)/python -m pytest -q -m faults

bench: setup
	$(BIN)/python benchmarks/plan_vs_measured.py --preset tiny
	$(BIN)/python benchmarks/plan_vs_measured.py --preset small
	$(BIN)/python benchmarks/bench_train.py

# llama.cpp's Python binding, for the GGUF export's check against llama.cpp itself
# (tests/export/test_gguf.py) and the CPU anchor in benchmarks/bench_generate.py.
# PyPI has only its source: the first `make llama-cpp` compiles llama.cpp (7 minutes
# on 2 busy cores, 6.7 CPU-minutes) into a wheel cached outside the clone, in
# $XDG_CACHE_HOME (~/.cache)/fmforge/wheels; a new .venv installs that wheel in
# seconds, an up-to-date one does nothing. `make test` builds it first, so CI (a
# fresh machine, no cache) checks every GGUF export against llama.cpp; `make
# test-fast` does not, and skips those checks. The build is -march=native
# (GGML_NATIVE), so the cache is keyed by the CPU's instruction-set flags and the
# CMake options: a cache shared between machines never hands one a wheel built for
# instructions it lacks. The multimodal library (mtmd) and llama.cpp's tests, tools,
# examples and server are not built. On x86 the AMX int8 kernels are left out
# (-mno-amx-int8; the rest of -march=native stays): on Sapphire Rapids they segfault
# on any Q8_0 matrix, ours or one llama.cpp quantised itself (llama.cpp issue
# 20824); f32 and f16 never use them.
LLAMA_CPP_VERSION := 0.3.36
LLAMA_CPP_CMAKE_ARGS := -DGGML_NATIVE=ON -DLLAVA_BUILD=OFF -DLLAMA_BUILD_TESTS=OFF \
	-DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_TOOLS=OFF -DLLAMA_BUILD_SERVER=OFF \
	$(if $(filter x86_64 amd64,$(shell uname -m)),-DCMAKE_C_FLAGS=-mno-amx-int8 -DCMAKE_CXX_FLAGS=-mno-amx-int8)
WHEEL_CACHE := $(if $(XDG_CACHE_HOME),$(XDG_CACHE_HOME),$(HOME)/.cache)/fmforge/wheels
LLAMA_CPP_KEY := $(shell { uname -m; grep -m1 '^flags' /proc/cpuinfo 2>/dev/null || sysctl -n machdep.cpu.features 2>/dev/null; echo '$(LLAMA_CPP_CMAKE_ARGS)'; } | cksum | cut -d' ' -f1)
LLAMA_CPP_WHEELS := $(WHEEL_CACHE)/llama-cpp-python-$(LLAMA_CPP_VERSION)-$(LLAMA_CPP_KEY)

LLAMA_CPP_STAMP := $(VENV)/.llama-cpp-$(LLAMA_CPP_VERSION)-$(LLAMA_CPP_KEY)

llama-cpp: $(LLAMA_CPP_STAMP)

$(LLAMA_CPP_STAMP): $(STAMP)
	@if ls $(LLAMA_CPP_WHEELS)/llama_cpp_python-$(LLAMA_CPP_VERSION)-*.whl >/dev/null 2>&1; then \
		echo "llama-cpp-python $(LLAMA_CPP_VERSION): cached wheel in $(LLAMA_CPP_WHEELS)"; \
	else \
		echo "llama-cpp-python $(LLAMA_CPP_VERSION): compiling llama.cpp into a wheel (about 7 minutes on 2 cores, once), cached in $(LLAMA_CPP_WHEELS)"; \
		rm -rf '$(LLAMA_CPP_WHEELS).partial' && mkdir -p '$(LLAMA_CPP_WHEELS).partial' && \
		echo "  (compiler output: $(LLAMA_CPP_WHEELS).partial/build.log, kept beside the wheel)"; \
		CMAKE_ARGS='$(LLAMA_CPP_CMAKE_ARGS)' $(BIN)/python -m pip wheel --verbose --no-deps \
			--no-binary llama-cpp-python -w '$(LLAMA_CPP_WHEELS).partial' \
			'llama-cpp-python==$(LLAMA_CPP_VERSION)' > '$(LLAMA_CPP_WHEELS).partial/build.log' 2>&1 \
			|| { tail -n 40 '$(LLAMA_CPP_WHEELS).partial/build.log'; \
			     echo "llama-cpp-python did not build; full log: $(LLAMA_CPP_WHEELS).partial/build.log"; exit 1; } && \
		rm -rf '$(LLAMA_CPP_WHEELS)' && mv '$(LLAMA_CPP_WHEELS).partial' '$(LLAMA_CPP_WHEELS)'; \
	fi
	# --force-reinstall: the same version built with other options is another wheel.
	$(BIN)/python -m pip install --quiet --no-deps --force-reinstall $(LLAMA_CPP_WHEELS)/llama_cpp_python-$(LLAMA_CPP_VERSION)-*.whl
	$(BIN)/python -m pip install --quiet $(LLAMA_CPP_WHEELS)/llama_cpp_python-$(LLAMA_CPP_VERSION)-*.whl
	$(BIN)/python -c "import llama_cpp; print('llama-cpp-python', llama_cpp.__version__, 'installed in $(VENV):', llama_cpp.llama_print_system_info().decode().strip())"
	rm -f $(VENV)/.llama-cpp-*
	touch $@

# Mutation testing (docs/testing.md): mutmut 3 puts one-line bugs into the modules
# where a bug loses data, breaks a client or misleads a decision, and counts those
# the tests catch. Not part of `make test` or CI: hours for all modules on 2 cores.
# One module at a time, each in its own copy under mutation/ against the tests
# pyproject.toml's [tool.fmforge.mutate.tests] names for it (tools/mutate.py);
# MUTATE_MODULES=fmforge.data.pii narrows it, MUTATE_JOBS sets the workers,
# MUTATE_KEEP=1 goes on from a stopped run.
MUTMUT_VERSION := 3.8.1
MUTATE_MODULES ?=
MUTATE_JOBS ?= 2
MUTATE_KEEP ?=

mutate: setup
	$(BIN)/python -m pip show mutmut 2>/dev/null | grep -qx 'Version: $(MUTMUT_VERSION)' \
		|| $(BIN)/python -m pip install --quiet mutmut==$(MUTMUT_VERSION)
	$(BIN)/python tools/mutate.py --jobs $(MUTATE_JOBS) $(if $(MUTATE_KEEP),--keep) $(MUTATE_MODULES)

clean:
	rm -rf $(VENV) runs .pytest_cache
