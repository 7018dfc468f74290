#!/usr/bin/env bash
# Scan benchmark, one command: hashing speed, cold-cache scans of a 1 GiB file and loop device
# (as root) on the sync and io_uring backends next to dd, and 4 KiB write latency under a
# background scan. Prints Markdown tables. Options go to the example, e.g.
#   bench/scan.sh --size-mib 1024 --dir /var/tmp --out bench-scan.md
set -euo pipefail
cd "$(dirname "$0")/.."
exec cargo run --release -p mirror-uring --example scan_bench -- "$@"
