# imgate: the two commands are `make run` and `make test`.
# Everything else here is plumbing for them.

BUILD      ?= build
ASAN_BUILD ?= build-asan
FUZZ_BUILD ?= build-fuzz
# Seconds each fuzz target runs in `make test` (docs/testing.md for long runs).
FUZZ_SECONDS ?= 8
JOBS       ?= $(shell nproc 2>/dev/null || echo 2)

LISTEN     ?= 127.0.0.1:8080
DATA       ?= ./var
# An optional configuration file (docs/configuration.md): make run CONFIG=imgate.json
CONFIG     ?=

# Sub-makes (cmake's) stay quiet about directories; errors still show.
MAKEFLAGS  += --no-print-directory

.PHONY: all deps test-deps build build-asan run test test-fast test-asan fuzz test-fuzz bench clean

all: build

deps:
	@./scripts/deps.sh

# What only the tests need: Node.js and the webhook receiver's npm packages
# (tests/webhook/node_modules, installed from its lock file when missing).
test-deps:
	@./scripts/deps.sh --test

$(BUILD)/Makefile: CMakeLists.txt
	@cmake -S . -B $(BUILD) -DCMAKE_BUILD_TYPE=RelWithDebInfo >/dev/null

$(ASAN_BUILD)/Makefile: CMakeLists.txt
	@cmake -S . -B $(ASAN_BUILD) -DCMAKE_BUILD_TYPE=Debug -DIMGATE_SANITIZE=ON >/dev/null

build: deps $(BUILD)/Makefile
	@cmake --build $(BUILD) -j $(JOBS)

build-asan: deps $(ASAN_BUILD)/Makefile
	@cmake --build $(ASAN_BUILD) -j $(JOBS)

# Start the server on the embedded default (SQLite + ./var + simulated provider).
# Builds the server alone: the tests are not needed to run it.
run: deps $(BUILD)/Makefile
	@cmake --build $(BUILD) -j $(JOBS) --target imgate
	@$(BUILD)/imgate serve --listen $(LISTEN) --data $(DATA) $(if $(CONFIG),--config $(CONFIG))

# Every test, on the optimised build and then under ASan+UBSan, then a short
# run of every fuzz target.
test: test-fast test-asan test-fuzz

test-fast: build test-deps
	@cd $(BUILD) && ctest --output-on-failure -j 2

test-asan: build-asan test-deps
	@cd $(ASAN_BUILD) && ASAN_OPTIONS=detect_leaks=1:abort_on_error=0 \
	  UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1 \
	  ctest --output-on-failure -j 2

# The fuzz targets (tests/fuzz/), built with clang's libFuzzer in their own
# folder; the gcc builds above are not touched.
$(FUZZ_BUILD)/Makefile: tests/fuzz/CMakeLists.txt
	@cmake -S tests/fuzz -B $(FUZZ_BUILD) -DCMAKE_C_COMPILER=clang >/dev/null

fuzz:
	@./scripts/deps.sh --fuzz
	@$(MAKE) $(FUZZ_BUILD)/Makefile
	@cmake --build $(FUZZ_BUILD) -j $(JOBS)

test-fuzz: fuzz
	@tests/fuzz/run.sh $(FUZZ_BUILD) $(FUZZ_SECONDS)

# Benchmarks (not tests): see docs/benchmarks.md.
bench: build
	@./scripts/deps.sh --bench
	@./bench/inflight

clean:
	@rm -rf $(BUILD) $(ASAN_BUILD) $(FUZZ_BUILD)
