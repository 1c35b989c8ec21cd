#!/bin/sh
# Build mxc and run the main job. Installs missing Debian packages first.
#   ./scripts/run.sh                 # the default job: generate from models/default
#   ./scripts/run.sh demo            # lazy evaluation and the memory API
#   ./scripts/run.sh generate ...    # any mxc command
set -eu
cd "$(dirname "$0")/.."
sh scripts/deps.sh
cmake -S . -B build/release -DCMAKE_BUILD_TYPE=Release -DMXC_BUILD_TESTS=OFF >/dev/null
cmake --build build/release -j"$(nproc 2>/dev/null || echo 2)" --target mxc_cli >/dev/null
if [ $# -eq 0 ]; then
  # The bundled model (models/default, trained with `mxc train`; see its README.md).
  exec ./build/release/mxc generate --model models/default --prompt "A day for" \
    --max-tokens 100 --temp 0
fi
exec ./build/release/mxc "$@"
