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
# No test hook ships (STYLE): the binary built as a release build is (no dev-dependencies,
# so without idv-actors' `fault-injection` feature) holds none of the fault-injection
# code. After the tests, whose build of the same binary has the hooks, the same probe
# must find them: so it is known to look for the right thing.
bin="${CARGO_TARGET_DIR:-target}/debug/idv-broker"
cargo build --bin idv-broker
if grep -q "injected fault" "$bin"; then
    echo "test.sh: the broker built without dev-dependencies holds fault-injection code" >&2
    exit 1
fi
# Every crate's tests; the root package's include the `api` suite on SQLite and the
# `cluster` suite (three real nodes on PostgreSQL + NATS).
cargo test --workspace
if ! grep -q "injected fault" "$bin"; then
    echo "test.sh: the test build of the broker lacks its fault hooks: the probe above looks for the wrong thing" >&2
    exit 1
fi
# The same `api` suite again, each test's broker on PostgreSQL + NATS.
IDVB_TEST_STORE=postgres cargo test --test api
bash .ci/schemathesis.sh
bash tests/e2e/run.sh
bash .ci/audit.sh
