#!/usr/bin/env bash
# Start Portask on the CPUs and memory of one NUMA node, or one broker per node.
set -euo pipefail

PROG=${0##*/}
SYS_ROOT=${PORTASK_SYS_ROOT:-/sys}
BIN=${PORTASK_BIN:-portask}
KAFKA_BASE=9092
AMQP_BASE=5672
HTTP_BASE=8080
BIND=0.0.0.0
DATA_PREFIX=./shards-node

usage() {
    cat <<EOF
Usage: $PROG [--node N | --per-node] [--run] [--tool auto|numactl|taskset]
             [--bind ADDR] [--kafka-port P] [--amqp-port P] [--http-port P]
             [--data-prefix PATH] [-- PORTASK-ARGS...]

Prints (or runs) the command that starts Portask bound to a NUMA node, so every shard
runs on that node's CPUs and allocates from that node's memory. Portask then starts
one shard per CPU it is allowed to run on (shards = 0, placement = "pinned").

  --node N        node to bind (default 0)
  --per-node      one independent broker per NUMA node that has CPUs; each gets its own
                  ports and data directory, all derived from the node number N:
                    --kafka-addr BIND:(9092+N) --amqp-addr BIND:(5672+N)
                    --http-addr BIND:(8080+N)  --data-dir ./shards-node<N>
                  (bases and prefix changeable with the options below)
  --run           run the command instead of printing it (with --per-node: start all,
                  forward SIGTERM/SIGINT, and stop the rest as soon as one exits)
  --tool T        numactl: numactl --cpunodebind=N --membind=N -- portask ...
                  taskset: taskset -c <node cpulist> portask ... (CPUs only; memory
                           then follows the kernel's first-touch policy)
                  auto (default): numactl when installed and the machine has NUMA
                  nodes, else taskset
  --bind ADDR     listen host for --per-node (default $BIND)
  --kafka-port P, --amqp-port P, --http-port P
                  base ports for --per-node (defaults $KAFKA_BASE, $AMQP_BASE, $HTTP_BASE)
  --data-prefix PATH
                  data directory prefix for --per-node (default $DATA_PREFIX)
  -- ARGS         passed to portask after the generated flags (e.g. --config FILE)
  -h, --help      this help

Topology comes from \$PORTASK_SYS_ROOT/devices/system/node/node*/cpulist (default
/sys); without node directories the machine is treated as one node 0 holding every
online CPU. --membind makes allocations fail rather than spill to another node; use
numactl --preferred by hand if you would rather spill.

Environment:
  PORTASK_BIN       the portask binary (default: portask from PATH)
  PORTASK_SYS_ROOT  sysfs root (default /sys), for tests
  Both are removed from the environment before --run starts portask, which reads every
  PORTASK_* variable as a configuration key; unset them yourself before running a
  printed command.
EOF
}

die() {
    echo "$PROG: $*" >&2
    exit 1
}

NODE=0
PER_NODE=0
RUN=0
TOOL=auto
EXTRA=()
while (($#)); do
    case $1 in
        --node | --tool | --bind | --kafka-port | --amqp-port | --http-port | --data-prefix)
            (($# >= 2)) || die "$1 needs a value"
            case $1 in
                --node) NODE=$2 ;;
                --tool) TOOL=$2 ;;
                --bind) BIND=$2 ;;
                --kafka-port) KAFKA_BASE=$2 ;;
                --amqp-port) AMQP_BASE=$2 ;;
                --http-port) HTTP_BASE=$2 ;;
                --data-prefix) DATA_PREFIX=$2 ;;
            esac
            shift
            ;;
        --per-node) PER_NODE=1 ;;
        --run) RUN=1 ;;
        -h | --help)
            usage
            exit 0
            ;;
        --)
            shift
            EXTRA=("$@")
            break
            ;;
        *)
            echo "$PROG: unknown argument: $1" >&2
            usage >&2
            exit 2
            ;;
    esac
    shift
done

[[ $NODE =~ ^[0-9]+$ ]] || die "--node needs a node number, got: $NODE"
for p in "$KAFKA_BASE" "$AMQP_BASE" "$HTTP_BASE"; do
    if [[ ! $p =~ ^[0-9]+$ ]] || ((p == 0 || p > 65535)); then die "bad port: $p"; fi
done
case $TOOL in auto | numactl | taskset) ;; *) die "--tool must be auto, numactl or taskset" ;; esac

