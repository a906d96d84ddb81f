#!/usr/bin/env bash
# Dependency audit: fails when a crate in Cargo.lock has a RustSec advisory for a
# vulnerability, unless it is ignored below with its reason.
#
# Runs offline, against the snapshot of the RustSec advisory database in
# vendor/advisory-db (how it is made and refreshed: vendor/advisory-db/README.md).
# Informational advisories (unsound, unmaintained) are printed as warnings and do
# not fail the build.
set -euo pipefail
cd "$(dirname "$0")/.."

CARGO_AUDIT_VERSION=0.22.2
if ! cargo audit --version 2>/dev/null | grep -q " ${CARGO_AUDIT_VERSION}\$"; then
    echo "installing cargo-audit ${CARGO_AUDIT_VERSION} (a few minutes)" >&2
    cargo install --locked --quiet cargo-audit --version "${CARGO_AUDIT_VERSION}"
fi

# A crate the snapshot was not made for is audited against nothing: say so loudly.
uncovered="$(awk -F'"' '/^name = /{n=$2} /^source = "registry/{print n}' Cargo.lock | sort -u \
    | comm -23 - <(sort -u vendor/advisory-db/covered-crates.txt))"
if [ -n "${uncovered}" ]; then
    echo "warning: vendor/advisory-db has no lookup for these crates of Cargo.lock;" \
        "refresh it (vendor/advisory-db/README.md):" ${uncovered} >&2
fi

# cargo-audit opens its database as a git repository: commit a copy of the snapshot
# into a throwaway one.
db="$(mktemp -d)"
trap 'rm -rf "${db}"' EXIT
cp -R vendor/advisory-db/. "${db}/"
git -C "${db}" init --quiet
git -C "${db}" add --all
git -C "${db}" -c user.name=idv-broker-audit -c user.email=audit@localhost \
    -c commit.gpgsign=false commit --quiet --message "advisory-db snapshot"

# Ignored advisories, each with why it does not apply (docs/security.md, "Dependencies"):
#
# RUSTSEC-2023-0071 (rsa, Marvin attack, no fixed release): a timing side channel in
#   RSA decryption and signing with a private key. The broker holds no RSA private key:
#   it only verifies RS256/PS256 signatures with issuers' public keys (keys.rs), which
#   the attack does not concern. Only the `token` subcommand signs with an RSA private
#   key, on the operator's machine, to try the API; no server answers from it.
ignore=(
    --ignore RUSTSEC-2023-0071
)

# --no-yanked: the yanked check asks crates.io; the audit stays offline and repeatable.
cargo audit --db "${db}" --no-fetch --no-yanked "${ignore[@]}"
