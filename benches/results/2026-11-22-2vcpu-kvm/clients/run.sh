#!/usr/bin/env bash
# The client-settings runs behind section 6 of tuning/README.md: one release Portask
# (defaults: one shard per core, pinned) on loopback, the load harness against it with one
# client setting changed per run. Writes <n>-<name>.json and .log here, and table.md.
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
ROOT=$(cd "$HERE/../../../.." && pwd)
TARGET=${CARGO_TARGET_DIR:-$ROOT/target}
cd "$ROOT"
cargo build --release --bin portask
LOAD=$(cargo bench --bench load --no-run --message-format=json 2>/dev/null |
    grep -o '"executable":"[^"]*"' | tail -1 | cut -d'"' -f4)
DATA=$(mktemp -d)
trap 'kill "$PID" 2>/dev/null || true; wait "$PID" 2>/dev/null || true; rm -rf "$DATA"' EXIT
"$TARGET/release/portask" --data-dir "$DATA" --kafka-addr 127.0.0.1:29492 \
    --amqp-addr 127.0.0.1:25972 --http-addr 127.0.0.1:28480 >"$HERE/portask.log" 2>&1 &
PID=$!
sleep 3
K=(kafka --brokers 127.0.0.1:29492 --messages 1000000 --duration 15s --partitions 1 --acks 1)
A=(amqp --url amqp://guest:guest@127.0.0.1:25972/%2f --messages 200000 --duration 15s
    --message-size 1024 --persistent --confirm)
n=0
run() {
    local name=$1
    shift
    n=$((n + 1))
    echo "$(date -u +%H:%M:%S) load $(cut -d' ' -f1-3 /proc/loadavg): $name: $*" | tee -a "$HERE/runs.txt"
    "$LOAD" "$@" --scenario "$name" --target portask --json "$HERE/$n-$name.json" >"$HERE/$n-$name.log" 2>&1
}
run amqp-1KiB-confirm-window-1 "${A[@]}" --max-unconfirmed 1
run amqp-1KiB-confirm-window-1000 "${A[@]}" --max-unconfirmed 1000
run kafka-1KiB-linger-0 "${K[@]}" --message-size 1024 -P linger.ms=0
run kafka-1KiB-linger-5 "${K[@]}" --message-size 1024 -P linger.ms=5
run kafka-1KiB-linger-50 "${K[@]}" --message-size 1024 -P linger.ms=50
run kafka-16B-linger-0 "${K[@]}" --message-size 16 -P linger.ms=0
run kafka-16B-linger-5 "${K[@]}" --message-size 16 -P linger.ms=5
"$LOAD" report "$HERE"/[0-9]*-*.json --markdown "$HERE/table.md" \
    --meta "portask=$(git rev-parse --short HEAD)" --meta "load_average_end=$(cut -d' ' -f1-3 /proc/loadavg)"
