#!/usr/bin/env bash
# kafka-full.sh BROKER LOAD LABEL: Kafka 1 KiB acks=all, 6 partitions, 2 000 000 messages at
# full speed on a fresh data dir (default config: 2 pinned shards); prints msg/s and the
# broker's CPU per message (the harness reads /proc/PID/stat with --broker-pid).
set -u
bin=$1; load=$2; label=$3
d=$(mktemp -d /tmp/kf.XXXX)
"$bin" --data-dir "$d" --kafka-addr 127.0.0.1:29092 --amqp-addr 127.0.0.1:25672 \
    --http-addr 127.0.0.1:28080 > "/tmp/kf-$label.log" 2>&1 & P=$!
for _ in $(seq 1 100); do curl -sf http://127.0.0.1:28080/health/ready >/dev/null && break; sleep 0.1; done
"$load" kafka --brokers 127.0.0.1:29092 --acks all --partitions 6 --messages 2000000 \
    --duration 30s --message-size 1024 --broker-pid $P > "/tmp/kf-$label.txt" 2>&1
kill $P; wait $P; rm -rf "$d"
echo "$label: $(grep -E 'produce|broker CPU' "/tmp/kf-$label.txt" | tr -s ' ' | tr '\n' ' ')"
