#!/usr/bin/env bash
# Alternating old/new release brokers, same load binary, same scenarios each time.
set -u
LOAD=${LOAD:-target/release/deps/load-*}
OLD=${OLD:?release binary before}
NEW=${NEW:?release binary after}
for run in ${RUNS:-1 2 3}; do
  for which in old new; do
    bin=$OLD; [ $which = new ] && bin=$NEW
    d=$(mktemp -d)
    $bin --data-dir $d/data --kafka-addr 127.0.0.1:19092 --amqp-addr 127.0.0.1:15672 --http-addr 127.0.0.1:18080 > $d/log 2>&1 &
    pid=$!
    for i in $(seq 100); do (echo > /dev/tcp/127.0.0.1/19092) 2>/dev/null && break; sleep 0.1; done
    sleep 1
    for acks in 1 all; do
      echo "== run $run $which kafka acks=$acks"
      $LOAD kafka --brokers 127.0.0.1:19092 --producers 4 --consumers 2 --messages 1000000 --message-size 1024 --acks $acks --partitions 4 2>&1 | grep -iE "produce|consume|msg/s|lost" | head -6
    done
    echo "== run $run $which amqp transient"
    $LOAD amqp --url amqp://guest:guest@127.0.0.1:15672/%2f --producers 2 --consumers 2 --messages 300000 --message-size 1024 2>&1 | grep -iE "publish|consume|msg/s|lost" | head -6
    echo "== run $run $which amqp persistent+confirm"
    $LOAD amqp --url amqp://guest:guest@127.0.0.1:15672/%2f --producers 2 --consumers 2 --messages 200000 --message-size 1024 --persistent --confirm 2>&1 | grep -iE "publish|consume|msg/s|lost" | head -6
    kill $pid; wait $pid 2>/dev/null
    rm -rf $d
  done
done
