#!/usr/bin/env bash
# Runs every check of kvrt, stopping at the first failure:
#   1. setup        install what is missing (scripts/setup.sh)
#   2. release      Release build in build/, all CTest tests
#   3. docs         Doxygen over kvrt.h, any warning fails
#   4. asan         address+undefined sanitizer build in build-asan/, tests not labelled slow
#   5. fuzz         clang libFuzzer build in build-fuzz/, each fuzzer for 60 s on a copy of its corpus
#   6. tsan         thread sanitizer build in build-tsan/, the api and unit tests
#                   (skipped, saying so, when the run is already past KVRT_TSAN_START_LIMIT_S)
# Settings (environment): KVRT_JOBS (2), KVRT_FUZZ_SECONDS (60),
# KVRT_TSAN_START_LIMIT_S (2400), KVRT_SKIP_STAGES (names, space-separated).
set -Eeuo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
ROOT=$PWD
JOBS=${KVRT_JOBS:-2}
FUZZ_SECONDS=${KVRT_FUZZ_SECONDS:-60}
TSAN_START_LIMIT_S=${KVRT_TSAN_START_LIMIT_S:-2400}
SKIP=" ${KVRT_SKIP_STAGES:-} "
LOGS=$ROOT/build-logs
mkdir -p "$LOGS"

current=""
stage_start=0
CTEST_WRAP=()
done_stages=()
n_passed=0

fmt_time() { printf '%dm%02ds' $(($1 / 60)) $(($1 % 60)); }

