#!/usr/bin/env bash
# amqp-5k-modes.sh BROKER LOAD [HARNESS ARGS...]: AMQP 1 KiB transient at a fixed
# 5 000 msg/s for 12 s (one publisher, one consumer, one queue; the harness's arguments
# follow, e.g. --ack-every 1 or --one-connection) on a fresh broker (2 pinned shards, or
# SHARDS=N). Prints which shards worked (ticks per thread), the context switches of all the
# broker's threads per message and its CPU ticks over seconds 3-6, then the harness's
# latency (and confirm latency with --confirm) and CPU per message. PERF_OUT=FILE records
# those 3 s with `perf record -g` into FILE.
# Where the kernel puts the two connections (SO_REUSEPORT) and where the queue's owner is
# decides whether a message crosses shards: one run may keep it on one shard, the next not.
set -u
bin=$1; load=$2; shift 2
. "$(dirname "$0")/../broker.sh"
out=$(mktemp /tmp/am.XXXX)
start_broker "$bin" /tmp/am-broker.log ${SHARDS:+--shards "$SHARDS"}
"$load" amqp --url "amqp://guest:guest@127.0.0.1:25672/%2f" --rate 5000 --duration 12s \
    --message-size 1024 --broker-pid $P "$@" > "$out" 2>&1 &
L=$!
sleep 3
t0=$(cpu_ticks); c0=$(switches)
if [ -n "${PERF_OUT:-}" ]; then
    perf record -F 4000 -g -p $P -o "$PERF_OUT" -- sleep 3 > /dev/null 2>&1
else
    sleep 3
fi
t1=$(cpu_ticks); c1=$(switches)
busy=$(shard_ticks)
wait $L; stop_broker
echo "threads(ticks) $busy| switches/msg $(awk -v a="$c0" -v b="$c1" 'BEGIN {printf "%.2f", (b-a)/15000}') | ticks 3-6 s: $((t1-t0)) | $(grep -E 'latency|^ *ack|broker CPU' "$out" | sed 's/(60000 samples)//' | tr -s ' ' | tr '\n' ' ')"
rm -f "$out"
