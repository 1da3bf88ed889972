#!/usr/bin/env bash
# threads.sh BROKER LOAD [HARNESS ARGS...]: AMQP 1 KiB transient at a fixed 5 000 msg/s for
# 12 s (one publisher, one consumer; the harness's arguments follow, e.g. --one-connection)
# on a fresh broker (2 pinned shards). Prints, for each thread of the broker and of the
# harness that worked over seconds 3-6, its CPU ticks and its context switches per message,
# then the harness's latency line and the broker's CPU per message.
set -u
bin=$1; load=$2; shift 2
. "$(dirname "$0")/../../2026-12-06-2vcpu-kvm/broker.sh"
out=$(mktemp /tmp/threads.XXXX)
start_broker "$bin" /tmp/threads-broker.log
"$load" amqp --url "amqp://guest:guest@127.0.0.1:25672/%2f" --rate 5000 --duration 12s \
    --message-size 1024 --broker-pid $P "$@" > "$out" 2>&1 &
L=$!
snap() {
    for pid in $P $L; do
        for t in /proc/$pid/task/*; do
            echo "$(tr ' ' _ < "$t"/comm):$(basename "$t") $(awk '{print $14+$15}' "$t"/stat)" \
                "$(awk '/_ctxt_switches/ {s+=$2} END {print s}' "$t"/status)"
        done
    done | sort
}
sleep 3
snap > "$out.0"
sleep 3
snap > "$out.1"
join "$out.0" "$out.1" | awk '{d=$4-$2; c=$5-$3; if (d>0||c>100) printf "%s ticks=%d sw/msg=%.2f\n", $1, d, c/15000}'
wait $L; stop_broker
grep -E 'latency|broker CPU' "$out" | sed 's/(60000 samples)//' | tr -s ' '
rm -f "$out" "$out.0" "$out.1"
