#!/usr/bin/env bash
# Runs the client-compatibility scenarios of scripts/clients/ against a fresh release
# Portask: Python (pika, kafka-python, confluent-kafka), Node (amqplib, kafkajs), Go
# (amqp091-go, Sarama from Debian, GOPATH mode), Java (Debian's RabbitMQ client) and kcat.
set -euo pipefail

usage() {
    cat <<'USAGE'
Usage: scripts/client-compat.sh [--no-install] [--only NAME[,NAME...]] [--keep]

Installs what is missing (Debian packages with apt-get; the Python clients into a venv and
the Node clients into a folder, both under $CARGO_TARGET_DIR or target/, in client-compat/),
builds the broker with `cargo build --release`, starts it in a temp dir on ephemeral
loopback ports with 2 unpinned shards, runs each scenario program of scripts/clients/
(each prints PASS/FAIL/SKIP lines), prints a table and exits 1 if any scenario failed.

  --no-install   use what is installed
  --only NAMES   run only these: pika kafka-python kafka-python-old confluent-kafka
                 amqplib kafkajs amqp091-go sarama sarama-0.11 java kcat
  --keep         keep the broker's data dir, log and per-client stderr
USAGE
}

repo=$(cd "$(dirname "$0")/.." && pwd)
target=${CARGO_TARGET_DIR:-$repo/target}
work=$target/client-compat
clients=$repo/scripts/clients
install=1
only=""
keep=0
while [[ $# -gt 0 ]]; do
    case $1 in
        --no-install) install=0 ;;
        --only) only=${2:?--only needs a list}; shift ;;
        --keep) keep=1 ;;
        -h|--help) usage; exit 0 ;;
        *) echo "unknown argument $1" >&2; usage >&2; exit 2 ;;
    esac
    shift
done
wanted() { [[ -z $only || ",$only," == *",$1,"* ]]; }
log() { echo "== $*" >&2; }

mkdir -p "$work"

# --- installs -----------------------------------------------------------------------------
apt_pkgs=(golang-go golang-github-rabbitmq-amqp091-go-dev golang-github-shopify-sarama-dev
          librabbitmq-client-java libslf4j-java kcat python3-venv nodejs npm)
