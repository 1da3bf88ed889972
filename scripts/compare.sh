#!/usr/bin/env bash
# Portask side by side with RabbitMQ on this machine: the same load-harness scenarios
# against both, a table with ratios, results JSON and an SVG chart.
set -euo pipefail

PROG=${0##*/}
ROOT=$(cd "$(dirname "$0")/.." && pwd)
TARGET_DIR=${CARGO_TARGET_DIR:-$ROOT/target}

usage() {
    cat <<EOF
Usage: $PROG [--out DIR] [--shards N] [--placement pinned|unpinned] [--repeat N]
             [--kafka-only | --amqp-only] [--matrix | --streams | --fixed-rate] [--quick]
             [--no-install] [--keep] [--dry-run]

Builds a release Portask and the load harness (cargo bench --bench load), installs
RabbitMQ from Debian packages when it is absent (root only), starts both brokers on
loopback with fresh data directories and free ports, runs every scenario through
the same harness against each, then prints a side-by-side Markdown table with
Portask ÷ RabbitMQ ratios and writes results.json, table.md and chart.svg.

Scenarios (1 KiB messages unless stated; 1 producer and 1 consumer):
  AMQP   transient; 16 B transient; persistent with publisher confirms;
         fanout 1 -> 4 queues; latency at a fixed 1000 msg/s
  Kafka  acks=1 and acks=all on 1 and 6 partitions; latency at 1000 msg/s
         (Portask only until a Kafka-compatible peer runs here)
Fixed rate (in the default set; alone with --fixed-rate): the latency targets of issue 19,
open loop at a fixed rate for the latency duration (15 s, 5 s with --quick):
  AMQP   1 KiB transient at 5000 msg/s; 1 KiB persistent + publisher confirms at 5000 msg/s;
         1 KiB transient at 5000 msg/s over one connection (publisher and consumer share it)
  Kafka  1 KiB acks=all at 10000 msg/s, 1 partition, -P linger.ms=0 (Portask only)
Each row reports msg/s, end-to-end latency p50/p99/p99.9, the ack latency p50/p99 where
the broker acknowledges (send call to Kafka delivery report or AMQP confirm) and the
broker's CPU µs per message.
With --matrix, instead (the baseline grid of tuning/README.md; 1 partition, 1 queue):
  AMQP   16 B and 1 KiB, each transient and persistent with publisher confirms
  Kafka  16 B and 1 KiB, each acks=1 and acks=all
Stream read-back (in the default set; alone with --streams): a stream is pre-filled with
publisher confirms, then one consumer reads it from the first message (prefetch 1000,
multiple acks every 500), 16 B and 1 KiB: a Portask stream queue and a RabbitMQ stream
queue (x-queue-type stream, x-stream-offset first) over AMQP 0-9-1, and one Kafka
consumer (rdkafka) reading a Portask topic pre-filled with acks=all. The consume rate and
the broker's CPU µs per message cover the read alone. Every run reports the broker's
CPU (user + system, /proc/PID/stat) per message.
Where Portask does not answer AMQP on its port, its AMQP cells read
"n/a (Portask AMQP not available)".

  --out DIR        where results go (default: \$CARGO_TARGET_DIR/compare/<UTC time>)
  --shards N       Portask shards (default 0: one per core)
  --placement P    pinned (Portask's default) or unpinned
  --repeat N       run every scenario N times; the table shows the median of each
                   figure (default 1)
  --kafka-only     skip the AMQP scenarios and RabbitMQ
  --amqp-only      skip the Kafka scenarios
  --matrix         run the size x durability grid above instead of the default scenarios
  --streams        run only the stream read-back scenarios
  --fixed-rate     run only the fixed-rate scenarios
  --quick          about a tenth of the messages and 5 s runs (a smoke test)
  --no-install     never apt-get install RabbitMQ (its column reads n/a if absent)
  --keep           keep the brokers' data and log directories
  --dry-run        print the harness command lines the options select (brokers' URLs
                   stand as placeholders, without --broker-pid) and exit: no build, no
                   brokers
  -h, --help       this help

Environment: LOAD_BIN and PORTASK_BIN together name a load harness and a Portask binary
to use as they are, skipping both builds.

The Kafka scenarios write about 4 GB per repetition to a temporary data directory
(removed at the end); the AMQP ones a few hundred MB to RabbitMQ's.

Exits 0 when every run completed without losing a message, 1 otherwise, 2 on bad
usage or when a broker does not start.
EOF
}

die() {
    echo "$PROG: $*" >&2
    exit 2
}

OUT=""
SHARDS=0
PLACEMENT=pinned
KAFKA=1
AMQP=1
QUICK=0
INSTALL=1
KEEP=0
REPEAT=1
SET=default
DRY_RUN=0
# pick SET: the scenario set; two different ones on one command line are an error.
pick() {
    [[ $SET == default || $SET == "$1" ]] ||
        die "--$SET and --$1 are different sets: pick one"
    SET=$1
}
while [[ $# -gt 0 ]]; do
    case $1 in
    --out) OUT=${2:?--out needs a directory}; shift 2 ;;
    --shards) SHARDS=${2:?--shards needs a number}; shift 2 ;;
    --placement) PLACEMENT=${2:?--placement needs pinned or unpinned}; shift 2 ;;
    --repeat) REPEAT=${2:?--repeat needs a number}; shift 2 ;;
    --kafka-only) AMQP=0; shift ;;
    --amqp-only) KAFKA=0; shift ;;
    --matrix) pick matrix; shift ;;
    --streams) pick streams; shift ;;
    --fixed-rate) pick fixed-rate; shift ;;
    --dry-run) DRY_RUN=1; shift ;;
    --quick) QUICK=1; shift ;;
    --no-install) INSTALL=0; shift ;;
    --keep) KEEP=1; shift ;;
    -h | --help) usage; exit 0 ;;
    *) echo "$PROG: unknown option $1 (try --help)" >&2; exit 2 ;;
    esac
