#!/usr/bin/env bash
# pairs.sh BROKER OLD_LOAD NEW_LOAD N: N rounds of threads.sh, each round the old and then the
# new harness, first with a connection each for publisher and consumer, then with one
# connection (--one-connection). One line per run: the harness's ticks over seconds 3-6
# (all its threads), its latency and the broker's CPU per message.
set -u
bin=$1; old=$2; new=$3; n=$4
here=$(dirname "$0")
for _ in $(seq 1 "$n"); do
    for mode in two one; do
        extra=()
        [[ $mode == one ]] && extra=(--one-connection)
        for h in old new; do
            load=$old
            [[ $h == new ]] && load=$new
            r=$("$here"/threads.sh "$bin" "$load" amqp "${extra[@]}")
            ticks=$(echo "$r" | grep -v -E '^shard|^iou-wrk|produce|latency|^ *ack|broker CPU' \
                | awk '{split($2, a, "="); t += a[2]} END {print t}')
            echo "$h $mode harness-ticks=$ticks $(echo "$r" | grep -E "latency|broker CPU" | tr '\n' ' ')"
        done
    done
done
