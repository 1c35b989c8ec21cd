#!/bin/sh
# Build mxc and run the main job. Installs missing Debian packages first.
#   ./scripts/run.sh                 # the default job
#   ./scripts/run.sh generate ...    # any mxc command
set -eu
cd "$(dirname "$0")/.."
sh scripts/deps.sh
cmake -S . -B build/release -DCMAKE_BUILD_TYPE=Release -DMXC_BUILD_TESTS=OFF >/dev/null
cmake --build build/release -j"$(nproc 2>/dev/null || echo 2)" --target mxc_cli >/dev/null
if [ $# -eq 0 ]; then
  # Until the bundled model lands (see issues), the main job is the demo of
  # lazy evaluation and the memory API.
  exec ./build/release/mxc demo
fi
exec ./build/release/mxc "$@"