done
[[ $SHARDS =~ ^[0-9]+$ ]] || die "--shards must be a number"
[[ $REPEAT =~ ^[1-9][0-9]*$ ]] || die "--repeat must be a number from 1"
[[ $PLACEMENT == pinned || $PLACEMENT == unpinned ]] || die "--placement must be pinned or unpinned"
[[ $KAFKA == 1 || $AMQP == 1 ]] || die "--kafka-only and --amqp-only together leave nothing to run"

if [[ $QUICK == 1 ]]; then
    AMQP_MESSAGES=20000 KAFKA_MESSAGES=50000 DURATION=5s LATENCY_DURATION=5s
    STREAM_MESSAGES=20000
else
    AMQP_MESSAGES=200000 KAFKA_MESSAGES=1000000 DURATION=20s LATENCY_DURATION=15s
    STREAM_MESSAGES=200000
fi

# ---------------------------------------------------------------------------------------
# Scenarios (run after the brokers start; with --dry-run, printed instead)

FAILED=0
SEQ=0
FILES=()

# stub FILE SCENARIO TARGET PROTOCOL WHY: a result that says why there is no figure.
stub() {
    if [[ $DRY_RUN == 1 ]]; then
        printf '%s — %s: n/a (%s)\n' "$2" "$3" "$5"
        return
    fi
    printf '{"scenario": "%s", "target": "%s", "protocol": "%s", "unavailable": "%s"}\n' \
        "$2" "$3" "$4" "$5" >"$1"
    FILES+=("$1")
}

# one SCENARIO TARGET PROTOCOL HARNESS-ARGS...: --repeat runs of the harness.
one() {
    local scenario=$1 target=$2 protocol=$3 file rc run label broker_pid
    shift 3
    for ((run = 1; run <= REPEAT; run++)); do
        rc=0
        file=$(printf '%s/%02d-%s-r%d.json' "$OUT" "$SEQ" "$target" "$run")
        if [[ $DRY_RUN == 1 ]]; then
            printf '%s — %s: load' "$scenario" "$target"
            printf ' %q' "$protocol" "$@" --scenario "$scenario" --target "$target" \
                --json "$file"
            printf '\n'
            continue
        fi
        label=""
        [[ $REPEAT == 1 ]] || label=" (run $run of $REPEAT)"
        log "$scenario — $target$label"
        broker_pid=()
        case $target in
        portask) broker_pid=(--broker-pid "$PORTASK_PID") ;;
        rabbitmq) if [[ -s $RABBIT_PIDFILE ]]; then broker_pid=(--broker-pid "$(cat "$RABBIT_PIDFILE")"); fi ;;
        esac
        "$LOAD" "$protocol" "$@" "${broker_pid[@]}" --scenario "$scenario" --target "$target" \
            --json "$file" >"${file%.json}.log" 2>&1 || rc=$?
        sed 's/^/    /' "${file%.json}.log"
        if [[ $rc != 0 ]]; then
            FAILED=1
            if [[ ! -s $file ]]; then
                stub "$file" "$scenario" "$target" "$protocol" \
                    "run failed (exit $rc, see ${file%.json}.log)"
                continue
            fi
        fi
        FILES+=("$file")
    done
}

