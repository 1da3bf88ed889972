#!/usr/bin/env bash
# kafka-full.sh BROKER LOAD LABEL: Kafka 1 KiB acks=all, 6 partitions, 2 000 000 messages at
# full speed on a fresh data dir (default config: 2 pinned shards); prints msg/s and the
# broker's CPU per message (the harness reads /proc/PID/stat with --broker-pid).
set -u
bin=$1; load=$2; label=$3
. "$(dirname "$0")/../broker.sh"
start_broker "$bin" "/tmp/kf-$label.log"
"$load" kafka --brokers 127.0.0.1:29092 --acks all --partitions 6 --messages 2000000 \
    --duration 30s --message-size 1024 --broker-pid $P > "/tmp/kf-$label.txt" 2>&1
stop_broker
echo "$label: $(grep -E 'produce|broker CPU' "/tmp/kf-$label.txt" | tr -s ' ' | tr '\n' ' ')"
