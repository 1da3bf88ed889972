#!/usr/bin/env bash
# usage: measure.sh LABEL BIN OUTDIR
set -u
label=$1; bin=$2; out=$3; mkdir -p $out
d=$(mktemp -d /tmp/meas.XXXX)
K=29092; A=25672; H=28080
$bin --data-dir $d --kafka-addr 127.0.0.1:$K --amqp-addr 127.0.0.1:$A --http-addr 127.0.0.1:$H > $out/$label-broker.log 2>&1 &
P=$!
for i in $(seq 1 100); do curl -sf http://127.0.0.1:$H/health/ready >/dev/null && break; sleep 0.1; done
cpu() { awk '{print $14+$15}' /proc/$P/stat; }
sleep 2
i0=$(cpu); sleep 10; i1=$(cpu); echo "$label idle ticks/10s: $((i1-i0))" | tee -a $out/summary.txt
t0=$(cpu)
"${LOAD:-target/release/load}" amqp --url "amqp://guest:guest@127.0.0.1:$A/%2f" --rate 5000 --duration 20s --message-size 1024 --json $out/$label-amqp5k.json > $out/$label-amqp5k.txt 2>&1
t1=$(cpu)
echo "$label amqp5k broker ticks: $((t1-t0))" | tee -a $out/summary.txt
t0=$(cpu)
"${LOAD:-target/release/load}" kafka --brokers 127.0.0.1:$K --acks all --rate 10000 --duration 20s --message-size 1024 -P linger.ms=0 --json $out/$label-kafka10k.json > $out/$label-kafka10k.txt 2>&1
t1=$(cpu)
echo "$label kafka10k broker ticks: $((t1-t0))" | tee -a $out/summary.txt
kill -TERM $P; wait $P
rm -rf $d
