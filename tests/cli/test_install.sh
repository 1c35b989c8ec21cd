#!/bin/sh
# Installs the build into a temporary prefix and builds a small program
# against it twice: with pkg-config and with find_package(mxc).
set -eu
BIN_DIR=${MXC_BIN_DIR:?MXC_BIN_DIR not set}
TMP=$(mktemp -d)
trap 'rm -rf "$TMP"' EXIT
cmake --install "$BIN_DIR" --prefix "$TMP/prefix" >/dev/null
cat >"$TMP/hello.c" <<'C'
#include <mxc/mxc.h>
#include <stdio.h>
int main(void) {
  mx_array *a = mx_arange(0, 10, 1, MX_FLOAT32);
  mx_array *s = mx_sum(a, NULL, 0, false);
  double v = 0;
  if (mx_array_item(s, &v)) { fprintf(stderr, "%s\n", mx_last_error()); return 1; }
  printf("%g\n", v);
  mx_array_free(a); mx_array_free(s);
  return v == 45 ? 0 : 1;
}
C
LIBDIR=$(ls -d "$TMP"/prefix/lib*/pkgconfig | head -1)
PKG_CONFIG_PATH="$LIBDIR" cc -o "$TMP/hello_pc" "$TMP/hello.c" \
  $(PKG_CONFIG_PATH="$LIBDIR" pkg-config --cflags mxc) \
  $(PKG_CONFIG_PATH="$LIBDIR" pkg-config --libs mxc) -Wl,-rpath,"$LIBDIR/.."
out=$("$TMP/hello_pc")
[ "$out" = 45 ] || { echo "pkg-config build printed '$out'"; exit 1; }
mkdir -p "$TMP/cm"
cat >"$TMP/cm/CMakeLists.txt" <<'C'
cmake_minimum_required(VERSION 3.20)
project(hello C)
find_package(mxc REQUIRED)
add_executable(hello ../hello.c)
target_link_libraries(hello PRIVATE mxc::mxc_static)
C
cmake -S "$TMP/cm" -B "$TMP/cm/build" -DCMAKE_PREFIX_PATH="$TMP/prefix" >/dev/null
cmake --build "$TMP/cm/build" >/dev/null
out=$("$TMP/cm/build/hello")
[ "$out" = 45 ] || { echo "find_package build printed '$out'"; exit 1; }
echo "install: pkg-config and find_package(mxc) builds ok"