command -v javac >/dev/null || apt_pkgs+=(default-jdk-headless)
if [[ $install == 1 ]]; then
    missing=()
    for p in "${apt_pkgs[@]}"; do
        dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "ok installed" || missing+=("$p")
    done
    # Node and Python may come from elsewhere than Debian (e.g. pyenv, nodesource).
    if command -v node >/dev/null && command -v npm >/dev/null; then
        missing=("${missing[@]/nodejs/}"); missing=("${missing[@]/npm/}")
    fi
    python3 -m venv --help >/dev/null 2>&1 && missing=("${missing[@]/python3-venv/}")
    read -ra missing <<<"${missing[*]}"
    if [[ ${#missing[@]} -gt 0 ]]; then
        log "apt-get install ${missing[*]}"
        SUDO=""; [[ $(id -u) -ne 0 ]] && SUDO=sudo
        if ! { $SUDO apt-get update -qq \
            && DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${missing[@]}" >/dev/null; }; then
            echo "apt-get install failed" >&2
            exit 2
        fi
    fi
    if [[ ! -x $work/venv/bin/python ]]; then
        python3 -m venv "$work/venv" || exit 2
    fi
    "$work/venv/bin/python" -c 'import pika, kafka, confluent_kafka, snappy, lz4, zstandard' 2>/dev/null || {
        log "pip install into $work/venv"
        "$work/venv/bin/pip" install -q pika kafka-python confluent-kafka python-snappy lz4 zstandard || exit 2
    }
    mkdir -p "$work/node"
    if [[ ! -d $work/node/node_modules/kafkajs-lz4 ]]; then
        log "npm install into $work/node"
        (cd "$work/node" && { [[ -f package.json ]] || npm init -y >/dev/null; } \
            && npm install --no-audit --no-fund amqplib kafkajs kafkajs-snappy kafkajs-lz4 >/dev/null) || exit 2
    fi
fi

# --- builds -------------------------------------------------------------------------------
log "cargo build --release"
(cd "$repo" && cargo build --release -q) || { echo "broker build failed" >&2; exit 2; }
broker=$target/release/portask

gobuild() { # dir, output
    GO111MODULE=off GOPATH=/usr/share/gocode GOCACHE=$work/gocache \
        go build -o "$2" "$1" 2> >(grep -v -e zstd -e cgo-gcc-prolog -e '^ *[0-9]* |' -e '^ *|' >&2)
}
javacp=/usr/share/java/amqp-client.jar:/usr/share/java/slf4j-api.jar:/usr/share/java/slf4j-nop.jar
if wanted amqp091-go; then (cd "$clients/go-amqp091" && gobuild . "$work/go-amqp091") || log "amqp091-go build failed"; fi
if wanted sarama || wanted sarama-0.11; then (cd "$clients/go-sarama" && gobuild . "$work/go-sarama") || log "sarama build failed"; fi
if wanted java; then
    mkdir -p "$work/java"
    javac -d "$work/java" -cp "$javacp" "$clients/JavaAmqp.java" || log "JavaAmqp build failed"
fi

# --- the broker ---------------------------------------------------------------------------
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
data=$(mktemp -d /tmp/portask-compat.XXXXXX)
kport=$(free_port); aport=$(free_port); hport=$(free_port)
RUST_LOG=${RUST_LOG:-info} "$broker" --data-dir "$data/data" --shards 2 --placement unpinned \
    --kafka-addr "127.0.0.1:$kport" --amqp-addr "127.0.0.1:$aport" --http-addr "127.0.0.1:$hport" \
    >"$data/broker.log" 2>&1 &
bpid=$!
# shellcheck disable=SC2317 # called by the EXIT trap
cleanup() {
    if kill "$bpid" 2>/dev/null; then
        wait "$bpid" 2>/dev/null || true
    fi
    if [[ $keep == 1 ]]; then echo "broker data and log kept in $data" >&2; else rm -rf "$data"; fi
}
trap cleanup EXIT
ready=0
for _ in $(seq 1 300); do
    if (exec 3<>"/dev/tcp/127.0.0.1/$kport") 2>/dev/null && (exec 3<>"/dev/tcp/127.0.0.1/$aport") 2>/dev/null \
        && [[ $(grep -c "partitions recovered" "$data/broker.log") -ge 2 ]]; then
        ready=1; break
    fi
    kill -0 "$bpid" 2>/dev/null || break
    sleep 0.1
done
if [[ $ready != 1 ]]; then
    echo "broker did not start:" >&2; tail -20 "$data/broker.log" >&2; exit 2
fi
log "broker pid $bpid: kafka 127.0.0.1:$kport, amqp 127.0.0.1:$aport (log $data/broker.log)"
bootstrap=127.0.0.1:$kport
amqp_url=amqp://guest:guest@127.0.0.1:$aport/%2f

# --- scenarios ----------------------------------------------------------------------------
py=$work/venv/bin/python
pyver() { "$py" -c "import importlib.metadata as m; print(m.version('$1'))" 2>/dev/null || echo "?"; }
npmver() { node -p "require('$work/node/node_modules/$1/package.json').version" 2>/dev/null || echo "?"; }
debver() { dpkg-query -W -f='${Version}' "$1" 2>/dev/null || echo "?"; }

results=$data/results.txt
: >"$results"
status=0
scenario() { # name, version, command...
    local name=$1 version=$2
    shift 2
    wanted "$name" || return 0
    log "$name $version"
    local out rc=0
    out=$(cd "$clients" && NODE_PATH=$work/node/node_modules timeout 300 "$@" 2>"$data/$name.stderr") || rc=$?
    echo "$out"
    if ! grep -q '^\(PASS\|FAIL\|SKIP\) ' <<<"$out" || [[ $rc -ne 0 ]]; then
        status=1
        if ! grep -q '^FAIL ' <<<"$out"; then
            echo "FAIL $name run: exit $rc; $(tail -3 "$data/$name.stderr" | tr '\n' ' ')"
            echo "$name|$version|(run)|FAIL exit $rc" >>"$results"
        fi
    fi
    grep '^\(PASS\|FAIL\|SKIP\) ' <<<"$out" | while read -r verdict _client scen _rest; do
        echo "$name|$version|${scen%:}|$verdict" >>"$results"
    done || true
}

scenario pika "$(pyver pika)" "$py" py_pika.py "$amqp_url"
scenario kafka-python "$(pyver kafka-python)" "$py" py_kafka_python.py "$bootstrap"
scenario kafka-python-old "$(pyver kafka-python) api_version=1.0" "$py" py_kafka_python.py "$bootstrap" 1.0
scenario confluent-kafka "$(pyver confluent-kafka) (librdkafka $("$py" -c 'import confluent_kafka as c; print(c.libversion()[0])' 2>/dev/null))" \
    "$py" py_confluent.py "$bootstrap"
scenario amqplib "$(npmver amqplib)" node node_amqplib.js "amqp://guest:guest@127.0.0.1:$aport"
scenario kafkajs "$(npmver kafkajs)" node node_kafkajs.js "$bootstrap"
scenario amqp091-go "$(debver golang-github-rabbitmq-amqp091-go-dev)" "$work/go-amqp091" "amqp://guest:guest@127.0.0.1:$aport/"
scenario sarama "$(debver golang-github-shopify-sarama-dev) Version=2.1.0" "$work/go-sarama" "$bootstrap"
scenario sarama-0.11 "$(debver golang-github-shopify-sarama-dev) Version=0.11.0" "$work/go-sarama" "$bootstrap" 0.11.0.0
scenario java "$(debver librabbitmq-client-java)" java -cp "$work/java:$javacp" JavaAmqp "amqp://guest:guest@127.0.0.1:$aport/%2f"
scenario kcat "$(debver kcat)" bash kcat.sh "$bootstrap"

if ! kill -0 "$bpid" 2>/dev/null; then
    echo "the broker died during the run:" >&2; tail -20 "$data/broker.log" >&2; status=1
fi
if grep -q "panicked" "$data/broker.log"; then
    echo "the broker log has a panic:" >&2; grep -A5 panicked "$data/broker.log" >&2; status=1
fi

echo
printf '| %-17s | %-28s | %-28s | %-6s |\n' client version scenario result
printf '|%s|%s|%s|%s|\n' "$(printf -- '-%.0s' {1..19})" "$(printf -- '-%.0s' {1..30})" "$(printf -- '-%.0s' {1..30})" "$(printf -- '-%.0s' {1..8})"
while IFS='|' read -r c v s r; do
    printf '| %-17s | %-28s | %-28s | %-6s |\n' "$c" "$v" "$s" "$r"
done <"$results"
pass=$(grep -c '|PASS$' "$results" || true)
fail=$(grep -c '|FAIL' "$results" || true)
skip=$(grep -c '|SKIP$' "$results" || true)
echo
echo "$pass passed, $fail failed, $skip skipped"
if [[ $fail -gt 0 ]]; then status=1; fi
exit "$status"
