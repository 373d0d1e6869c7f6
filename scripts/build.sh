#!/usr/bin/env bash
# Configures and builds kvrt (Release) into build/. Extra arguments go to the
# CMake configure step, such as -DKVRT_BUILD_TESTS=OFF.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
jobs=${KVRT_JOBS:-2}
cmake -S . -B build -DCMAKE_BUILD_TYPE=Release "$@"
cmake --build build -j"$jobs"
