#!/usr/bin/env bash
# Python tests of mirror, from a fresh machine with Rust, a C compiler and Python >= 3.9:
#   1. a virtual environment (.venv at the repository root, or $MIRROR_VENV),
#   2. pip install of the test tools and of ./mirror-py (maturin builds the abi3 wheel),
#   3. cargo build of the `mirror` binary (the tests run `mirror serve` as the secondary),
#   4. mypy.stubtest of the hand-written stubs against the built module, and mypy of the
#      tests against those stubs,
#   5. pytest (warnings are errors; every test has a timeout).
# Exits non-zero on any failure, including a pytest run that collected no test.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

PYTHON="${PYTHON:-python3}"
VENV="${MIRROR_VENV:-$ROOT/.venv}"
if [ ! -x "$VENV/bin/python" ]; then
    echo "== creating $VENV"
    "$PYTHON" -m venv "$VENV"
fi
PY="$VENV/bin/python"
PIP=("$PY" -m pip --disable-pip-version-check --quiet)

echo "== installing test tools"
"${PIP[@]}" install maturin pytest pytest-timeout mypy

echo "== building and installing ./mirror-py"
"${PIP[@]}" install ./mirror-py

# MIRROR_BIN names a binary already built (make test passes the one cargo test built);
# otherwise build a release one.
if [ -z "${MIRROR_BIN:-}" ]; then
    echo "== building the mirror binary"
    cargo build --release -p mirror-cli
    TARGET="${CARGO_TARGET_DIR:-$ROOT/target}"
    MIRROR_BIN="$TARGET/release/mirror"
fi
export MIRROR_BIN
export MIRROR_REQUIRE_BIN=1
test -x "$MIRROR_BIN" || { echo "no mirror binary at $MIRROR_BIN" >&2; exit 1; }

cd "$ROOT/python-tests"

echo "== mypy.stubtest mirror"
"$PY" -m mypy.stubtest mirror
echo "== mypy (the tests, against the stubs)"
"$PY" -m mypy conftest.py test_*.py

echo "== pytest"
status=0
"$PY" -m pytest "$@" || status=$?
if [ "$status" -eq 5 ]; then
    echo "pytest collected no test" >&2
    exit 1
fi
exit "$status"
