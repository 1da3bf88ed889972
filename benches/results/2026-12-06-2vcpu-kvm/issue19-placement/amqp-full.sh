#!/usr/bin/env bash
# amqpfull.sh BROKER LOAD [harness args]: full-speed AMQP 1 KiB transient 1->1, 2 pinned shards
set -u
bin=$1; load=$2; shift 2
d=$(mktemp -d /tmp/am.XXXX)
"$bin" --data-dir "$d" --kafka-addr 127.0.0.1:29092 --amqp-addr 127.0.0.1:25672 \
    --http-addr 127.0.0.1:28080 > /tmp/am-broker.log 2>&1 & P=$!
for _ in $(seq 1 100); do curl -sf http://127.0.0.1:28080/health/ready >/dev/null && break; sleep 0.1; done
"$load" amqp --url "amqp://guest:guest@127.0.0.1:25672/%2f" --messages ${MSGS:-600000} \
    --message-size 1024 --broker-pid $P --prefetch 1000 "$@" > /tmp/prof/full.txt 2>&1
busy=$(for t in /proc/"$P"/task/*; do echo "$(cat "$t"/comm)=$(awk '{print $14+$15}' "$t"/stat)"; done | grep shard | tr '\n' ' ')
kill $P; wait $P; rm -rf "$d"
echo "$busy| $(grep -E 'consume|broker CPU' /tmp/prof/full.txt | tr -s ' ' | tr '\n' ' ')"
