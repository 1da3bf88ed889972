#!/usr/bin/env bash
# Runs integration tests and the Kafka load harness against a broker built with
# AddressSanitizer (nightly Rust) or, without nightly, under valgrind; prints why it cannot
# run and exits 0 when neither is available. Optional: CI does not need it.
set -euo pipefail

PROG=${0##*/}
ROOT=$(cd "$(dirname "$0")/.." && pwd)
TESTS=(cross_shard_stress)
ALL=0
LOAD=1
TOOL=auto
DURATION=20s

usage() {
    cat <<USAGE
Usage: $PROG [--test NAME]... [--all] [--no-load] [--tool asan|valgrind] [--duration D]

Memory-error checks of the broker:
  asan      (nightly toolchain) the broker is built with RUSTFLAGS=-Zsanitizer=address,
            cargo +nightly build --target x86_64-unknown-linux-gnu (with -Zbuild-std when
            the nightly has rust-src) into target/asan; the tests (built as usual) start
            it through BROKER_UNDER_TEST; a report ends the broker and shows in its log,
            which the tests check
  valgrind  (no nightly) the tests start the debug broker under valgrind --error-exitcode
Then the load harness (cargo bench --bench load -- kafka) runs for --duration against one
more checked broker, and its log is searched for reports.

  --test NAME     an integration test file to run (repeatable; default: cross_shard_stress)
  --all           the whole test suite instead
  --no-load       skip the load harness
  --tool T        asan or valgrind (default: asan when nightly is installed, else valgrind)
  --duration D    how long the load harness sends (default $DURATION)
  -h, --help      this text
Without nightly and without valgrind it prints why it cannot run and exits 0.
USAGE
}

custom_tests=()
while [ $# -gt 0 ]; do
    case "$1" in
        --test) custom_tests+=("${2:?--test needs a name}"); shift 2 ;;
        --all) ALL=1; shift ;;
        --no-load) LOAD=0; shift ;;
        --tool) TOOL=${2:?--tool needs asan or valgrind}; shift 2 ;;
        --duration) DURATION=${2:?--duration needs a value}; shift 2 ;;
        -h|--help) usage; exit 0 ;;
        *) echo "$PROG: unknown option $1" >&2; usage >&2; exit 2 ;;
    esac
done
if [ ${#custom_tests[@]} -gt 0 ]; then
    TESTS=("${custom_tests[@]}")
fi

have_nightly() { command -v rustup >/dev/null && rustup toolchain list | grep -q '^nightly'; }
if [ "$TOOL" = auto ]; then
    if have_nightly; then
        TOOL=asan
    elif command -v valgrind >/dev/null; then
        TOOL=valgrind
    else
        echo "$PROG: neither a nightly Rust toolchain (rustup toolchain install nightly) nor valgrind is installed: nothing checked"
        exit 0
    fi
fi

cd "$ROOT"
TARGET=x86_64-unknown-linux-gnu
test_args=()
if [ "$ALL" = 0 ]; then
    for t in "${TESTS[@]}"; do test_args+=(--test "$t"); done
fi

case "$TOOL" in
    asan)
        have_nightly || { echo "$PROG: no nightly toolchain: cannot build with AddressSanitizer"; exit 0; }
        build_std=()
        if [ -d "$(rustc +nightly --print sysroot)/lib/rustlib/src/rust/library" ]; then
            build_std=(-Zbuild-std)
        else
            echo "$PROG: nightly has no rust-src (rustup component add rust-src --toolchain nightly): the standard library is not instrumented"
        fi
        # Only the broker is instrumented; the tests and the harness (librdkafka, lapin)
        # are built as usual and drive it through BROKER_UNDER_TEST.
        RUSTFLAGS="-Zsanitizer=address" CARGO_TARGET_DIR="$ROOT/target/asan" \
            cargo +nightly build "${build_std[@]}" --target "$TARGET" --bin portask
        BROKER=$ROOT/target/asan/$TARGET/debug/portask
        export ASAN_OPTIONS="detect_leaks=0:abort_on_error=1"
        REPORT='AddressSanitizer'
        ;;
    valgrind)
        command -v valgrind >/dev/null || { echo "$PROG: valgrind is not installed: nothing checked"; exit 0; }
        cargo build --bin portask
        BROKER=$(mktemp /tmp/portask-valgrind.XXXXXX)
        cat >"$BROKER" <<WRAP
#!/usr/bin/env bash
exec valgrind --quiet --error-exitcode=99 "$ROOT/target/debug/portask" "\$@"
WRAP
        chmod +x "$BROKER"
        REPORT='Invalid read\|Invalid write\|Invalid free\|Mismatched free'
        ;;
    *) echo "$PROG: unknown tool $TOOL" >&2; exit 2 ;;
esac
echo "$PROG: tests against $BROKER ($TOOL)"
BROKER_UNDER_TEST=$BROKER cargo test "${test_args[@]}"

if [ "$LOAD" = 1 ]; then
    free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
    data=$(mktemp -d /tmp/portask-sanitize.XXXXXX)
    kafka=$(free_port); amqp=$(free_port); http=$(free_port)
    "$BROKER" --data-dir "$data/data" --shards 2 --placement unpinned \
        --kafka-addr "127.0.0.1:$kafka" --amqp-addr "127.0.0.1:$amqp" \
        --http-addr "127.0.0.1:$http" >"$data/broker.log" 2>&1 &
    pid=$!
    for _ in $(seq 1 600); do
        (exec 3<>"/dev/tcp/127.0.0.1/$kafka") 2>/dev/null && break
        sleep 0.1
    done
    status=0
    cargo bench --bench load -- kafka \
        --brokers "127.0.0.1:$kafka" --partitions 6 --producers 2 --consumers 2 \
        --duration "$DURATION" || status=$?
    if kill -0 "$pid" 2>/dev/null; then
        kill -TERM "$pid"
        wait "$pid" || true
    else
        echo "$PROG: the broker died under the load harness"
        status=1
    fi
    if grep -q "$REPORT" "$data/broker.log"; then
        echo "$PROG: $TOOL reported errors; broker log: $data/broker.log"
        status=1
    fi
    [ "$status" = 0 ] && echo "$PROG: load harness under $TOOL: no reports"
    exit "$status"
fi