# amqp SCENARIO HARNESS-ARGS...: against RabbitMQ and Portask.
amqp() {
    local scenario=$1
    shift
    SEQ=$((SEQ + 1))
    if [[ -n $PORTASK_AMQP ]]; then
        one "$scenario" portask amqp --url "$PORTASK_AMQP" "$@"
    else
        stub "$(printf '%s/%02d-portask.json' "$OUT" "$SEQ")" "$scenario" portask amqp \
            "Portask AMQP not available"
    fi
    if [[ -n $RABBIT_URL ]]; then
        one "$scenario" rabbitmq amqp --url "$RABBIT_URL" "$@"
    else
        stub "$(printf '%s/%02d-rabbitmq.json' "$OUT" "$SEQ")" "$scenario" rabbitmq amqp \
            "$RABBIT_MISSING"
    fi
}

# kafka SCENARIO HARNESS-ARGS...: against Portask only.
kafka() {
    local scenario=$1
    shift
    SEQ=$((SEQ + 1))
    one "$scenario" portask kafka --brokers "127.0.0.1:$PK" "$@"
    if [[ $AMQP == 1 ]]; then
        stub "$(printf '%s/%02d-rabbitmq.json' "$OUT" "$SEQ")" "$scenario" rabbitmq kafka \
            "no Kafka protocol"
    fi
}

# Every scenario the options select, in order.
scenarios() {
    local size label acks
    local AMQP_RUN=(--messages "$AMQP_MESSAGES" --duration "$DURATION")
    local KAFKA_RUN=(--messages "$KAFKA_MESSAGES" --duration "$DURATION")
    if [[ $SET == matrix ]]; then
        if [[ $AMQP == 1 ]]; then
            for size in 16 1024; do
                label=$([[ $size == 16 ]] && echo "16 B" || echo "1 KiB")
                amqp "AMQP $label transient, 1→1" "${AMQP_RUN[@]}" --message-size "$size"
                amqp "AMQP $label persistent + confirms, 1→1" "${AMQP_RUN[@]}" \
                    --message-size "$size" --persistent --confirm
            done
        fi
        if [[ $KAFKA == 1 ]]; then
            for size in 16 1024; do
                label=$([[ $size == 16 ]] && echo "16 B" || echo "1 KiB")
                for acks in 1 all; do
                    kafka "Kafka $label acks=$acks, 1 partition" "${KAFKA_RUN[@]}" \
                        --message-size "$size" --acks "$acks" --partitions 1
                done
            done
        fi
    fi
    if [[ $SET == default && $AMQP == 1 ]]; then
        amqp "AMQP 1 KiB transient, 1→1" "${AMQP_RUN[@]}" --message-size 1024
        amqp "AMQP 16 B transient, 1→1" "${AMQP_RUN[@]}" --message-size 16
        amqp "AMQP 1 KiB persistent + confirms, 1→1" "${AMQP_RUN[@]}" --message-size 1024 \
            --persistent --confirm
        amqp "AMQP 1 KiB fanout 1→4 queues" "${AMQP_RUN[@]}" --message-size 1024 --fanout 4
        amqp "AMQP 1 KiB latency at 1000 msg/s" --rate 1000 --duration "$LATENCY_DURATION" \
            --message-size 1024
    fi
    if [[ $SET == default && $KAFKA == 1 ]]; then
        kafka "Kafka 1 KiB acks=1, 1 partition" "${KAFKA_RUN[@]}" --acks 1 --partitions 1
        kafka "Kafka 1 KiB acks=all, 1 partition" "${KAFKA_RUN[@]}" --acks all --partitions 1
        kafka "Kafka 1 KiB acks=1, 6 partitions" "${KAFKA_RUN[@]}" --acks 1 --partitions 6
        kafka "Kafka 1 KiB acks=all, 6 partitions" "${KAFKA_RUN[@]}" --acks all --partitions 6
        kafka "Kafka 1 KiB latency at 1000 msg/s, acks=1, linger.ms=0" --rate 1000 \
            --duration "$LATENCY_DURATION" --acks 1 -P linger.ms=0
    fi
    if [[ $SET == default || $SET == fixed-rate ]]; then
        # Issue 19's latency targets: open loop at a fixed rate, 1 KiB, 1 producer.
        if [[ $AMQP == 1 ]]; then
            amqp "AMQP 1 KiB transient at 5000 msg/s" --rate 5000 \
                --duration "$LATENCY_DURATION" --message-size 1024
            amqp "AMQP 1 KiB persistent + confirms at 5000 msg/s" --rate 5000 \
                --duration "$LATENCY_DURATION" --message-size 1024 --persistent --confirm
            amqp "AMQP 1 KiB transient at 5000 msg/s, one connection" --rate 5000 \
                --duration "$LATENCY_DURATION" --message-size 1024 --one-connection
        fi
        if [[ $KAFKA == 1 ]]; then
            kafka "Kafka 1 KiB acks=all at 10000 msg/s, linger.ms=0" --rate 10000 \
                --duration "$LATENCY_DURATION" --message-size 1024 --acks all \
                --partitions 1 -P linger.ms=0
        fi
    fi
    if [[ $SET == default || $SET == streams ]]; then
        local STREAM_RUN=(--messages "$STREAM_MESSAGES" --prefill --drain-timeout 30s)
        for size in 16 1024; do
            label=$([[ $size == 16 ]] && echo "16 B" || echo "1 KiB")
            if [[ $AMQP == 1 ]]; then
                amqp "Stream read-back $label, AMQP consumer" "${STREAM_RUN[@]}" \
                    --message-size "$size" --stream --confirm --prefetch 1000
            fi
            if [[ $KAFKA == 1 ]]; then
                kafka "Stream read-back $label, Kafka consumer" "${STREAM_RUN[@]}" \
                    --message-size "$size" --acks all --partitions 1
            fi
        done
    fi
}

