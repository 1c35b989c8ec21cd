#!/bin/sh
# Build and run every test: a release build, then the same suite under
# AddressSanitizer + UndefinedBehaviorSanitizer (leak checking on), then a
# short libFuzzer smoke run of every fuzz target. Installs missing Debian
# packages first. Ends with "N passed, N failed".
#
#   ./scripts/test.sh            # everything
#   MXC_TEST_QUICK=1 ./scripts/test.sh   # release build only
#   MXC_FUZZ_SECONDS=600 ./scripts/test.sh   # longer fuzzing
set -eu
cd "$(dirname "$0")/.."
sh scripts/deps.sh
JOBS=$(nproc 2>/dev/null || echo 2)
LOG=$(mktemp)
trap 'rm -f "$LOG"' EXIT
status=0

run_suite() { # name build-dir cmake-args...
  name=$1; dir=$2; shift 2
  echo "== $name: configure and build"
  cmake -S . -B "$dir" "$@" >/dev/null
  cmake --build "$dir" -j"$JOBS" >/dev/null 2>"$dir.build.log" || { cat "$dir.build.log"; exit 1; }
  echo "== $name: ctest"
  if ctest --test-dir "$dir" --output-on-failure -j"$JOBS" --timeout 900 | tee -a "$LOG"; then :; else status=1; fi
}

run_suite release build/release -DCMAKE_BUILD_TYPE=Release
if [ "${MXC_TEST_QUICK:-0}" != 1 ]; then
  ASAN_OPTIONS=detect_leaks=1:abort_on_error=1 UBSAN_OPTIONS=print_stacktrace=1 \
    run_suite sanitizers build/asan -DCMAKE_BUILD_TYPE=Debug -DMXC_SANITIZE=ON -DMXC_BUILD_BENCH=OFF
  if [ -x scripts/fuzz-smoke.sh ] || [ -f scripts/fuzz-smoke.sh ]; then
    echo "== fuzz smoke"
    if sh scripts/fuzz-smoke.sh; then echo "fuzz smoke: 1 passed" >>"$LOG"; else echo "fuzz smoke: 1 failed" >>"$LOG"; status=1; fi
  fi
fi

# One closing line over all suites.
passed=$(grep -Eo '[0-9]+ tests failed out of [0-9]+' "$LOG" | awk '{f+=$1; t+=$6} END {print t-f+0}')
failed=$(grep -Eo '[0-9]+ tests failed out of [0-9]+' "$LOG" | awk '{f+=$1} END {print f+0}')
fz_pass=$(grep -c 'fuzz smoke: 1 passed' "$LOG" || true)
fz_fail=$(grep -c 'fuzz smoke: 1 failed' "$LOG" || true)
passed=$((passed + fz_pass)); failed=$((failed + fz_fail))
echo "$passed passed, $failed failed"
[ "$failed" = 0 ] && [ "$status" = 0 ]
