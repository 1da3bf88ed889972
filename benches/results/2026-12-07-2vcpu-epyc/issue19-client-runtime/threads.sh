#!/usr/bin/env bash
# threads.sh BROKER LOAD amqp|kafka [HARNESS ARGS...]: a fixed-rate run on a fresh broker (2
# pinned shards) for 12 s: AMQP 1 KiB transient at 5 000 msg/s (one publisher, one consumer;
# e.g. --one-connection follows), or Kafka 1 KiB acks=all at 10 000 msg/s (one partition,
# linger.ms=0). Prints, for each thread of the broker and of the harness that worked over
# seconds 3-6, its CPU ticks and its context switches per message, then the harness's
# produce, latency and ack lines and the broker's CPU per message.
set -u
bin=$1; load=$2; proto=$3; shift 3
. "$(dirname "$0")/../../2026-12-06-2vcpu-kvm/broker.sh"
out=$(mktemp /tmp/threads.XXXX)
start_broker "$bin" /tmp/threads-broker.log
if [[ $proto == kafka ]]; then
    rate=10000
    "$load" kafka --brokers 127.0.0.1:29092 --rate $rate --duration 12s --message-size 1024 \
        --acks all --partitions 1 -P linger.ms=0 --broker-pid "$P" "$@" > "$out" 2>&1 &
else
    rate=5000
    "$load" amqp --url "amqp://guest:guest@127.0.0.1:25672/%2f" --rate $rate --duration 12s \
        --message-size 1024 --broker-pid "$P" "$@" > "$out" 2>&1 &
fi
L=$!
snap() {
    for pid in $P $L; do
        for t in "/proc/$pid/task/"*; do
            echo "$(tr ' ' _ < "$t"/comm):$(basename "$t") $(awk '{print $14+$15}' "$t"/stat)" \
                "$(awk '/_ctxt_switches/ {s+=$2} END {print s}' "$t"/status)"
        done
    done | sort
}
sleep 3
snap > "$out.0"
sleep 3
snap > "$out.1"
join "$out.0" "$out.1" | awk -v n=$((rate * 3)) \
    '{d=$4-$2; c=$5-$3; if (d>0||c>100) printf "%s ticks=%d sw/msg=%.2f\n", $1, d, c/n}'
wait $L; stop_broker
grep -E 'produce|latency|^ *ack|broker CPU' "$out" | sed 's/([0-9]* samples)//' | tr -s ' '
rm -f "$out" "$out.0" "$out.1"