if [[ $DRY_RUN == 1 ]]; then
    # Placeholders for what the brokers would be: the harness accepts them as they are.
    OUT=${OUT:-OUT}
    PK=KAFKA_PORT
    PORTASK_AMQP="amqp://guest:guest@127.0.0.1:PORTASK_AMQP_PORT/%2f"
    RABBIT_URL="amqp://guest:guest@127.0.0.1:RABBITMQ_PORT/%2f"
    scenarios
    exit 0
fi

OUT=${OUT:-$TARGET_DIR/compare/$(date -u +%Y%m%dT%H%M%SZ)}
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
WORK=$(mktemp -d "${TMPDIR:-/tmp}/portask-compare.XXXXXX")
# RabbitMQ runs as its own user when we are root: it must be able to enter this dir.
chmod 755 "$WORK"

PORTASK_PID=""
RABBIT_PID=""
RABBIT_PIDFILE=""
EPMD_WAS_RUNNING=0

log() { printf '%s %s\n' "$(date -u +%H:%M:%S)" "$*"; }

# A TCP port on 127.0.0.1 nothing answers on right now.
free_port() {
    local p
    for _ in $(seq 1 200); do
        p=$((20000 + RANDOM % 40000))
        if ! (exec 3<>"/dev/tcp/127.0.0.1/$p") 2>/dev/null; then
            echo "$p"
            return 0
        fi
    done
    die "found no free port"
}

