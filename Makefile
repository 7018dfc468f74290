# The targets here are exactly what CI runs: .ci/run installs what a fresh machine lacks, then
# runs `make lint` and `make test`. Run them locally and you have run CI.
#
#   make demo    the whole job on temporary files over loopback (release build)
#   make test    every test: Rust (core, uring, C ABI with its C tests, the command), Python
#   make lint    formatting, clippy on every crate (mirror-py included), the C header check
#   make bench   the benchmarks, as Markdown tables (bench/run.sh)

SHELL := /bin/bash
CARGO ?= cargo

# In CI a missing valgrind fails the C tests instead of skipping them.
ifdef CI
export MIRROR_REQUIRE_VALGRIND := 1
endif

.PHONY: demo test test-rust test-python lint bench

demo:
	$(CARGO) run --release -p mirror-cli -- demo

test: test-rust test-python

# The workspace's default members: mirror-core, mirror-uring, mirror-ffi (whose cargo tests
# compile and run the C tests) and mirror-cli. mirror-py is tested through Python below.
test-rust:
	$(CARGO) test

# A virtual environment with the built module, then pytest (python-tests/run.sh says how).
# The Python tests drive the `mirror` binary that test-rust already built (debug profile, with
# optimised dependencies), rather than building a release one too.
TARGET_DIR := $(or $(CARGO_TARGET_DIR),$(CURDIR)/target)
test-python:
	$(CARGO) build -p mirror-cli
	MIRROR_BIN=$(TARGET_DIR)/debug/mirror bash python-tests/run.sh

lint:
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --workspace --all-targets -- -D warnings
	bash mirror-ffi/gen-header.sh --check

bench:
	bash bench/run.sh
