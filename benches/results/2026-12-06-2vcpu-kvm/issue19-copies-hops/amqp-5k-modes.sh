#!/usr/bin/env bash
# amqp-5k-modes.sh BROKER LOAD [HARNESS ARGS...]: AMQP 1 KiB transient at a fixed
# 5 000 msg/s for 12 s (one publisher, one consumer, one queue; the harness's arguments
# follow, e.g. --ack-every 1) on a fresh broker (2 pinned shards). Prints which
# shards worked (ticks per thread), the context switches of all the broker's threads per
# message and its CPU ticks over seconds 3-6, then the harness's latency (and confirm
# latency with --confirm) and CPU per message.
# Where the kernel puts the two connections (SO_REUSEPORT) and where the queue's owner is
# decides whether a message crosses shards: one run may keep it on one shard, the next not.
set -u
bin=$1; load=$2; shift 2
d=$(mktemp -d /tmp/am.XXXX)
"$bin" --data-dir "$d" --kafka-addr 127.0.0.1:29092 --amqp-addr 127.0.0.1:25672 \
    --http-addr 127.0.0.1:28080 > /tmp/am-broker.log 2>&1 & P=$!
for _ in $(seq 1 100); do curl -sf http://127.0.0.1:28080/health/ready >/dev/null && break; sleep 0.1; done
"$load" amqp --url "amqp://guest:guest@127.0.0.1:25672/%2f" --rate 5000 --duration 12s \
    --message-size 1024 --broker-pid $P "$@" > /tmp/am.txt 2>&1 &
L=$!
cs() { cat /proc/$P/task/*/status | awk '/voluntary_ctxt_switches/ {s+=$2} END {print s}'; }
sleep 3
t0=$(awk '{print $14+$15}' /proc/$P/stat); c0=$(cs)
sleep 3
t1=$(awk '{print $14+$15}' /proc/$P/stat); c1=$(cs)
busy=$(for t in /proc/"$P"/task/*; do echo "$(cat "$t"/comm)=$(awk '{print $14+$15}' "$t"/stat)"; done | grep shard | tr '\n' ' ')
wait $L; kill $P; wait $P; rm -rf "$d"
echo "threads(ticks) $busy| switches/msg $(awk -v a="$c0" -v b="$c1" 'BEGIN {printf "%.2f", (b-a)/15000}') | ticks 3-6 s: $((t1-t0)) | $(grep -E 'latency|^ *ack|broker CPU' /tmp/am.txt | sed 's/(60000 samples)//' | tr -s ' ' | tr '\n' ' ')"
