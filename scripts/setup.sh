#!/usr/bin/env bash
# Installs what building and testing kvrt needs, from Debian packages, and
# only what is missing (so a second run installs nothing). Works as root, or
# through sudo otherwise.
set -euo pipefail

log() { printf 'setup: %s\n' "$*"; }

if [[ $(id -u) -eq 0 ]]; then
  SUDO=()
elif command -v sudo >/dev/null 2>&1; then
  SUDO=(sudo)
else
  SUDO=()
fi

is_installed() {
  dpkg-query -W -f='${Status}' "$1" 2>/dev/null | grep -q "install ok installed"
}

updated=0
apt_update_once() {
  if [[ $(id -u) -ne 0 && ${#SUDO[@]} -eq 0 ]]; then
    log "packages are missing -- run this script as root or install sudo" >&2
    exit 1
  fi
  if [[ $updated -eq 0 ]]; then
    log "apt-get update"
    "${SUDO[@]}" env DEBIAN_FRONTEND=noninteractive apt-get update -qq
    updated=1
  fi
}
apt_install() {
  apt_update_once
  log "installing: $*"
  "${SUDO[@]}" env DEBIAN_FRONTEND=noninteractive \
    apt-get install -y -qq --no-install-recommends "$@"
}

# Build tools and libraries: cmake, compilers, pkg-config, zstd, CMocka
# (tests), Doxygen (API docs), clang (libFuzzer builds), binutils (ABI
# checks: nm, objdump).
wanted=(cmake g++ make pkg-config libzstd-dev libcmocka-dev doxygen clang binutils)
missing=()
for p in "${wanted[@]}"; do
  is_installed "$p" || missing+=("$p")
done
if [[ ${#missing[@]} -gt 0 ]]; then
  apt_install "${missing[@]}"
fi

# libFuzzer's runtime ships in libclang-rt-<version>-dev for the clang in use.
fuzzer_runtime_present() {
  local dir
  dir=$(clang --print-runtime-dir 2>/dev/null || true)
  compgen -G "${dir:-/nonexistent}/libclang_rt.fuzzer*.a" >/dev/null 2>&1 ||
    compgen -G "/usr/lib/llvm-*/lib/clang/*/lib/linux/libclang_rt.fuzzer-*.a" >/dev/null 2>&1
}
if ! fuzzer_runtime_present; then
  ver=$(clang --version | sed -n 's/.*clang version \([0-9][0-9]*\).*/\1/p' | head -n 1)
  pkg="libclang-rt-${ver}-dev"
  apt_update_once
  if [[ -n $ver ]] && apt-cache show "$pkg" >/dev/null 2>&1; then
    apt_install "$pkg"
  else
    apt_install libclang-rt-dev
  fi
  fuzzer_runtime_present || { log "no libFuzzer runtime after installing $pkg" >&2; exit 1; }
fi

if [[ $updated -eq 0 ]]; then
  log "everything needed is installed"
fi
