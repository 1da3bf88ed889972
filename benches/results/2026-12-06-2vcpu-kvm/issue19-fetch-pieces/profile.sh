#!/usr/bin/env bash
# profile.sh BROKER LOAD LABEL: Kafka 1 KiB acks=all, 6 partitions, 3 000 000 messages at full
# speed on a fresh broker, with `perf record --call-graph dwarf` attached for 4 s from the
# third second; writes /tmp/kp-LABEL.data. Then, e.g.:
#   perf report -i /tmp/kp-LABEL.data --no-children --sort symbol --stdio \
#       -G -S __memmove_avx512_unaligned_erms
set -u
bin=$1; load=$2; label=$3
. "$(dirname "$0")/../broker.sh"
start_broker "$bin" "/tmp/kp-$label.log"
"$load" kafka --brokers 127.0.0.1:29092 --acks all --partitions 6 --messages 3000000 \
    --duration 30s --message-size 1024 --broker-pid $P > "/tmp/kp-$label.txt" 2>&1 &
L=$!
sleep 3
perf record -F 499 --call-graph dwarf,16384 -p $P -o "/tmp/kp-$label.data" -- sleep 4 > /dev/null 2>&1
wait $L
stop_broker
