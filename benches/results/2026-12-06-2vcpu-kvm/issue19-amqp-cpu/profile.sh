#!/usr/bin/env bash
# profile.sh BROKER LOAD LABEL SIZE: AMQP transient, one publisher and one consumer (prefetch
# 1000), SIZE-byte messages at full speed on a fresh broker, with `perf record --call-graph
# dwarf` attached for 4 s from the third second; writes /tmp/ap-LABEL.data. Then, e.g.:
#   perf report -i /tmp/ap-LABEL.data --no-children --sort symbol --stdio
set -u
bin=$1; load=$2; label=$3; size=$4
. "$(dirname "$0")/../broker.sh"
start_broker "$bin" "/tmp/ap-$label.log"
"$load" amqp --url "amqp://guest:guest@127.0.0.1:25672/%2f" --messages 3000000 \
    --duration 12s --message-size "$size" --broker-pid $P --prefetch 1000 > "/tmp/ap-$label.txt" 2>&1 &
L=$!
sleep 3
perf record -F ${FREQ:-499} --call-graph dwarf,16384 -p $P -o "/tmp/ap-$label.data" -- sleep 4 > /dev/null 2>&1
wait $L
stop_broker
