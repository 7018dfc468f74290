# The targets here are exactly what CI runs: .ci/run installs what a fresh machine lacks, then
# runs `make lint` and `make test`. Run them locally and you have run CI.
#
#   make demo    the whole job on temporary files over loopback (release build)
#   make test    every test: Rust (core, uring, C ABI with its C tests, the command), Python
#                (the nbdkit plugin's tests included)
#   make nbdkit-plugin   the nbdkit plugin, target/nbdkit/nbdkit-mirror-plugin.so
#   make lint    formatting, clippy on every crate (mirror-py included), the C header check
#   make bench   the benchmarks, as Markdown tables (bench/run.sh)

SHELL := /bin/bash
CARGO ?= cargo

# In CI a missing valgrind fails the C tests instead of skipping them.
ifdef CI
export MIRROR_REQUIRE_VALGRIND := 1
endif

.PHONY: demo test test-rust test-python nbdkit-plugin lint bench

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
# The nbdkit plugin's tests (test_nbdkit.py) use the plugin built here; without nbdkit's
# plugin header they skip, except in CI, where the plugin is built (and so required) always.
TARGET_DIR := $(or $(CARGO_TARGET_DIR),$(CURDIR)/target)
NBDKIT_HEADER := $(shell pkg-config --exists nbdkit 2>/dev/null && echo yes)
test-python: $(if $(or $(CI),$(NBDKIT_HEADER)),nbdkit-plugin)
	$(CARGO) build -p mirror-cli
	MIRROR_BIN=$(TARGET_DIR)/debug/mirror NBDKIT_PLUGIN=$(NBDKIT_PLUGIN) \
		bash python-tests/run.sh

# The plugin as mirror-ffi/install.sh installs it (linked through pkg-config to the libmirror
# installed beside it), under target/nbdkit/prefix, and copied to $(NBDKIT_PLUGIN).
# PROFILE=release builds it over a release libmirror (bench/nbdkit.sh does).
PROFILE ?= debug
NBDKIT_DIR := $(TARGET_DIR)/nbdkit
NBDKIT_PLUGIN := $(NBDKIT_DIR)/nbdkit-mirror-plugin.so
nbdkit-plugin:
	$(CARGO) build -p mirror-ffi $(if $(filter release,$(PROFILE)),--release)
	MIRROR_LIB_DIR=$(TARGET_DIR)/$(PROFILE) MIRROR_REQUIRE_NBDKIT=1 \
		sh mirror-ffi/install.sh $(NBDKIT_DIR)/prefix-$(PROFILE)
	cp $(NBDKIT_DIR)/prefix-$(PROFILE)/lib/nbdkit/plugins/nbdkit-mirror-plugin.so $(NBDKIT_PLUGIN)

lint:
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --workspace --all-targets -- -D warnings
	bash mirror-ffi/gen-header.sh --check

bench:
	bash bench/run.sh
