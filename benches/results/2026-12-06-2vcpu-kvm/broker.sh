# broker.sh, sourced by the scripts of this directory's result sets: a fresh Portask on
# fixed loopback ports (Kafka 29092, AMQP 25672, HTTP 28080) and the /proc figures they print.
#   start_broker BIN LOG [BROKER ARGS...]  starts BIN on a new temp data dir and waits until
#                                          /health/ready answers; sets P (its pid), DATA
#   stop_broker                            stops it and removes DATA
#   cpu_ticks                              the broker's user + system ticks so far
#   switches                               context switches (voluntary and not) of all its threads
#   shard_ticks                            "shard-N-M=ticks ..." for each shard thread

start_broker() {
    local bin=$1 log=$2
    shift 2
    DATA=$(mktemp -d /tmp/portask-results.XXXX)
    "$bin" --data-dir "$DATA" --kafka-addr 127.0.0.1:29092 --amqp-addr 127.0.0.1:25672 \
        --http-addr 127.0.0.1:28080 "$@" > "$log" 2>&1 &
    P=$!
    for _ in $(seq 1 100); do
        curl -sf http://127.0.0.1:28080/health/ready > /dev/null && break
        sleep 0.1
    done
}

stop_broker() {
    kill "$P"
    wait "$P"
    rm -rf "$DATA"
}

cpu_ticks() { awk '{print $14+$15}' "/proc/$P/stat"; }

switches() { cat /proc/"$P"/task/*/status | awk '/_ctxt_switches/ {s+=$2} END {print s}'; }

shard_ticks() {
    for t in /proc/"$P"/task/*; do
        echo "$(cat "$t"/comm)=$(awk '{print $14+$15}' "$t"/stat)"
    done | grep shard | tr '\n' ' '
}
