#!/usr/bin/env bash
# profile.sh BROKER LOAD LABEL SIZE: AMQP transient, one publisher and one consumer (prefetch
# 1000), SIZE-byte messages at full speed on a fresh broker, with `perf record --call-graph
# dwarf` attached for SECS (4) s from the WAIT-th (3rd) second; MSGS messages (3 000 000).
# Writes /tmp/ap-LABEL.data. Then, e.g.:
#   perf report -i /tmp/ap-LABEL.data --no-children --sort symbol --stdio
set -u
bin=$1; load=$2; label=$3; size=$4
. "$(dirname "$0")/../broker.sh"
start_broker "$bin" "/tmp/ap-$label.log"
"$load" amqp --url "amqp://guest:guest@127.0.0.1:25672/%2f" --messages "${MSGS:-3000000}" \
    --duration 12s --message-size "$size" --broker-pid $P --prefetch 1000 ${EXTRA:-} > "/tmp/ap-$label.txt" 2>&1 &
L=$!
sleep "${WAIT:-3}"
perf record -F ${FREQ:-499} --call-graph dwarf,16384 -p $P -o "/tmp/ap-$label.data" -- sleep "${SECS:-4}" > /dev/null 2>&1
wait $L
stop_broker
