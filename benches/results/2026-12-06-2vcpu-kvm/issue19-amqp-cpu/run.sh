#!/usr/bin/env bash
# run.sh BROKER LOAD SIZE [HARNESS ARGS...]: AMQP transient, one publisher and one consumer
# (prefetch 1000), SIZE-byte messages, MSGS (default 1 500 000) as fast as they go, on a
# fresh broker (2 pinned shards). Prints the shard threads' ticks, the consume rate and
# the broker's CPU per message.
set -u
bin=$1; load=$2; size=$3; shift 3
. "$(dirname "$0")/../broker.sh"
out=$(mktemp /tmp/ar.XXXX)
start_broker "$bin" /tmp/ar-broker.log
"$load" amqp --url "amqp://guest:guest@127.0.0.1:25672/%2f" --messages "${MSGS:-1500000}" \
    --message-size "$size" --broker-pid $P --prefetch 1000 "$@" > "$out" 2>&1
busy=$(shard_ticks)
stop_broker
echo "$busy| $(grep -E 'consume|broker CPU' "$out" | tr -s ' ' | tr '\n' ' ')"
rm -f "$out"
