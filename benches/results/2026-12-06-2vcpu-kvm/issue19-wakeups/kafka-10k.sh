#!/usr/bin/env bash
# kafka-10k.sh BROKER LOAD: Kafka 1 KiB acks=all at a fixed 10 000 msg/s for 12 s, one
# partition, linger.ms=0, on a fresh broker (2 pinned shards). Prints which shards worked
# (ticks per thread), the context switches of all the broker's threads per message over
# seconds 3-6, the broker's fdatasync count and mean, then the harness's ack and e2e latency
# and CPU per message.
set -u
bin=$1; load=$2
. "$(dirname "$0")/../broker.sh"
start_broker "$bin" /tmp/kf-broker.log
"$load" kafka --brokers 127.0.0.1:29092 --rate 10000 --duration 12s --message-size 1024 \
    --acks all --partitions 1 -P linger.ms=0 --broker-pid $P > /tmp/kf.txt 2>&1 &
L=$!
sleep 3
c0=$(switches)
sleep 3
c1=$(switches)
busy=$(shard_ticks)
wait $L
fsync=$(curl -s http://127.0.0.1:28080/metrics | awk '/^portask_storage_fsync_duration_seconds_count/ {c+=$2} /^portask_storage_fsync_duration_seconds_sum/ {s+=$2} END {if (c > 0) printf "%d syncs, mean %.0f us", c, s/c*1e6}')
stop_broker
echo "threads(ticks) $busy| switches/msg $(awk -v a="$c0" -v b="$c1" 'BEGIN {printf "%.2f", (b-a)/30000}') | $fsync | $(grep -E '^ *(ack|latency|broker CPU)' /tmp/kf.txt | tr -s ' ' | tr '\n' ' ')"
