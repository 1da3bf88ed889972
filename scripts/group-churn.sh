#!/usr/bin/env bash
# The issue-13 repro workload, run many times against the release broker: an idempotent
# producer writes 30 000 keyed records to a 6-partition topic while 3 librdkafka consumers
# (cooperative-sticky) join one group, consume and commit (tests/group_churn.rs, ignored by
# default). Prints one line per run and "group churn: N of M runs passed".
set -euo pipefail

PROG=${0##*/}
ROOT=$(cd "$(dirname "$0")/.." && pwd)
TARGET_DIR=${CARGO_TARGET_DIR:-$ROOT/target}
RUNS=50
BIN=""

usage() {
    cat <<USAGE
Usage: $PROG [--runs N] [--binary PATH]

Builds the release broker (unless --binary names one) and runs the issue-13 consumer-group
workload N times (default $RUNS), each on a fresh broker with two shards on free ports:
an idempotent producer writes 30 000 keyed records to a 6-partition topic while three
cooperative-sticky consumers join one group, consume and commit. A run fails when the
broker exits, logs a panic or a glibc "double free", or not every record is consumed.
Exits non-zero when any run failed.

  --runs N        how many runs (default $RUNS)
  --binary PATH   the broker to test (default: $TARGET_DIR/release/portask, built first)
  -h, --help      this text
USAGE
}

while [ $# -gt 0 ]; do
    case "$1" in
        --runs) RUNS=${2:?--runs needs a number}; shift 2 ;;
        --binary) BIN=${2:?--binary needs a path}; shift 2 ;;
        -h|--help) usage; exit 0 ;;
        *) echo "$PROG: unknown option $1" >&2; usage >&2; exit 2 ;;
    esac
done

cd "$ROOT"
if [ -z "$BIN" ]; then
    cargo build --release --bin portask
    BIN=$TARGET_DIR/release/portask
fi
echo "$PROG: $RUNS runs against $BIN"
BROKER_UNDER_TEST=$BIN GROUP_CHURN_RUNS=$RUNS \
    cargo test --test group_churn -- --ignored --nocapture --test-threads 1
