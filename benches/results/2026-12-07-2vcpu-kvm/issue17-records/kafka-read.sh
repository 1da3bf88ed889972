#!/usr/bin/env bash
# kafka-read.sh BROKER LOAD LABEL SIZE MSGS: a fresh broker; a one-partition topic pre-filled
# with MSGS SIZE-byte records (acks=all), then read back by one Kafka consumer (the load
# harness's rdkafka consumer, as scripts/compare.sh runs the stream read-back's Kafka row).
# Prints the produce and consume rates and the broker CPU per message read.
set -u
bin=$1; load=$2; label=$3; size=$4; msgs=$5
. "$(dirname "$0")/../../2026-12-06-2vcpu-kvm/broker.sh"
start_broker "$bin" "/tmp/kr-$label.log"
"$load" kafka --brokers 127.0.0.1:29092 --messages "$msgs" --prefill --drain-timeout 30s \
   --message-size "$size" --acks all --partitions 1 --broker-pid $P > "/tmp/kr-$label.txt" 2>&1
echo "$label $(grep -E 'msg/s|µs' /tmp/kr-$label.txt | tr -s ' ' | tr '\n' ' ')"
stop_broker
