#!/usr/bin/env bash
# amqp5k.sh BROKER LOAD SHARDS [PERF_OUT] [harness args]
set -u
bin=$1; load=$2; shards=$3; perfout=${4:-}; shift 4
d=$(mktemp -d /tmp/am.XXXX)
"$bin" --data-dir "$d" --shards $shards --kafka-addr 127.0.0.1:29092 --amqp-addr 127.0.0.1:25672 \
    --http-addr 127.0.0.1:28080 > /tmp/am-broker.log 2>&1 & P=$!
for _ in $(seq 1 100); do curl -sf http://127.0.0.1:28080/health/ready >/dev/null && break; sleep 0.1; done
"$load" amqp --url "amqp://guest:guest@127.0.0.1:25672/%2f" --rate 5000 --duration 12s \
    --message-size 1024 --broker-pid $P "$@" > /tmp/prof/am.txt 2>&1 &
L=$!
cs() { cat /proc/$P/task/*/status | awk '/voluntary_ctxt_switches/ {s+=$2} END {print s}'; }
sleep 3
t0=$(awk '{print $14+$15}' /proc/$P/stat); c0=$(cs)
if [ -n "$perfout" ]; then perf record -F 4000 -g -p $P -o $perfout -- sleep 3 2>/dev/null >/dev/null; else sleep 3; fi
t1=$(awk '{print $14+$15}' /proc/$P/stat); c1=$(cs)
busy=$(for t in /proc/"$P"/task/*; do echo "$(cat "$t"/comm)=$(awk '{print $14+$15}' "$t"/stat)"; done | grep shard | tr '\n' ' ')
wait $L; kill $P; wait $P; rm -rf "$d"
echo "$busy| switches/msg $(awk -v a="$c0" -v b="$c1" 'BEGIN {printf "%.2f", (b-a)/15000}') | ticks 3-6 s: $((t1-t0)) | $(grep -E 'latency|broker CPU' /tmp/prof/am.txt | sed 's/(60000 samples)//' | tr -s ' ' | tr '\n' ' ')"
