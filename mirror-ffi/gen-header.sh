#!/bin/sh
# Regenerates include/mirror.h from mirror-ffi with the pinned cbindgen.
#
#   mirror-ffi/gen-header.sh           install cbindgen CBINDGEN_VERSION if missing, regenerate
#   mirror-ffi/gen-header.sh --check   fail (exit 1, with a diff) if the committed header differs
#
# The invocation is exactly `cd mirror-ffi && cbindgen --quiet --config cbindgen.toml
# --output OUT .`, so any checker that runs it gets the committed header byte for byte.
set -eu

CBINDGEN_VERSION=0.29.4

here=$(cd "$(dirname "$0")" && pwd -P)
header="$here/../include/mirror.h"

check=0
case "${1:-}" in
    --check) check=1 ;;
    "") ;;
    *) echo "usage: $0 [--check]" >&2; exit 2 ;;
esac

have=$(cbindgen --version 2>/dev/null | awk '{print $2}' || true)
if [ "$have" != "$CBINDGEN_VERSION" ]; then
    echo "installing cbindgen $CBINDGEN_VERSION (found: ${have:-none})" >&2
    cargo install cbindgen --version "$CBINDGEN_VERSION" --locked --force
fi

out=$(mktemp)
trap 'rm -f "$out"' EXIT
(cd "$here" && cbindgen --quiet --config cbindgen.toml --output "$out" .)

if [ "$check" = 1 ]; then
    if ! diff -u "$header" "$out"; then
        echo "include/mirror.h is stale: run mirror-ffi/gen-header.sh and commit it" >&2
        exit 1
    fi
    echo "include/mirror.h is up to date (cbindgen $CBINDGEN_VERSION)"
else
    mkdir -p "$(dirname "$header")"
    cp "$out" "$header"
    echo "wrote include/mirror.h (cbindgen $CBINDGEN_VERSION)"
fi
