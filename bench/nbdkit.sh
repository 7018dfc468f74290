#!/usr/bin/env bash
# The nbdkit plugin against nbdkit's own `file` plugin on the same kind of file: a Markdown
# table of
#   - fio --ioengine=nbd, 4 KiB random writes at iodepth 16 (IOPS, p99 completion latency),
#   - fio --ioengine=nbd, 1 MiB sequential writes at iodepth 16 (MiB/s),
#   - qemu-img convert -n of a SIZE image of random data into the export (seconds),
# for `file`, the mirror plugin in async mode and in sync mode (secondary: `mirror serve` over
# loopback on the same machine, so the link costs no distance, only the protocol's work).
#
#   bench/nbdkit.sh                      SIZE=1G, RUNTIME=20 (seconds per fio job)
#   SIZE=256M RUNTIME=5 bench/nbdkit.sh  a quick look
#   BENCH_DIR=/var/tmp bench/nbdkit.sh   where the files go (needs about 4 x SIZE)
#   PROFILE=debug bench/nbdkit.sh        the debug builds, to check the script quickly
#
# Needs nbdkit, nbdkit-plugin-dev, fio (with its nbd engine), qemu-utils, libnbd-bin.
set -euo pipefail
cd "$(dirname "$0")/.."

size="${SIZE:-1G}"
runtime="${RUNTIME:-20}"
for tool in nbdkit fio qemu-img nbdinfo; do
    command -v "$tool" >/dev/null || { echo "bench/nbdkit.sh needs $tool" >&2; exit 1; }
done

# Release builds: the plugin over a release libmirror, and the secondary.
profile="${PROFILE:-release}"
make -s nbdkit-plugin PROFILE="$profile" >&2
cargo build $([ "$profile" = release ] && echo --release) -p mirror-cli >&2
target_dir="$(cargo metadata --format-version 1 --no-deps | sed -n 's/.*"target_directory":"\([^"]*\)".*/\1/p')"
mirror="$target_dir/$profile/mirror"
plugin="$target_dir/nbdkit/nbdkit-mirror-plugin.so"

work="$(mktemp -d "${BENCH_DIR:-${TMPDIR:-/tmp}}/nbdkit-bench.XXXXXX")"
pids=()
cleanup() {
    for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
    wait 2>/dev/null || true
    rm -rf "$work"
}
trap cleanup EXIT

image="$work/source.img"
head -c "$size" /dev/urandom > "$image"
bytes=$(stat -c %s "$image")

# Starts an export named $1 on $work/$1.sock; echoes nothing, leaves its pids in `pids`.
start() {
    local name=$1 sock="$work/$1.sock" vol="$work/$1.primary"
    rm -f "$sock" "$vol" "$work/$1.secondary"
    truncate -s "$bytes" "$vol"
    case "$name" in
        file)
            nbdkit -f -U "$sock" file file="$vol" 2>"$work/$name.log" &
            pids+=($!) ;;
        mirror-*)
            local out="$work/$name.serve"
            "$mirror" serve --volume "$work/$name.secondary" --listen 127.0.0.1:0 \
                --create "$bytes" >"$out" 2>"$work/$name.serve.log" &
            pids+=($!)
            until grep -q '^listening on' "$out" 2>/dev/null; do sleep 0.1; done
            local addr; addr=$(sed -n 's/^listening on \([^ ]*\).*/\1/p' "$out")
            nbdkit -f -v -U "$sock" "$plugin" volume="$vol" peer="$addr" \
                mode="${name#mirror-}" 2>"$work/$name.log" &
            pids+=($!) ;;
    esac
    until [ -S "$sock" ]; do sleep 0.1; done
    # Wait for the first resync (a full scan of a new pair) to end: each connection logs
    # the primary's status.
    if [ "$name" != file ]; then
        until nbdinfo --size "nbd+unix:///?socket=$sock" >/dev/null \
            && grep 'connection .* closed' "$work/$name.log" | tail -1 \
               | grep -q 'link connected.*last report full-scan'; do
            sleep 0.5
        done
    fi
}

stop_all() {
    for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
    for p in "${pids[@]}"; do wait "$p" 2>/dev/null || true; done
    pids=()
}

# fio job on the export; prints "IOPS P99_US MIB_S".
fio_run() {
    local sock=$1 rw=$2 bs=$3
    fio --name=nbd --ioengine=nbd --uri="nbd+unix:///?socket=$sock" --rw="$rw" --bs="$bs" \
        --iodepth=16 --size="$bytes" --time_based --runtime="$runtime" \
        --output-format=json 2>/dev/null \
        | python3 -c '
import json, sys
text = sys.stdin.read()  # fio prints "fio: connected to NBD server" before the JSON
w = json.loads(text[text.index("{"):])["jobs"][0]["write"]
p99 = w["clat_ns"]["percentile"].get("99.000000", 0) / 1000
print("%.0f %.0f %.1f" % (w["iops"], p99, w["bw_bytes"] / 2**20))'
}

echo "| export | 4 KiB randwrite IOPS | 4 KiB p99 (µs) | 1 MiB seq write (MiB/s) | qemu-img convert $size (s) |"
echo "|---|---:|---:|---:|---:|"
for name in file mirror-async mirror-sync; do
    start "$name"
    sock="$work/$name.sock"
    read -r iops p99 _ < <(fio_run "$sock" randwrite 4k)
    read -r _ _ seq < <(fio_run "$sock" write 1M)
    t0=$(date +%s.%N)
    qemu-img convert -n -f raw -O raw "$image" "nbd+unix:///?socket=$sock"
    t1=$(date +%s.%N)
    conv=$(python3 -c "print('%.1f' % ($t1 - $t0))")
    stop_all
    label=$name
    [ "$name" = file ] && label="nbdkit file plugin"
    [ "$name" != file ] && label="mirror plugin, ${name#mirror-}"
    echo "| $label | $iops | $p99 | $seq | $conv |"
done
