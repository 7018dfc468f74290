#!/bin/sh
# What CI runs for the C ABI: the committed header is what the pinned cbindgen generates, and
# the C tests (shared and static linking, valgrind, the README example) pass.
#
# Needs: gcc, g++, pkg-config, valgrind (apt-get install -y gcc g++ pkg-config valgrind).
set -eu
here=$(cd "$(dirname "$0")" && pwd -P)
"$here/gen-header.sh" --check
cd "$here/.."
MIRROR_REQUIRE_VALGRIND=1 cargo test -p mirror-ffi
