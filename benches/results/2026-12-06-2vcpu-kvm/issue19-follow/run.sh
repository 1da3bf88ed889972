#!/usr/bin/env bash
# run.sh BEFORE AFTER LOAD: the before/after of connections following their work
# (runtime::placement), alternating the two brokers, each on a fresh data dir:
#   AMQP 1 KiB transient at 5 000 msg/s, 3 pairs       (../issue19-copies-hops/amqp-5k-modes.sh)
#   AMQP 1 KiB persistent + confirms at 5 000 msg/s, 2 pairs
#   Kafka 1 KiB acks=all at 10 000 msg/s, 3 pairs        (../issue19-wakeups/kafka-10k.sh)
#   AMQP 1→1 at full load, 3 pairs                       (../issue19-placement/amqp-full.sh)
#   Kafka acks=all at full load, 6 partitions, 2 pairs   (../issue19-copies-hops/kafka-full.sh)
#   Kafka acks=all at full load, 1 partition, 2 pairs
# Each line: which shards worked (ticks per shard thread), then the harness's figures.
set -u
before=$1; after=$2; load=$3
here=$(cd "$(dirname "$0")" && pwd)
. "$here/../broker.sh"
pairs() { # N LABEL COMMAND... (BIN is replaced by each broker)
    local n=$1 label=$2; shift 2
    for i in $(seq 1 "$n"); do
        for v in before after; do
            local bin=$before; [ "$v" = after ] && bin=$after
            echo "$label $v $i: $("${@//BIN/$bin}" 2>&1 | tail -1)"
        done
    done
}
kafka_1p() {
    start_broker "$1" /tmp/kf1.log
    "$load" kafka --brokers 127.0.0.1:29092 --acks all --partitions 1 --messages 2000000 \
        --duration 30s --message-size 1024 --broker-pid $P > /tmp/kf1.txt 2>&1
    local t; t=$(shard_ticks); stop_broker
    echo "$t| $(grep -E 'produce|broker CPU' /tmp/kf1.txt | tr -s ' ' | tr '\n' ' ')"
}
pairs 3 amqp-5k bash "$here/../issue19-copies-hops/amqp-5k-modes.sh" BIN "$load"
pairs 2 amqp-5k-persistent bash "$here/../issue19-copies-hops/amqp-5k-modes.sh" BIN "$load" --persistent --confirm
pairs 3 kafka-10k bash "$here/../issue19-wakeups/kafka-10k.sh" BIN "$load"
pairs 3 amqp-full bash "$here/../issue19-placement/amqp-full.sh" BIN "$load"
pairs 2 kafka-full-6p bash "$here/../issue19-copies-hops/kafka-full.sh" BIN "$load" run
pairs 2 kafka-full-1p kafka_1p BIN
