#!/usr/bin/env bash
# Installs the Debian packages imgate needs to build, test and run.
# Idempotent: packages already installed are skipped, and apt is not touched
# at all when nothing is missing. Run as root (or with sudo available).
set -euo pipefail

packages=(
  build-essential cmake pkg-config
  node-llhttp         # HTTP/1.1 parser (llhttp's C sources, built into imgate)
  libcurl4-openssl-dev # outgoing HTTP (upstreams, fetches, webhooks)
  libsqlite3-dev      # embedded store
  libpq-dev           # PostgreSQL store
  libjansson-dev      # JSON
  libssl-dev          # hashing, randomness, HMAC
  libpng-dev zlib1g-dev # PNG output of the simulated provider
  libcmocka-dev       # unit tests
  python3             # end-to-end test driver (standard library only)
  curl file           # README walkthrough
)
# `deps.sh --bench` adds the load generators the benchmarks under bench/ use;
# `deps.sh --fuzz` clang and its libFuzzer runtime (libclang_rt.fuzzer, in
# libclang-rt-dev) for the fuzz targets under tests/fuzz/.
for arg in "$@"; do
  case "$arg" in
  --bench) packages+=(wrk) ;;
  --fuzz) packages+=(clang libclang-rt-dev) ;;
  *) echo "deps: unknown option $arg" >&2; exit 2 ;;
  esac
done

missing=()
for p in "${packages[@]}"; do
  if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed'; then
    missing+=("$p")
  fi
done

if [ ${#missing[@]} -eq 0 ]; then
  exit 0
fi

echo "deps: installing ${missing[*]}" >&2
SUDO=""
if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq
$SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
echo "deps: done" >&2
