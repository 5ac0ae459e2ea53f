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
  libxml2-dev         # S3's XML answers
  libpng-dev zlib1g-dev # PNG output of the simulated provider
  libvips-dev         # output formats: decoding and encoding PNG, JPEG, WebP
  libcmocka-dev       # unit tests
  python3             # end-to-end test driver (standard library only)
  curl file           # README walkthrough
)
# `deps.sh --bench` adds the load generators and the receiver the benchmarks
# under bench/ use (wrk, nginx), and Node.js with bench/portkey's lock file
# (Portkey's open-source gateway, which bench/peers measures imgate against);
# `deps.sh --fuzz` clang and its libFuzzer runtime (libclang_rt.fuzzer, in
# libclang-rt-dev) for the fuzz targets under tests/fuzz/;
# `deps.sh --test` Node.js and npm (Debian's, unless a node and an npm are
# there already) and the npm packages the tests use, from their lock files:
# tests/webhook (the reference webhook verifier) and tests/sdk (the client
# SDKs).
want_test_modules=false
want_bench_modules=false
for arg in "$@"; do
  case "$arg" in
  --bench)
    packages+=(wrk nginx-light)
    want_bench_modules=true
    if ! command -v node >/dev/null || ! command -v npm >/dev/null; then
      packages+=(nodejs npm)
    fi
    ;;
  --fuzz) packages+=(clang libclang-rt-dev) ;;
  --test)
    want_test_modules=true
    if ! command -v node >/dev/null || ! command -v npm >/dev/null; then
      packages+=(nodejs npm)
    fi
    ;;
  *) echo "deps: unknown option $arg" >&2; exit 2 ;;
  esac
done

# Each npm folder's node_modules holds exactly what its lock file names, or
# npm ci (re)installs it: without install scripts, without dev dependencies.
# tests/webhook: the reference webhook verifier; tests/sdk: the unmodified
# client SDKs the dialect tests drive (openai, @google/genai); bench/portkey:
# the gateway bench/peers compares with.
npm_modules() {
  local root dir
  root="$(cd "$(dirname "$0")/.." && pwd)"
  for dir in "$@"; do
    dir="$root/$dir"
    if node -e '
      const dir = process.argv[1];
      const lock = require(dir + "/package-lock.json");
      for (const [path, entry] of Object.entries(lock.packages)) {
        if (path && require(dir + "/" + path + "/package.json").version !== entry.version)
          process.exit(1);
      }' "$dir" 2>/dev/null; then
      continue
    fi
    echo "deps: installing the npm packages of ${dir#"$root"/}" >&2
    (cd "$dir" && npm ci --omit=dev --ignore-scripts --no-audit --no-fund --loglevel=error >&2)
  done
}

missing=()
for p in "${packages[@]}"; do
  if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed'; then
    missing+=("$p")
  fi
done

if [ ${#missing[@]} -gt 0 ]; then
  echo "deps: installing ${missing[*]}" >&2
  SUDO=""
  if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi
  export DEBIAN_FRONTEND=noninteractive
  $SUDO apt-get update -qq
  $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  echo "deps: done" >&2
fi

if $want_test_modules; then
  npm_modules tests/webhook tests/sdk
  # The S3 tests run moto's server (tests/fakes/moto_s3.py). moto is no Debian
  # package: it comes with the Python this machine image ships (moto 5.2.1,
  # boto3), so there is nothing to install here, only to check.
  if ! python3 -c 'import moto, boto3' 2>/dev/null; then
    echo "deps: python3 ($(command -v python3)) cannot import moto and boto3: the S3 tests" \
      "(tests/e2e/test_s3_client.py) will fail; see docs/testing.md" >&2
  fi
fi
if $want_bench_modules; then
  npm_modules bench/portkey
fi
