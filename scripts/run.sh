#!/usr/bin/env bash
# Sets up the machine, builds kvrt, and generates 128 tokens from the default
# model (../shared/models/stories260K.gguf beside the project, or
# $KVRT_MODEL); the tool prints its speed (tokens/s) on stderr. Extra
# arguments go to `kvrt run`, such as --temp 0 or --kv f32.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
bash scripts/setup.sh
bash scripts/build.sh
exec build/bin/kvrt run -p "Once upon a time" -n 128 "$@"
