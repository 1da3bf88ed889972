#!/usr/bin/env bash
# stream-read.sh BROKER LOAD LABEL SIZE MSGS: a fresh broker; a stream pre-filled with MSGS
# SIZE-byte messages (confirms), then read back by one AMQP consumer (prefetch 1000,
# x-stream-offset first). PERF=0: prints the consume rate, the broker CPU per message read
# and the shard threads' ticks at the read's start and end; PERF=1 (default): records the
# broker with perf (dwarf call graphs) for SECS s from half a second into the read.
set -u
bin=$1; load=$2; label=$3; size=$4; msgs=$5
. "$(dirname "$0")/../../2026-12-06-2vcpu-kvm/broker.sh"
start_broker "$bin" "/tmp/sr-$label.log"
if [[ ${PERF:-1} == 1 ]]; then
( for _ in $(seq 1 600); do
    curl -s http://127.0.0.1:28080/metrics | grep -E '^portask_queue_consumers.* [1-9]' -q && break
    sleep 0.1
  done
  sleep 0.5
  exec perf record -F ${FREQ:-499} --call-graph dwarf,16384 -p $P -o "/tmp/sr-$label.data" -- sleep ${SECS:-5} > /dev/null 2>&1 ) &
PP=$!
fi
if [[ ${PERF:-1} == 0 ]]; then
( for _ in $(seq 1 600); do
    curl -s http://127.0.0.1:28080/metrics | grep -E '^portask_queue_consumers.* [1-9]' -q && break
    sleep 0.05
  done
  shard_ticks > /tmp/sr-$label.t0 ) &
fi
"$load" amqp --url "amqp://guest:guest@127.0.0.1:25672/%2f" --messages "$msgs" --prefill --drain-timeout 30s \
   --message-size "$size" --stream --confirm --prefetch 1000 --broker-pid $P ${EXTRA:-} > "/tmp/sr-$label.txt" 2>&1
[[ ${PERF:-1} == 1 ]] && wait $PP
echo "$label $(grep -E 'msg/s|µs/msg|cpu' /tmp/sr-$label.txt | tr -s ' ' | head -5 | tr '\n' ' ')"
echo "read-ticks: $(cat /tmp/sr-$label.t0 2>/dev/null) -> $(shard_ticks)"
stop_broker
