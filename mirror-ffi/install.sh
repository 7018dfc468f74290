#!/bin/sh
# Builds libmirror in release mode and installs it under PREFIX:
#
#   PREFIX/lib/libmirror.so.MAJOR.MINOR.PATCH, with the links libmirror.so.MAJOR (its SONAME,
#   which programs record and load) and libmirror.so (what -lmirror finds)
#   PREFIX/lib/libmirror.a  PREFIX/include/mirror.h  PREFIX/lib/pkgconfig/mirror.pc
#   PREFIX/lib/nbdkit/plugins/nbdkit-mirror-plugin.so, the nbdkit plugin (nbdkit-plugin/),
#   built against the libmirror just installed, when nbdkit's plugin header is present
#   (Debian: nbdkit-plugin-dev); MIRROR_REQUIRE_NBDKIT=1 makes its absence an error
#
# usage: mirror-ffi/install.sh PREFIX
#
# Then: PKG_CONFIG_PATH=PREFIX/lib/pkgconfig cc app.c $(pkg-config --cflags --libs mirror)
# (add -Wl,-rpath,PREFIX/lib, or run ldconfig, when PREFIX/lib is not on the loader's path;
# link statically with $(pkg-config --static --libs mirror) and -l:libmirror.a).
#
# MIRROR_LIB_DIR=DIR installs the libraries already built in DIR instead of building them.
set -eu

if [ $# -ne 1 ] || [ -z "$1" ]; then
    echo "usage: $0 PREFIX" >&2
    exit 2
fi
mkdir -p "$1"
prefix=$(cd "$1" && pwd -P)
here=$(cd "$(dirname "$0")" && pwd -P)
root=$(cd "$here/.." && pwd -P)
header="$root/include/mirror.h"

if [ -n "${MIRROR_LIB_DIR:-}" ]; then
    built=$MIRROR_LIB_DIR
else
    (cd "$root" && cargo build --release -p mirror-ffi)
    built=${CARGO_TARGET_DIR:-$root/target}/release
fi
for f in libmirror.so libmirror.a; do
    [ -f "$built/$f" ] || { echo "$built/$f not found" >&2; exit 1; }
done

macro() { sed -n "s/^#define MIRROR_VERSION_$1 \\([0-9]*\\)$/\\1/p" "$header"; }
version="$(macro MAJOR).$(macro MINOR).$(macro PATCH)"
# What a static link of a Rust staticlib needs from the system (rustc --print native-static-libs).
native_libs="-lgcc_s -lutil -lrt -lpthread -lm -ldl -lc"

install -d "$prefix/lib/pkgconfig" "$prefix/include"
install -m 0755 "$built/libmirror.so" "$prefix/lib/libmirror.so.$version"
ln -sfn "libmirror.so.$version" "$prefix/lib/libmirror.so.$(macro MAJOR)"
ln -sfn "libmirror.so.$(macro MAJOR)" "$prefix/lib/libmirror.so"
install -m 0644 "$built/libmirror.a" "$prefix/lib/libmirror.a"
install -m 0644 "$header" "$prefix/include/mirror.h"
sed -e "s|@PREFIX@|$prefix|" -e "s|@VERSION@|$version|" \
    -e "s|@NATIVE_LIBS@|$native_libs|" -e "s|@URL@|https://example.invalid/mirror|" \
    "$here/mirror.pc.in" > "$prefix/lib/pkgconfig/mirror.pc"

# The nbdkit plugin, linked through pkg-config like any program using libmirror, with
# PREFIX/lib on its run path so nbdkit loads it without ldconfig.
plugin_dir="$prefix/lib/nbdkit/plugins"
if pkg-config --exists nbdkit 2>/dev/null; then
    install -d "$plugin_dir"
    # shellcheck disable=SC2046 # pkg-config prints several words on purpose
    "${CC:-cc}" -std=gnu11 -Wall -Wextra -Werror -O2 -g -fPIC -shared \
        -o "$plugin_dir/nbdkit-mirror-plugin.so" "$root/nbdkit-plugin/mirror.c" \
        $(pkg-config --cflags nbdkit) \
        $(PKG_CONFIG_PATH="$prefix/lib/pkgconfig" pkg-config --cflags --libs mirror) \
        -Wl,-rpath,"$prefix/lib"
    echo "installed the nbdkit plugin as $plugin_dir/nbdkit-mirror-plugin.so"
elif [ "${MIRROR_REQUIRE_NBDKIT:-0}" = 1 ]; then
    echo "nbdkit's plugin header is missing (apt-get install nbdkit-plugin-dev)" >&2
    exit 1
else
    echo "skipped the nbdkit plugin: nbdkit's plugin header is missing (nbdkit-plugin-dev)"
fi
echo "installed mirror $version under $prefix"
