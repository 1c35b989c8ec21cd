#!/bin/sh
# fuzz-smoke.sh — build the libFuzzer targets with clang and run each one for a
# fixed number of iterations from its seed corpus (CI's smoke mode).
#
#   scripts/fuzz-smoke.sh                       # every fuzz/fuzz_*.c target
#   scripts/fuzz-smoke.sh fuzz_gguf fuzz_npz    # some of them
#
# Environment:
#   FUZZ_RUNS   iterations per target (default 20000)
#   BUILD_DIR   build directory (default build/fuzz in the repository)
#   JOBS        parallel build jobs (default 2)
#
# The whole library is compiled by clang with coverage instrumentation
# (-fsanitize=fuzzer-no-link) plus ASan and UBSan, so the fuzzer sees inside
# the parsers. Corpus of fuzz_X: fuzz/corpus/X/ (or fuzz/corpus/fuzz_X/). The
# seed corpus is copied to a scratch directory so the run never writes into
# the repository. A crash, leak, sanitizer report or timeout fails the script;
# the reproducer is left in $BUILD_DIR/artifacts/. Longer runs: docs/fuzzing.md.
# (-Wno-unknown-warning-option: clang 14 does not know gcc's -Wshadow=local.)
set -eu

ROOT=$(cd "$(dirname "$0")/.." && pwd)
RUNS=${FUZZ_RUNS:-20000}
BUILD=${BUILD_DIR:-$ROOT/build/fuzz}
JOBS=${JOBS:-2}

command -v clang >/dev/null || { echo "fuzz-smoke: clang not found" >&2; exit 2; }

CC=clang cmake -S "$ROOT" -B "$BUILD" -DMXC_FUZZ=ON -DMXC_NATIVE=ON -DMXC_CUDA=OFF \
  -DCMAKE_BUILD_TYPE=RelWithDebInfo -DMXC_BUILD_TESTS=OFF -DMXC_BUILD_BENCH=OFF \
  -DCMAKE_C_FLAGS="-fsanitize=fuzzer-no-link,address,undefined -fno-sanitize-recover=all -fno-omit-frame-pointer -Wno-unknown-warning-option" \
  >"$BUILD.cmake.log" 2>&1 || { cat "$BUILD.cmake.log" >&2; exit 1; }

if [ $# -gt 0 ]; then
  TARGETS="$*"
else
  TARGETS=$(cd "$ROOT/fuzz" && ls fuzz_*.c | sed 's/\.c$//')
fi
# shellcheck disable=SC2086
cmake --build "$BUILD" -j"$JOBS" --target $TARGETS

mkdir -p "$BUILD/artifacts"
status=0
for t in $TARGETS; do
  name=${t#fuzz_}
  seeds="$ROOT/fuzz/corpus/$name"
  [ -d "$seeds" ] || seeds="$ROOT/fuzz/corpus/$t"
  work="$BUILD/corpus-$t"
  rm -rf "$work"
  mkdir -p "$work"
  [ -d "$seeds" ] && cp "$seeds"/* "$work"/ 2>/dev/null || true
  rss=2048
  # this target loads the real Llama 3 / Qwen 3 tokenizers under ASan
  [ "$t" = fuzz_tokenizer_encode ] && rss=6000
  echo "== $t: $RUNS runs (seeds: $seeds)"
  if ASAN_OPTIONS=detect_leaks=1:allocator_may_return_null=1 \
     UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1 \
     "$BUILD/$t" -runs="$RUNS" -max_len=65536 -timeout=10 -rss_limit_mb="$rss" \
       -malloc_limit_mb=1024 -print_final_stats=1 \
       -artifact_prefix="$BUILD/artifacts/$t-" "$work" >"$BUILD/$t.log" 2>&1; then
    grep -E "^(Done|stat::number_of_executed_units)" "$BUILD/$t.log" | head -2
  else
    echo "fuzz-smoke: $t FAILED (log: $BUILD/$t.log)" >&2
    tail -40 "$BUILD/$t.log" >&2
    status=1
  fi
done
exit $status
