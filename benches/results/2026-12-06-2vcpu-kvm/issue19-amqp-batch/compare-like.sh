#!/usr/bin/env bash
# compare-like.sh BROKER LOAD [HARNESS ARGS...]: one AMQP run as scripts/compare.sh runs its
# full-load rows (200 000 messages, the harness's default prefetch of 200, acks every 100),
# on a fresh broker (2 pinned shards). Prints the shard threads' ticks, the consume rate and
# the broker's CPU per message. E.g. the fanout row: ... --message-size 1024 --fanout 4
set -u
bin=$1; load=$2; shift 2
. "$(dirname "$0")/../broker.sh"
out=$(mktemp /tmp/cl.XXXX)
start_broker "$bin" /tmp/cl-broker.log
"$load" amqp --url "amqp://guest:guest@127.0.0.1:25672/%2f" --messages 200000 --duration 20s \
    --broker-pid $P "$@" > "$out" 2>&1
busy=$(shard_ticks)
stop_broker
echo "$busy| $(grep -E 'consume|broker CPU' "$out" | tr -s ' ' | tr '\n' ' ')"
rm -f "$out"
