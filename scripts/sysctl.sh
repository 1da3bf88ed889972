#!/usr/bin/env bash
# Kernel parameters for a Portask host: show, check or persist them.
set -euo pipefail

PROG=${0##*/}
SYSCTL_ROOT=${PORTASK_SYSCTL_ROOT:-/proc/sys}
CONF=/etc/sysctl.d/99-portask.conf

usage() {
    cat <<EOF
Usage: $PROG [--check | --apply | --print-conf] [--conf FILE]

Compares the kernel parameters that matter to Portask with recommended values.

  (no option)    print current vs recommended for every parameter; always exits 0
  --check        same table, but exit 1 if any parameter is worse than recommended
  --apply        write FILE (default $CONF) and load it with 'sysctl -p FILE';
                 needs root. Never lowers a value that is already better than the
                 recommendation, so running it again changes nothing.
  --print-conf   print what --apply would write, without writing or loading it
  --conf FILE    file written by --apply (default $CONF)
  -h, --help     this help

Status column: OK, or LOW / HIGH when the value is worse than recommended
(LOW for parameters where more is better, HIGH where less is better, e.g.
vm.swappiness). Multi-value parameters (net.ipv4.tcp_rmem, tcp_wmem) are judged
on their last (max) field. A parameter missing from the kernel is reported as
"absent" and skipped. Removed parameters such as net.ipv4.tcp_tw_recycle are
never read or written.

Environment:
  PORTASK_SYSCTL_ROOT   where parameters are read (default /proc/sys), e.g. a fake tree
                        for tests; --apply refuses anything but /proc/sys.
                        Do not export it where portask runs: portask reads every
                        PORTASK_* variable as a configuration key.
EOF
}

# name | direction | recommended | why
#   direction "min": the value should be at least the recommendation (more is better)
#   direction "max": the value should be at most the recommendation (less is better)
PARAMS=(
    "net.core.somaxconn|min|32768|accept queue cap: reconnect storms of thousands of clients after a restart"
    "net.core.netdev_max_backlog|min|16384|packets queued per CPU before the stack processes them"
    "net.ipv4.tcp_max_syn_backlog|min|32768|half-open connections kept during connect bursts"
    "net.core.rmem_max|min|16777216|cap for SO_RCVBUF (network.socket_receive_buffer_bytes)"
    "net.core.wmem_max|min|16777216|cap for SO_SNDBUF (network.socket_send_buffer_bytes)"
    "net.ipv4.tcp_rmem|min|4096 131072 16777216|max autotuned receive buffer (produce traffic)"
    "net.ipv4.tcp_wmem|min|4096 16384 16777216|max autotuned send buffer (fetch traffic)"
    "net.ipv4.tcp_fin_timeout|max|15|seconds an orphaned closing socket lingers in FIN-WAIT-2"
    "net.ipv4.tcp_keepalive_time|max|300|idle seconds before probing a dead client (sockets with SO_KEEPALIVE)"
    "net.ipv4.tcp_keepalive_intvl|max|30|seconds between keepalive probes"
    "net.ipv4.tcp_keepalive_probes|max|5|unanswered probes before the connection is dropped"
    "fs.file-max|min|2097152|system-wide open files: each connection and segment is a file descriptor"
    "fs.nr_open|min|1048576|ceiling for a process's nofile limit (LimitNOFILE=1048576)"
    "vm.swappiness|max|1|swapping broker memory turns into multi-millisecond stalls"
    "vm.dirty_ratio|max|10|% of memory dirty before writers are throttled: smaller, smoother writeback"
    "vm.dirty_background_ratio|max|5|% of memory dirty before background writeback starts"
    "kernel.io_uring_disabled|max|0|0 = io_uring allowed for all; 1 = only kernel.io_uring_group; 2 = off"
    "fs.aio-max-nr|min|1048576|system-wide async IO contexts"
)

die() {
    echo "$PROG: $*" >&2
    exit 1
}

# Compares two non-negative decimal integers of any length; prints -1, 0 or 1.
num_cmp() {
    local a=$1 b=$2
    a=${a#"${a%%[!0]*}"}
    b=${b#"${b%%[!0]*}"}
    a=${a:-0}
    b=${b:-0}
    if ((${#a} != ${#b})); then
        if ((${#a} < ${#b})); then echo -1; else echo 1; fi
    elif [[ $a == "$b" ]]; then
        echo 0
    elif [[ $a < $b ]]; then
        echo -1
    else
        echo 1
    fi
}

# Sets CUR to the parameter's value (whitespace collapsed) and STATE to present|absent|unreadable.
read_param() {
    local path=$SYSCTL_ROOT/${1//.//}
    CUR=
    if [[ ! -e $path ]]; then
        STATE=absent
    elif [[ ! -r $path ]] || ! CUR=$(tr -s '[:space:]' ' ' <"$path" 2>/dev/null); then
        STATE=unreadable
    else
        CUR=${CUR# }
        CUR=${CUR% }
        STATE=present
    fi
}

# Judges CUR against a recommendation. Sets VERDICT to OK|LOW|HIGH|INVALID and BEST to the value
# --apply writes: the recommendation, or the current value when that is already better.
judge() {
    local dir=$1 rec=$2 cur_last rec_last cmp
    cur_last=${CUR##* }
    rec_last=${rec##* }
    if [[ ! $CUR =~ ^[0-9]+( [0-9]+)*$ ]]; then
        VERDICT=INVALID
        BEST=$rec
        return
    fi
    cmp=$(num_cmp "$cur_last" "$rec_last")
    if [[ $dir == min ]]; then
        if ((cmp >= 0)); then VERDICT=OK; else VERDICT=LOW; fi
    else
        if ((cmp <= 0)); then VERDICT=OK; else VERDICT=HIGH; fi
    fi
    if [[ $VERDICT == OK ]]; then
        BEST=$CUR
    elif [[ $CUR == *" "* ]]; then
        # Multi-value: keep the current min/default fields, raise only the max field.
        BEST="${CUR% *} $rec_last"
    else
        BEST=$rec
    fi
}

MODE=print
while (($#)); do
    case $1 in
        --check) MODE=check ;;
        --apply) MODE=apply ;;
        --print-conf) MODE=conf ;;
        --conf)
            (($# >= 2)) || die "--conf needs a file name"
            CONF=$2
            shift
            ;;
        --conf=*) CONF=${1#--conf=} ;;
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

[[ -d $SYSCTL_ROOT ]] || die "$SYSCTL_ROOT is not a directory (PORTASK_SYSCTL_ROOT)"

print_table() {
    local entry name dir rec why want status bad=0
    local -a worse=()
    printf '%-30s %-24s %-26s %s\n' PARAMETER CURRENT RECOMMENDED STATUS
    for entry in "${PARAMS[@]}"; do
        IFS='|' read -r name dir rec why <<<"$entry"
        if [[ $dir == min ]]; then want=">= ${rec##* }"; else want="<= $rec"; fi
        [[ $rec == *" "* ]] && want="$want (max field)"
        read_param "$name"
        case $STATE in
            absent)
                status=absent
                [[ $name == kernel.io_uring_disabled ]] &&
                    status="absent (kernel older than 6.6: io_uring has no sysctl switch there)"
                printf '%-30s %-24s %-26s %s\n' "$name" - "$want" "$status"
                continue
                ;;
            unreadable)
                printf '%-30s %-24s %-26s %s\n' "$name" "?" "$want" "unreadable (skipped)"
                continue
                ;;
        esac
        judge "$dir" "$rec"
        status=$VERDICT
        if [[ $VERDICT != OK ]]; then
            bad=$((bad + 1))
            worse+=("$name")
            status="$status  ($why)"
        fi
        if [[ $name == kernel.io_uring_disabled && $CUR == 1 ]]; then
            status="$status; the portask user must be in group kernel.io_uring_group"
        fi
        printf '%-30s %-24s %-26s %s\n' "$name" "$CUR" "$want" "$status"
    done
    echo
    if ((bad == 0)); then
        echo "All present parameters meet the recommendations."
    else
        echo "$bad parameter(s) worse than recommended: ${worse[*]}"
        echo "Persist the recommendations with: sudo $0 --apply"
    fi
    return "$((bad > 0 ? 1 : 0))"
}

render_conf() {
    local entry name dir rec why
    echo "# Kernel parameters for Portask, written by scripts/sysctl.sh --apply."
    echo "# Regenerated on every --apply: edit scripts/sysctl.sh or add a later file instead."
    echo "# Values already better than the recommendation are kept as they were."
    for entry in "${PARAMS[@]}"; do
        IFS='|' read -r name dir rec why <<<"$entry"
        read_param "$name"
        [[ $STATE == present ]] || continue
        judge "$dir" "$rec"
        echo
        echo "# $why"
        echo "$name = $BEST"
    done
}

case $MODE in
    print)
        print_table || true
        ;;
    check)
        print_table
        ;;
    conf)
        render_conf
        ;;
    apply)
        [[ $SYSCTL_ROOT == /proc/sys ]] ||
            die "--apply works on the live kernel only; unset PORTASK_SYSCTL_ROOT (now $SYSCTL_ROOT)"
        ((EUID == 0)) ||
            die "--apply needs root: it writes $CONF and loads it with sysctl. Try: sudo $0 --apply"
        command -v sysctl >/dev/null || die "sysctl not found (package procps)"
        new=$(render_conf)
        if [[ -f $CONF ]] && [[ $(<"$CONF") == "$new" ]]; then
            echo "$CONF is up to date"
        else
            mkdir -p "$(dirname "$CONF")"
            tmp=$(mktemp "$CONF.XXXXXX")
            printf '%s\n' "$new" >"$tmp"
            chmod 0644 "$tmp"
            mv -f "$tmp" "$CONF"
            echo "wrote $CONF"
        fi
        sysctl -p "$CONF" >/dev/null ||
            die "sysctl -p $CONF failed (in a container some parameters are read-only); the file is still applied at boot"
        echo "loaded $CONF"
        echo
        print_table || true
        ;;
esac
