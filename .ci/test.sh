#!/usr/bin/env bash
# The whole test suite, in the order CI runs it: the README's test command is
# `bash .ci/test.sh`, and `.ci/run` runs exactly that.
#
# It starts PostgreSQL and NATS of its own (scripts/services.sh, in a directory of this
# run: engines that others on the machine use are never touched) for the API suite on
# PostgreSQL and for the cluster tests, and stops them at the end, on failure too.
set -euo pipefail
cd "$(dirname "$0")/.."

export IDVB_SERVICES_DIR="${TMPDIR:-/tmp}/idvb-ci-services.$$"
trap 'scripts/services.sh stop || true' EXIT
# Exports IDVB_TEST_PG and IDVB_TEST_NATS for every step below, and the TLS role and
# CA of that PostgreSQL (IDVB_TEST_PG_CA, IDVB_TEST_PG_TLS_USER/_PASSWORD) for tests/cluster/tls.rs.
eval "$(scripts/services.sh start)"

bash .ci/check-vendored.sh
python3 .ci/module-cycles.py
cargo fmt --all -- --check
cargo clippy --workspace --all-targets -- -D warnings
# Every crate's tests; the root package's include the `api` suite on SQLite and the
# `cluster` suite (three real nodes on PostgreSQL + NATS).
cargo test --workspace
# The same `api` suite again, each test's broker on PostgreSQL + NATS.
IDVB_TEST_STORE=postgres cargo test --test api
bash .ci/schemathesis.sh
bash tests/e2e/run.sh
bash .ci/audit.sh