port_open() {
    (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null
}

# wait_port PORT SECONDS PID NAME: until the port accepts, or the process dies.
wait_port() {
    local port=$1 seconds=$2 pid=$3 name=$4 i
    for ((i = 0; i < seconds * 10; i++)); do
        port_open "$port" && return 0
        kill -0 "$pid" 2>/dev/null || die "$name exited during start (see $OUT/$name.log)"
        sleep 0.1
    done
    die "$name did not open port $port within ${seconds}s (see $OUT/$name.log)"
}

# Does an AMQP 0-9-1 broker answer on PORT? (Sends the protocol header and expects a
# method frame: connection.start.)
amqp_answers() {
    local reply
    # shellcheck disable=SC2016 # $1 is the inner shell's argument, expanded there.
    reply=$(timeout 3 bash -c '
        exec 3<>"/dev/tcp/127.0.0.1/$1" || exit 1
        printf "AMQP\x00\x00\x09\x01" >&3
        head -c 1 <&3 | od -An -tx1' _ "$1" 2>/dev/null) || return 1
    [[ $reply == *01* ]]
}

stop_pid() {
    local pid=$1 i
    [[ -n $pid ]] || return 0
    kill -TERM "$pid" 2>/dev/null || return 0
    for ((i = 0; i < 300; i++)); do
        kill -0 "$pid" 2>/dev/null || return 0
        sleep 0.1
    done
    kill -KILL "$pid" 2>/dev/null || true
}

cleanup() {
    local rc=$?
    if [[ -n $PORTASK_PID ]]; then
        stop_pid "$PORTASK_PID"
        wait "$PORTASK_PID" 2>/dev/null || true
    fi
    if [[ -n $RABBIT_PIDFILE && -s $RABBIT_PIDFILE ]]; then
        stop_pid "$(cat "$RABBIT_PIDFILE")"
    fi
    if [[ -n $RABBIT_PID ]]; then
        stop_pid "$RABBIT_PID"
        wait "$RABBIT_PID" 2>/dev/null || true
    fi
    # epmd is started by the first Erlang node; stop it only if this run started it
    # (it refuses while another node is still registered).
    if [[ $EPMD_WAS_RUNNING == 0 ]] && command -v epmd >/dev/null; then
        epmd -kill >/dev/null 2>&1 || true
    fi
    if [[ $KEEP == 1 ]]; then
        log "kept broker data and logs in $WORK"
    else
        rm -rf "$WORK"
    fi
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# ---------------------------------------------------------------------------------------
# Build

cd "$ROOT"
export CARGO_TARGET_DIR=$TARGET_DIR
# LOAD_BIN and PORTASK_BIN, when set, are used as they are (no build): e.g. a harness
# built earlier while a release build would not finish in time.
if [[ -n ${LOAD_BIN:-} && -n ${PORTASK_BIN:-} ]]; then
    LOAD=$LOAD_BIN
    log "using $LOAD and $PORTASK_BIN as built (LOAD_BIN, PORTASK_BIN)"
else
    log "building release Portask and the load harness"
    cargo build --release --bin portask
    LOAD=$(cargo bench --bench load --no-run --message-format=json 2>/dev/null |
        grep -o '"executable":"[^"]*"' | tail -1 | cut -d'"' -f4)
    PORTASK_BIN=$TARGET_DIR/release/portask
fi
[[ -x $LOAD ]] || die "could not find the load harness binary (cargo bench --bench load --no-run)"
[[ -x $PORTASK_BIN ]] || die "no Portask binary at $PORTASK_BIN"

LOAD_AT_START=$(cut -d' ' -f1-3 /proc/loadavg)

# ---------------------------------------------------------------------------------------
# RabbitMQ

RABBIT_SERVER=/usr/lib/rabbitmq/bin/rabbitmq-server
RABBIT_URL=""
RABBIT_MISSING=""
if [[ $AMQP == 1 ]]; then
    if [[ ! -x $RABBIT_SERVER ]]; then
        if [[ $INSTALL == 1 && $(id -u) == 0 ]] && command -v apt-get >/dev/null; then
            log "installing rabbitmq-server from Debian packages"
            apt-get update -qq
            DEBIAN_FRONTEND=noninteractive apt-get install -y -qq rabbitmq-server >/dev/null
        elif [[ $INSTALL == 1 ]]; then
            die "rabbitmq-server is not installed: run as root (apt-get install rabbitmq-server) or pass --no-install"
        fi
    fi
    if [[ -x $RABBIT_SERVER ]]; then
        pgrep -x epmd >/dev/null && EPMD_WAS_RUNNING=1
        RDIR=$WORK/rabbitmq
        mkdir -p "$RDIR"
        RPORT=$(free_port)
        RDIST=$(free_port)
        RABBIT_PIDFILE=$RDIR/beam.pid
        rabbit_env=(
            HOME="$RDIR"
            RABBITMQ_NODENAME="portask-compare-$$@localhost"
            RABBITMQ_NODE_IP_ADDRESS=127.0.0.1
            RABBITMQ_NODE_PORT="$RPORT"
            RABBITMQ_DIST_PORT="$RDIST"
            RABBITMQ_MNESIA_BASE="$RDIR/mnesia"
            RABBITMQ_LOG_BASE="$RDIR/log"
            RABBITMQ_PID_FILE="$RABBIT_PIDFILE"
            RABBITMQ_ENABLED_PLUGINS_FILE="$RDIR/enabled_plugins"
            RABBITMQ_CONFIG_FILE="$RDIR/rabbitmq"
        )
        as_rabbit=()
        if [[ $(id -u) == 0 ]] && id rabbitmq >/dev/null 2>&1; then
            chown -R rabbitmq:rabbitmq "$RDIR"
            as_rabbit=(setpriv --reuid rabbitmq --regid rabbitmq --init-groups)
        fi
        log "starting RabbitMQ on 127.0.0.1:$RPORT"
        (cd "$RDIR" && exec "${as_rabbit[@]}" env "${rabbit_env[@]}" "$RABBIT_SERVER") \
            >"$OUT/rabbitmq.log" 2>&1 &
        RABBIT_PID=$!
        wait_port "$RPORT" 120 "$RABBIT_PID" rabbitmq
        RABBIT_URL="amqp://guest:guest@127.0.0.1:$RPORT/%2f"
    else
        RABBIT_MISSING="RabbitMQ not installed"
    fi
fi

# ---------------------------------------------------------------------------------------
# Portask

PK=$(free_port)
PA=$(free_port)
PH=$(free_port)
mkdir -p "$WORK/portask"
log "starting Portask (shards=$SHARDS, $PLACEMENT) on 127.0.0.1:$PK (Kafka), :$PA (AMQP)"
RUST_LOG=info "$PORTASK_BIN" --data-dir "$WORK/portask" --shards "$SHARDS" \
    --placement "$PLACEMENT" --kafka-addr "127.0.0.1:$PK" --amqp-addr "127.0.0.1:$PA" \
    --http-addr "127.0.0.1:$PH" >"$OUT/portask.log" 2>&1 &
PORTASK_PID=$!
wait_port "$PK" 60 "$PORTASK_PID" portask
PORTASK_AMQP=""
if [[ $AMQP == 1 ]]; then
    if amqp_answers "$PA"; then
        PORTASK_AMQP="amqp://guest:guest@127.0.0.1:$PA/%2f"
    else
        log "Portask does not answer AMQP on :$PA: its AMQP cells will read n/a"
    fi
fi

scenarios

# ---------------------------------------------------------------------------------------
# Report

CPU=$(grep -m1 'model name' /proc/cpuinfo 2>/dev/null | cut -d: -f2 | sed 's/^ *//' || true)
DISK=$(df -h "$WORK" | awk 'NR == 2 { print $1 " " $2 " (" $4 " free), mounted on " $6 }')
RABBIT_VERSION=$(dpkg-query -W -f='${Version}' rabbitmq-server 2>/dev/null || echo none)
ERLANG_VERSION=$(dpkg-query -W -f='${Version}' erlang-base 2>/dev/null || echo none)
COMMIT=$(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo unknown)
DATE=$(date -u +%Y-%m-%dT%H:%M:%SZ)
meta=(
    --meta "title=Portask ($COMMIT) and RabbitMQ $RABBIT_VERSION, $(nproc) cores, $DATE"
    --meta "date=$DATE"
    --meta "cores=$(nproc)"
    --meta "cpu=$CPU"
    --meta "kernel=$(uname -r)"
    --meta "disk=$DISK"
    --meta "portask=$COMMIT shards=$SHARDS placement=$PLACEMENT"
    --meta "rabbitmq=$RABBIT_VERSION (erlang $ERLANG_VERSION)"
    --meta "quick=$QUICK"
    --meta "repeat=$REPEAT"
    --meta "load_average=$LOAD_AT_START at start, $(cut -d' ' -f1-3 /proc/loadavg) at end"
)
{
    echo "Date:     $DATE"
    echo "Machine:  $(nproc) cores ($CPU), kernel $(uname -r)"
    echo "Disk:     $DISK"
    echo "Portask:  $COMMIT, --shards $SHARDS --placement $PLACEMENT"
    echo "Runs:     $REPEAT per scenario and broker (the table shows the median of each figure)"
    if [[ $AMQP == 1 ]]; then
        echo "RabbitMQ: $RABBIT_VERSION (Erlang $ERLANG_VERSION), default configuration"
    fi
    echo "Clients:  the load harness on the same machine (cargo bench --bench load)"
    echo "Load:     1/5/15-min load average $LOAD_AT_START before the runs (build excluded), $(cut -d' ' -f1-3 /proc/loadavg) after"
} >"$OUT/machine.txt"

echo
cat "$OUT/machine.txt"
echo
"$LOAD" report "${FILES[@]}" --json "$OUT/results.json" --svg "$OUT/chart.svg" \
    --markdown "$OUT/table.md" "${meta[@]}"
echo
log "results: $OUT/results.json, $OUT/table.md, $OUT/chart.svg (logs beside them)"
if [[ $FAILED != 0 ]]; then
    log "some runs failed or lost messages: see the logs above"
    exit 1
fi
