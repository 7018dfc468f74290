#!/usr/bin/env bash
# The benchmarks, one command (`make bench`); every result is a Markdown table on stdout.
#
#   bench/run.sh                      all of them: scans (bench/scan*.sh), write latency
#                                     through a Primary, sync, link cut
#   SIZE=256M bench/run.sh            smaller files for a quick look (default 1G; M or G)
#   BENCH_DIR=/var/tmp bench/run.sh   where the temporary files go (needs about 4 x SIZE)
#
# - write latency through a Primary: p50/p99 of random 4 KiB `Primary::write` calls alone and
#   with periodic scans running back to back (mirror-uring/examples/primary_latency.rs).
# - sync: `mirror sync` of two SIZE files differing in 1% of their 4 KiB blocks, scattered,
#   per algorithm and compare side: seconds, and bytes on the wire / bytes that differ.
# - durability: random 4 KiB sync-mode writes/s at received, written and flushed, 1 and 16
#   writers, beside the local volume's write+fdatasync rate (mirror-core/examples).
# - link cut: 10,000 random 4 KiB writes land while the link is down; the bytes the
#   dirty-map resync sends, / 40,960,000, per dirty-map region size and compare side.
set -euo pipefail
cd "$(dirname "$0")/.."

size="${SIZE:-1G}"
case "$size" in
    *G) size_mib=$(( ${size%G} * 1024 )) ;;
    *M) size_mib=${size%M} ;;
    *) echo "SIZE must be written like 256M or 1G" >&2; exit 2 ;;
esac
dir_args=()
if [ -n "${BENCH_DIR:-}" ]; then
    dir_args=(--dir "$BENCH_DIR")
fi

cargo build --release -p mirror-cli
target_dir="$(cargo metadata --format-version 1 --no-deps | sed -n 's/.*"target_directory":"\([^"]*\)".*/\1/p')"
mirror="$target_dir/release/mirror"

for scan in bench/scan*.sh; do
    [ -f "$scan" ] || continue
    echo "## $(basename "$scan")"
    echo
    # The scan scripts read SIZE and BENCH_DIR themselves.
    SIZE="$size" bash "$scan"
    echo
done

echo "## Write latency through a Primary under a periodic scan"
echo
cargo run --release -p mirror-uring --example primary_latency -- --size-mib "$size_mib" "${dir_args[@]}"
echo

echo "## Sync-mode writes per second at each durability level"
echo
# Random 4 KiB writes through a Primary, 1 and 16 writers, beside local write+fdatasync.
cargo run --release -p mirror-core --example durability_bench -- "${BENCH_DIR:-$(pwd)/target}" 3 256
echo

echo "## Sync and resync"
echo
"$mirror" bench-sync --size "$size" --diff-percent 1 "${dir_args[@]}"
echo
"$mirror" bench-link-cut --size "$size" --writes 10000 "${dir_args[@]}"