on_exit() {
  local rc=$?
  if [[ $rc -ne 0 ]]; then
    echo
    echo "test.sh: FAILED in stage '${current}' (exit ${rc}) after $(fmt_time $SECONDS)"
    [[ ${#done_stages[@]} -gt 0 ]] && echo "test.sh: stages passed before it: ${done_stages[*]}"
  fi
}
trap on_exit EXIT

begin() {
  current=$1
  stage_start=$SECONDS
  echo
  echo "================================================================"
  echo "== stage ${current}: $2"
  echo "================================================================"
}

end() {
  local t=$((SECONDS - stage_start))
  echo "== stage ${current} passed in $(fmt_time $t)"
  done_stages+=("${current}($(fmt_time $t))")
}

skipped() { [[ $SKIP == *" $1 "* ]]; }

# Runs ctest in a build folder and adds its passed count to the total.
run_ctest() {
  local dir=$1
  shift
  local log="$LOGS/ctest-$(basename "$dir").log"
  "${CTEST_WRAP[@]}" ctest --test-dir "$dir" --output-on-failure -j"$JOBS" "$@" 2>&1 | tee "$log"
  local line
  line=$(grep -E "tests passed, [0-9]+ tests? failed out of [0-9]+" "$log" | tail -n 1 || true)
  if [[ -z $line ]]; then
    echo "test.sh: ctest in $dir ran no test" >&2
    return 1
  fi
  local total
  total=$(sed -E 's/.* out of ([0-9]+).*/\1/' <<<"$line")
  n_passed=$((n_passed + total))
}

export KVRT_MODEL_DEFAULT=${KVRT_MODEL_DEFAULT:-$ROOT/../shared/models/stories260K.gguf}

# --------------------------------------------------------------------------
begin setup "install missing packages"
bash scripts/setup.sh
end

# --------------------------------------------------------------------------
begin release "Release build and every test"
cmake -S . -B build -DCMAKE_BUILD_TYPE=Release
cmake --build build -j"$JOBS"
run_ctest build
end

# --------------------------------------------------------------------------
if ! skipped docs; then
  begin docs "Doxygen over include/kvrt/kvrt.h (warnings are errors)"
  mkdir -p build/docs
  doxygen docs/Doxyfile
  n_passed=$((n_passed + 1))
  echo "API reference in build/docs/html/index.html"
  end
fi

# --------------------------------------------------------------------------
if ! skipped asan; then
  begin asan "address+undefined sanitizers, tests not labelled slow"
  cmake -S . -B build-asan -DCMAKE_BUILD_TYPE=RelWithDebInfo -DKVRT_SANITIZE=address,undefined
  cmake --build build-asan -j"$JOBS"
  ASAN_OPTIONS=detect_leaks=1:strict_string_checks=1:check_initialization_order=1 \
  UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1 \
    run_ctest build-asan -LE slow
  end
fi

# --------------------------------------------------------------------------
if ! skipped fuzz; then
  begin fuzz "libFuzzer (clang), ${FUZZ_SECONDS} s per fuzzer"
  # The library is instrumented for coverage too, so that the fuzzers see
  # inside it; address+undefined sanitizers catch what they reach.
  CC=clang CXX=clang++ cmake -S . -B build-fuzz -DCMAKE_BUILD_TYPE=RelWithDebInfo \
    -DKVRT_FUZZ=ON -DKVRT_SANITIZE=address,undefined -DKVRT_BUILD_TOOLS=OFF \
    -DCMAKE_C_FLAGS=-fsanitize=fuzzer-no-link -DCMAKE_CXX_FLAGS=-fsanitize=fuzzer-no-link
  shopt -s nullglob
  fuzzers=()
  for src in tests/fuzz/fuzz-*.cpp; do
    fuzzers+=("$(basename "$src" .cpp)")
  done
  if [[ ${#fuzzers[@]} -eq 0 ]]; then
    echo "no fuzz targets in tests/fuzz"
  else
    targets=()
    for f in "${fuzzers[@]}"; do targets+=("$f-fuzzer"); done
    cmake --build build-fuzz -j"$JOBS" --target "${targets[@]}"
    rm -rf build-fuzz/corpus-run build-fuzz/artifacts
    mkdir -p build-fuzz/artifacts
    for f in "${fuzzers[@]}"; do
      short=${f#fuzz-}
      bin=$(find build-fuzz -type f -name "$f-fuzzer" -perm -u+x | head -n 1)
      [[ -n $bin ]] || { echo "fuzzer binary $f-fuzzer not found" >&2; false; }
      # A copy: new inputs go there, never into the committed corpus.
      mkdir -p "build-fuzz/corpus-run/$short"
      if [[ -d tests/fuzz/corpus/$short ]]; then
        cp -R "tests/fuzz/corpus/$short/." "build-fuzz/corpus-run/$short/"
      fi
      log="$LOGS/fuzz-$short.log"
      echo "-- $f: ${FUZZ_SECONDS} s over a copy of tests/fuzz/corpus/$short ($(ls "build-fuzz/corpus-run/$short" | wc -l) inputs)"
      if ! ASAN_OPTIONS=detect_leaks=1 UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1 \
          "$bin" -max_total_time="$FUZZ_SECONDS" -timeout=25 -rss_limit_mb=2048 \
          -print_final_stats=1 -artifact_prefix="build-fuzz/artifacts/$short-" \
          "build-fuzz/corpus-run/$short" >"$log" 2>&1; then
        tail -n 60 "$log"
        echo "$f found a failure; the input is in build-fuzz/artifacts/ (log: $log)" >&2
        false
      fi
      grep -E "stat::number_of_executed_units|stat::peak_rss_mb" "$log" | sed 's/^/   /' || true
      n_passed=$((n_passed + 1))
    done
  fi
  end
fi

# --------------------------------------------------------------------------
if ! skipped tsan; then
  if [[ $SECONDS -gt $TSAN_START_LIMIT_S ]]; then
    echo
    echo "== stage tsan SKIPPED: $(fmt_time $SECONDS) elapsed, past KVRT_TSAN_START_LIMIT_S=${TSAN_START_LIMIT_S}"
  else
    begin tsan "thread sanitizer, tests labelled api and unit"
    cmake -S . -B build-tsan -DCMAKE_BUILD_TYPE=RelWithDebInfo -DKVRT_SANITIZE=thread \
      -DKVRT_BUILD_TOOLS=OFF
    mapfile -t tsan_tests < <(ctest --test-dir build-tsan -N -L '^(api|unit)$' |
      sed -nE 's/^ *Test +#[0-9]+: +([^ ]+).*$/\1/p')
    [[ ${#tsan_tests[@]} -gt 0 ]] || { echo "no api or unit tests found" >&2; false; }
    cmake --build build-tsan -j"$JOBS" --target "${tsan_tests[@]}"
    # Kernels with many random bits of mmap layout upset older TSan runtimes.
    if [[ $(cat /proc/sys/vm/mmap_rnd_bits 2>/dev/null || echo 0) -gt 28 ]] &&
        command -v setarch >/dev/null 2>&1; then
      CTEST_WRAP=(setarch "$(uname -m)" -R)
    fi
    TSAN_OPTIONS=halt_on_error=1:second_deadlock_stack=1 run_ctest build-tsan -L '^(api|unit)$'
    CTEST_WRAP=()
    end
  fi
fi

current=""
echo
echo "================================================================"
echo "test.sh: all stages passed in $(fmt_time $SECONDS): ${done_stages[*]}"
echo "test.sh: ${n_passed} passed, 0 failed"