# --- topology: NODES (sorted node numbers) and CPUS[node] (cpulist, may be empty) ---
declare -A CPUS=()
NODES=()
HAVE_NUMA=0
node_dir=$SYS_ROOT/devices/system/node
if compgen -G "$node_dir/node[0-9]*" >/dev/null; then
    for d in "$node_dir"/node[0-9]*; do
        n=${d##*/node}
        [[ $n =~ ^[0-9]+$ && -r $d/cpulist ]] || continue
        list=$(tr -d '[:space:]' <"$d/cpulist")
        CPUS[$n]=$list
    done
fi
if ((${#CPUS[@]} > 0)); then
    HAVE_NUMA=1
    mapfile -t NODES < <(printf '%s\n' "${!CPUS[@]}" | sort -n)
else
    online=$SYS_ROOT/devices/system/cpu/online
    if [[ -r $online ]]; then
        CPUS[0]=$(tr -d '[:space:]' <"$online")
    else
        CPUS[0]="0-$(($(nproc) - 1))"
    fi
    NODES=(0)
fi

if [[ $TOOL == auto ]]; then
    if ((HAVE_NUMA)) && command -v numactl >/dev/null; then TOOL=numactl; else TOOL=taskset; fi
fi

# Fills CMD with the command for node $1.
build_cmd() {
    local n=$1
    if [[ -z ${CPUS[$n]+set} ]]; then
        die "no NUMA node $n (nodes: ${NODES[*]})"
    fi
    [[ -n ${CPUS[$n]} ]] || die "NUMA node $n has no CPUs (memory-only node)"
    if [[ $TOOL == numactl ]]; then
        CMD=(numactl "--cpunodebind=$n" "--membind=$n" -- "$BIN")
    else
        CMD=(taskset -c "${CPUS[$n]}" "$BIN")
    fi
    if ((PER_NODE)); then
        ((KAFKA_BASE + n < 65536 && AMQP_BASE + n < 65536 && HTTP_BASE + n < 65536)) ||
            die "node $n: port above 65535 (lower the base ports)"
        CMD+=(--kafka-addr "$BIND:$((KAFKA_BASE + n))"
            --amqp-addr "$BIND:$((AMQP_BASE + n))"
            --http-addr "$BIND:$((HTTP_BASE + n))"
            --data-dir "$DATA_PREFIX$n")
    fi
    CMD+=("${EXTRA[@]}")
}

print_cmd() {
    local out
    printf -v out '%q ' "${CMD[@]}"
    echo "${out% }"
}

if ((PER_NODE)); then
    TARGETS=()
    for n in "${NODES[@]}"; do
        if [[ -z ${CPUS[$n]} ]]; then
            echo "$PROG: skipping NUMA node $n: it has no CPUs" >&2
            continue
        fi
        TARGETS+=("$n")
    done
    ((${#TARGETS[@]} > 0)) || die "no NUMA node has CPUs"
else
    TARGETS=("$NODE")
fi

if ((!RUN)); then
    for n in "${TARGETS[@]}"; do
        build_cmd "$n"
        if ((PER_NODE)); then echo "# node $n: cpus ${CPUS[$n]}"; fi
        print_cmd
    done
    if [[ -n ${PORTASK_BIN+set} || -n ${PORTASK_SYS_ROOT+set} ]]; then
        echo "$PROG: note: unset PORTASK_BIN and PORTASK_SYS_ROOT before running these commands;" \
            "portask treats every PORTASK_* variable as a configuration key" >&2
    fi
    exit 0
fi

# --- run ---
command -v "$TOOL" >/dev/null || die "$TOOL is not installed (try --tool taskset, or install numactl)"
unset PORTASK_BIN PORTASK_SYS_ROOT

if ((!PER_NODE)); then
    build_cmd "${TARGETS[0]}"
    echo "$PROG: exec $(print_cmd)" >&2
    exec "${CMD[@]}"
fi

PIDS=()
SIGNALLED=0
stop_all() {
    kill -TERM "${PIDS[@]}" 2>/dev/null || true
}
trap 'SIGNALLED=1; stop_all' TERM INT
for n in "${TARGETS[@]}"; do
    build_cmd "$n"
    echo "$PROG: node $n: $(print_cmd)" >&2
    "${CMD[@]}" &
    PIDS+=($!)
done
status=0
wait -n || status=$?
if ((SIGNALLED)); then
    status=0 # asked to stop: a clean stop, as systemd expects
else
    echo "$PROG: an instance exited (status $status); stopping the others" >&2
fi
stop_all
wait || true
exit "$status"
