#!/usr/bin/env bash
# Browser end-to-end tests: Debian's Chromium driven by playwright-core (no browser
# download), each test against its own `idv-broker --demo`. Works from any directory.
#   bash tests/e2e/run.sh            # all journeys
#   bash tests/e2e/run.sh --test-name-pattern=deny
# Screenshots and broker logs land in tests/e2e/artifacts/ (not committed).
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(cd "$here/../.." && pwd)"

if [ ! -x /usr/bin/chromium ]; then
  echo "e2e: installing Debian's chromium" >&2
  sudo=""
  if [ "$(id -u)" -ne 0 ]; then sudo="sudo"; fi
  export DEBIAN_FRONTEND=noninteractive
  $sudo apt-get update
  $sudo apt-get install -y chromium
fi

cd "$here"
npm ci --no-audit --no-fund

cd "$root"
cargo build --bin idv-broker
export IDV_BROKER_BIN="${CARGO_TARGET_DIR:-$root/target}/debug/idv-broker"

cd "$here"
rm -rf artifacts
mkdir -p artifacts
node --test --test-concurrency=1 --test-reporter=spec "$@" ./*.test.mjs
