#!/usr/bin/env bash
# amqp-full.sh BROKER LOAD [HARNESS ARGS...]: AMQP 1 KiB transient, one publisher and one
# consumer (prefetch 1000), 600 000 messages (MSGS=N) as fast as they go, on a fresh broker
# (2 pinned shards). Prints the ticks of each shard thread, the consume rate and the
# broker's CPU per message.
set -u
bin=$1; load=$2; shift 2
. "$(dirname "$0")/../broker.sh"
out=$(mktemp /tmp/am.XXXX)
start_broker "$bin" /tmp/am-broker.log
"$load" amqp --url "amqp://guest:guest@127.0.0.1:25672/%2f" --messages "${MSGS:-600000}" \
    --message-size 1024 --broker-pid $P --prefetch 1000 "$@" > "$out" 2>&1
busy=$(shard_ticks)
stop_broker
echo "$busy| $(grep -E 'consume|broker CPU' "$out" | tr -s ' ' | tr '\n' ' ')"
rm -f "$out"
