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

# nginx for the journeys through a reverse proxy (origins.test.mjs). Debian's package
# would start a root nginx on port 80 at install: a policy-rc.d keeps it from starting
# services (only if the machine has none of its own, and only for that install). The
# test runs its own nginx on loopback, with a temporary prefix, in the foreground.
if [ ! -x /usr/sbin/nginx ]; then
  echo "e2e: installing Debian's nginx" >&2
  sudo=""
  if [ "$(id -u)" -ne 0 ]; then sudo="sudo"; fi
  export DEBIAN_FRONTEND=noninteractive
  policy=""
  if [ ! -e /usr/sbin/policy-rc.d ]; then
    policy=/usr/sbin/policy-rc.d
    printf '#!/bin/sh\nexit 101\n' | $sudo tee "$policy" >/dev/null
    $sudo chmod 755 "$policy"
  fi
  installed=0
  $sudo apt-get update && $sudo apt-get install -y nginx-light || installed=$?
  if [ -n "$policy" ]; then $sudo rm -f "$policy"; fi
  if [ "$installed" -ne 0 ]; then exit "$installed"; fi
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
