#!/usr/bin/env bash
# floor.sh RELAY [RATE SIZE ACK_EVERY]: the least CPU per message a broker's process can spend
# at a fixed rate on this machine. A publisher sends SIZE-byte messages at RATE/s (default
# 5 000 × 1 KiB) to a relay, which passes every byte on to a consumer; the consumer sends an
# 8-byte ack every ACK_EVERY messages (default 100, as the load harness's AMQP consumer acks
# with `multiple` every half prefetch). Prints the relay's user + system ticks over seconds
# 3-8 per message and its context switches per message.
#   RELAY c:       relay.c (epoll, one thread; build: gcc -O2 -o relay relay.c)
#   RELAY glommio: grelay.rs (one glommio executor on CPU 0, glommio's own TcpStream;
#                  build: a crate with glommio = "0.9", futures-lite = "2", main.rs = grelay.rs,
#                  binary at $GRELAY)
# The clients are relay.c's `pub` and `sub` modes in both cases.
set -u
kind=${1:-c}; rate=${2:-5000}; size=${3:-1024}; every=${4:-100}
here=$(cd "$(dirname "$0")" && pwd)
# cpu_ticks and switches of the process $P
. "$here/../../2026-12-06-2vcpu-kvm/broker.sh"
relay=${RELAY_BIN:-$here/relay}
port=$((39000 + RANDOM % 900))
if [ "$kind" = c ]; then "$relay" relay $port & R=$!; else "${GRELAY:?}" $port & R=$!; fi
sleep 0.3
"$relay" sub $port "$size" "$every" > /tmp/floor-sub.txt & S=$!
sleep 0.1
"$relay" pub $port "$rate" 10 "$size" & PB=$!
P=$R
sleep 3
t0=$(cpu_ticks); c0=$(switches)
sleep 5
t1=$(cpu_ticks); c1=$(switches)
wait $PB; wait $S; kill $R 2>/dev/null; wait $R 2>/dev/null
echo "$kind rate $rate size $size ack-every $every: $((t1-t0)) ticks in 5 s = $(awk -v t=$((t1-t0)) -v r="$rate" 'BEGIN {printf "%.1f", t*1e4/(r*5)}') µs/msg, switches/msg $(awk -v a="$c0" -v b="$c1" -v r="$rate" 'BEGIN {printf "%.2f", (b-a)/(r*5)}') | $(cat /tmp/floor-sub.txt)"
