#!/usr/bin/env bash
# Is a Portask broker up? Checks its Kafka, AMQP and HTTP ports and GET /health.
set -euo pipefail

PROG=${0##*/}

usage() {
    cat <<EOF
Usage: $PROG [--host HOST] [--kafka-port P] [--amqp-port P] [--http-port P]
             [--timeout SECONDS] [--quiet]

Checks that the Kafka, AMQP and HTTP ports accept a TCP connection, then that
GET /health on the HTTP port answers 200 (with curl when installed, else a plain
HTTP/1.0 request over bash's /dev/tcp). Exits 0 when everything passed, 1 with a
message naming each check that failed, 2 on bad usage.

  --host HOST       broker host (default: from the addresses below, else 127.0.0.1)
  --kafka-port P    Kafka port (default 9092); 0 skips the check
  --amqp-port P     AMQP port (default 5672); 0 skips the check
  --http-port P     HTTP port (default 8080); 0 skips the TCP and /health checks
  --timeout S       seconds allowed for each check (default 3)
  --quiet           print nothing on success
  -h, --help        this help

Environment: the broker's own address overrides are understood, so the check can
run with the same environment as the broker (e.g. a container HEALTHCHECK):
  PORTASK_KAFKA__ADDR, PORTASK_AMQP__ADDR, PORTASK_HTTP__ADDR   e.g. 0.0.0.0:19092
A wildcard listen host (0.0.0.0, ::) is checked on the loopback address.
Flags win over the environment.
EOF
}

die_usage() {
    echo "$PROG: $*" >&2
    exit 2
}

# Splits "host:port" or "[v6]:port" into ADDR_HOST and ADDR_PORT.
split_addr() {
    local addr=$1
    if [[ $addr =~ ^\[(.*)\]:([0-9]+)$ || $addr =~ ^([^:]*):([0-9]+)$ ]]; then
        ADDR_HOST=${BASH_REMATCH[1]}
        ADDR_PORT=${BASH_REMATCH[2]}
    else
        die_usage "cannot parse address '$addr' (want host:port)"
    fi
}

HOST=
KAFKA_PORT=9092
AMQP_PORT=5672
HTTP_PORT=8080
TIMEOUT=3
QUIET=0

env_host=
for var in PORTASK_KAFKA__ADDR PORTASK_AMQP__ADDR PORTASK_HTTP__ADDR; do
    [[ -n ${!var:-} ]] || continue
    split_addr "${!var}"
    case $var in
        PORTASK_KAFKA__ADDR) KAFKA_PORT=$ADDR_PORT ;;
        PORTASK_AMQP__ADDR) AMQP_PORT=$ADDR_PORT ;;
        PORTASK_HTTP__ADDR) HTTP_PORT=$ADDR_PORT ;;
    esac
    [[ -n $env_host ]] || env_host=$ADDR_HOST
done

while (($#)); do
    case $1 in
        --host | --kafka-port | --amqp-port | --http-port | --timeout)
            (($# >= 2)) || die_usage "$1 needs a value"
            case $1 in
                --host) HOST=$2 ;;
                --kafka-port) KAFKA_PORT=$2 ;;
                --amqp-port) AMQP_PORT=$2 ;;
                --http-port) HTTP_PORT=$2 ;;
                --timeout) TIMEOUT=$2 ;;
            esac
            shift
            ;;
        --quiet | -q) QUIET=1 ;;
        -h | --help)
            usage
            exit 0
            ;;
        *)
            echo "$PROG: unknown argument: $1" >&2
            usage >&2
            exit 2
            ;;
    esac
    shift
done

for p in "$KAFKA_PORT" "$AMQP_PORT" "$HTTP_PORT"; do
    if [[ ! $p =~ ^[0-9]+$ ]] || ((p > 65535)); then die_usage "bad port: $p"; fi
done
[[ $TIMEOUT =~ ^[0-9]+([.][0-9]+)?$ ]] || die_usage "bad timeout: $TIMEOUT"

if [[ -z $HOST ]]; then
    HOST=${env_host:-127.0.0.1}
fi
HOST=${HOST#\[}
HOST=${HOST%\]}
case $HOST in
    "" | 0.0.0.0) HOST=127.0.0.1 ;;
    :: | 0:0:0:0:0:0:0:0) HOST=::1 ;;
esac
if [[ $HOST == *:* ]]; then URL_HOST="[$HOST]"; else URL_HOST=$HOST; fi

FAILED=()
say() {
    if ((!QUIET)); then echo "$@"; fi
}

# True when host $1 accepts a TCP connection on port $2 within the timeout.
tcp_open() {
    # shellcheck disable=SC2016 # $1 and $2 expand in the child bash, on purpose
    timeout "$TIMEOUT" bash -c 'exec 3<>"/dev/tcp/$1/$2"' _ "$1" "$2" 2>/dev/null
}

# Prints the HTTP status code of GET /health (000 when there was no answer).
health_status() {
    local code
    if command -v curl >/dev/null; then
        code=$(curl -s -o /dev/null -w '%{http_code}' --max-time "$TIMEOUT" \
            "http://$URL_HOST:$HTTP_PORT/health") || true
    else
        # shellcheck disable=SC2016 # $1..$3 expand in the child bash, on purpose
        code=$(timeout "$TIMEOUT" bash -c '
            exec 3<>"/dev/tcp/$1/$2" || exit 1
            printf "GET /health HTTP/1.0\r\nHost: %s\r\nConnection: close\r\n\r\n" "$3" >&3
            IFS=" " read -r _ status _ <&3 && printf "%s" "$status"
        ' _ "$HOST" "$HTTP_PORT" "$URL_HOST:$HTTP_PORT" 2>/dev/null) || true
    fi
    [[ $code =~ ^[0-9]{3}$ ]] || code=000
    echo "$code"
}

check_port() {
    local name=$1 port=$2
    if ((port == 0)); then
        say "$name: skipped (port 0)"
        return 1
    fi
    if tcp_open "$HOST" "$port"; then
        say "$name: $HOST:$port accepts connections"
        return 0
    fi
    FAILED+=("$name port $HOST:$port does not accept TCP connections (refused or no answer within ${TIMEOUT}s)")
    return 1
}

check_port kafka "$KAFKA_PORT" || true
check_port amqp "$AMQP_PORT" || true
if check_port http "$HTTP_PORT"; then
    code=$(health_status)
    if [[ $code == 200 ]]; then
        say "http: GET /health returned 200"
    elif [[ $code == 000 ]]; then
        FAILED+=("http GET http://$URL_HOST:$HTTP_PORT/health got no HTTP answer within ${TIMEOUT}s")
    else
        FAILED+=("http GET http://$URL_HOST:$HTTP_PORT/health returned $code, want 200")
    fi
fi

if ((${#FAILED[@]} > 0)); then
    for f in "${FAILED[@]}"; do
        echo "$PROG: FAILED: $f" >&2
    done
    exit 1
fi
say "portask at $HOST is healthy"
