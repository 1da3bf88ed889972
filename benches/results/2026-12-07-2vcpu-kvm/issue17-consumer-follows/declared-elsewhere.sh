#!/usr/bin/env bash
# declared-elsewhere.sh BROKER LOAD: AMQP 1 KiB transient at a fixed 5 000 msg/s for 12 s on
# a queue another connection declared first (pika, then closed), as when deploy tooling or
# the publisher declares the queue and the consumer only consumes: the queue lands on the
# declaring connection's shard, and the consumer's connection on whichever shard the
# kernel picks. Prints the shard threads' ticks, then the harness's latency and broker
# CPU per message.
set -u
bin=$1; load=$2
. "$(dirname "$0")/../../2026-12-06-2vcpu-kvm/broker.sh"
out=$(mktemp /tmp/de.XXXX)
start_broker "$bin" /tmp/de-broker.log
python3 -c '
import pika
c = pika.BlockingConnection(pika.URLParameters("amqp://guest:guest@127.0.0.1:25672/%2f"))
c.channel().queue_declare("elsewhere")
c.close()'
"$load" amqp --url "amqp://guest:guest@127.0.0.1:25672/%2f" --queue elsewhere --rate 5000 \
    --duration 12s --message-size 1024 --broker-pid $P > "$out" 2>&1
busy=$(shard_ticks)
stop_broker
echo "$busy| $(grep -E 'latency|broker CPU' "$out" | sed 's/(60000 samples)//' | tr -s ' ' | tr '\n' ' ')"
rm -f "$out"
