#!/usr/bin/env bash
# Scan benchmark, one command: hashing speed, cold-cache scans of a 1 GiB file and loop device
# (as root) on the sync and io_uring backends next to dd, and 4 KiB write latency under a
# background scan. Prints Markdown tables on stdout (progress on stderr). Options go to the
# example (bench/scan.sh --help); SIZE (e.g. 256M, 1G) and BENCH_DIR are read as bench/run.sh
# documents them.
set -euo pipefail
cd "$(dirname "$0")/.."

args=()
if [ -n "${SIZE:-}" ]; then
    case "$SIZE" in
        *G) args+=(--size-mib "$(( ${SIZE%G} * 1024 ))") ;;
        *M) args+=(--size-mib "${SIZE%M}") ;;
        *) echo "SIZE must end in M or G (got $SIZE)" >&2; exit 2 ;;
    esac
fi
if [ -n "${BENCH_DIR:-}" ]; then
    args+=(--dir "$BENCH_DIR")
fi
exec cargo run --release -p mirror-uring --example scan_bench -- "${args[@]}" "$@"
