#!/bin/sh
# Install the Debian packages mxc needs to build and test, when missing.
# Safe to run repeatedly; does nothing when everything is present.
set -e
PKGS="build-essential cmake pkg-config libopenblas-dev libcjson-dev libyaml-dev libutf8proc-dev zlib1g-dev libcurl4-openssl-dev"
if [ "${MXC_WITH_FUZZ:-1}" = 1 ]; then PKGS="$PKGS clang libclang-rt-14-dev"; fi
missing=""
for p in $PKGS; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing="$missing $p"
done
if [ -n "$missing" ]; then
  echo "deps: installing$missing"
  SUDO=""; [ "$(id -u)" = 0 ] || SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq $missing >/dev/null
fi
