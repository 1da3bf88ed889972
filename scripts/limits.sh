#!/usr/bin/env bash
# Resource limits (open files, locked memory) for Portask: show, check or persist them.
set -euo pipefail

PROG=${0##*/}
CONF=/etc/security/limits.d/99-portask.conf
NOFILE_REC=1048576
MEMLOCK_REC_KIB=524288 # 512 MiB
LIMITS_USER='*'
PID=

usage() {
    cat <<EOF
Usage: $PROG [--check | --apply | --print-conf] [--pid PID] [--user NAME] [--conf FILE]

Compares resource limits with what Portask needs:
  nofile   soft and hard >= $NOFILE_REC: one descriptor per connection, segment and index
  memlock  unlimited or >= $MEMLOCK_REC_KIB KiB (512 MiB): io_uring rings and registered
           buffers are locked memory (kernels before 5.12 charge the rings too)

  (no option)    print the limits of this shell (or of --pid) vs recommended; exits 0
  --check        same, but exit 1 if any limit is too low
  --apply        write FILE (default $CONF) for pam_limits; needs root.
                 Takes effect at the next login session. A systemd service ignores it:
                 set LimitNOFILE= and LimitMEMLOCK= in the unit (scripts/portask.service).
  --print-conf   print what --apply would write
  --pid PID      check a running process (e.g. the broker) via /proc/PID/limits
  --user NAME    user the --apply lines are for (default '*', all users; root is
                 added explicitly since '*' does not cover it)
  --conf FILE    file written by --apply (default $CONF)
  -h, --help     this help
EOF
}

die() {
    echo "$PROG: $*" >&2
    exit 1
}

MODE=print
while (($#)); do
    case $1 in
        --check) MODE=check ;;
        --apply) MODE=apply ;;
        --print-conf) MODE=conf ;;
        --pid | --user | --conf)
            (($# >= 2)) || die "$1 needs a value"
            case $1 in
                --pid) PID=$2 ;;
                --user) LIMITS_USER=$2 ;;
                --conf) CONF=$2 ;;
            esac
            shift
            ;;
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

# Sets NOFILE_SOFT, NOFILE_HARD (counts) and MEMLOCK_SOFT, MEMLOCK_HARD (KiB), each a number
# or "unlimited".
read_limits() {
    if [[ -n $PID ]]; then
        [[ $PID =~ ^[0-9]+$ ]] || die "--pid needs a number, got: $PID"
        local f=/proc/$PID/limits line
        [[ -r $f ]] || die "cannot read $f (no such process, or not allowed)"
        line=$(grep '^Max open files' "$f") || die "no 'Max open files' line in $f"
        read -r NOFILE_SOFT NOFILE_HARD _ <<<"${line#Max open files}"
        line=$(grep '^Max locked memory' "$f") || die "no 'Max locked memory' line in $f"
        read -r MEMLOCK_SOFT MEMLOCK_HARD _ <<<"${line#Max locked memory}"
        # /proc/PID/limits gives bytes; ulimit and limits.conf use KiB.
        [[ $MEMLOCK_SOFT == unlimited ]] || MEMLOCK_SOFT=$((MEMLOCK_SOFT / 1024))
        [[ $MEMLOCK_HARD == unlimited ]] || MEMLOCK_HARD=$((MEMLOCK_HARD / 1024))
        WHOSE="process $PID"
    else
        NOFILE_SOFT=$(ulimit -Sn)
        NOFILE_HARD=$(ulimit -Hn)
        MEMLOCK_SOFT=$(ulimit -Sl)
        MEMLOCK_HARD=$(ulimit -Hl)
        WHOSE="this shell (pid $$); the broker inherits the limits of whatever starts it"
    fi
}

# True when a limit (number or "unlimited") is at least the given number.
at_least() {
    [[ $1 == unlimited ]] || { [[ $1 =~ ^[0-9]+$ ]] && (($1 >= $2)); }
}

print_table() {
    local bad=0 status
    local -a low=()
    echo "Limits of $WHOSE:"
    printf '%-14s %-12s %-12s %-28s %s\n' LIMIT SOFT HARD RECOMMENDED STATUS
    if at_least "$NOFILE_SOFT" "$NOFILE_REC" && at_least "$NOFILE_HARD" "$NOFILE_REC"; then
        status=OK
    else
        status="LOW  (too few connections/segments before EMFILE)"
        bad=$((bad + 1))
        low+=(nofile)
    fi
    printf '%-14s %-12s %-12s %-28s %s\n' nofile "$NOFILE_SOFT" "$NOFILE_HARD" ">= $NOFILE_REC" "$status"
    if at_least "$MEMLOCK_SOFT" "$MEMLOCK_REC_KIB" && at_least "$MEMLOCK_HARD" "$MEMLOCK_REC_KIB"; then
        status=OK
    else
        status="LOW  (io_uring setup or buffer registration can fail with ENOMEM)"
        bad=$((bad + 1))
        low+=(memlock)
    fi
    printf '%-14s %-12s %-12s %-28s %s\n' "memlock (KiB)" "$MEMLOCK_SOFT" "$MEMLOCK_HARD" \
        "unlimited or >= $MEMLOCK_REC_KIB" "$status"

    local nr_open_file=${PORTASK_SYSCTL_ROOT:-/proc/sys}/fs/nr_open nr_open
    if [[ -r $nr_open_file ]]; then
        nr_open=$(<"$nr_open_file")
        if [[ $nr_open =~ ^[0-9]+$ ]] && ((nr_open < NOFILE_REC)); then
            echo
            echo "note: fs.nr_open is $nr_open: no process can get nofile above it; raise it first (scripts/sysctl.sh --apply)"
        fi
    fi
    echo
    if ((bad == 0)); then
        echo "All limits meet the recommendations."
        return 0
    fi
    echo "Too low: ${low[*]}"
    echo "For a systemd service: LimitNOFILE=$NOFILE_REC and LimitMEMLOCK=infinity in the unit."
    echo "For login sessions: sudo $0 --apply (then log in again)."
    echo "For this shell only: ulimit -n $NOFILE_REC; ulimit -l unlimited (within the hard limits)."
    return 1
}

render_conf() {
    local u users=("$LIMITS_USER")
    [[ $LIMITS_USER == '*' ]] && users+=(root)
    echo "# Resource limits for Portask, written by scripts/limits.sh --apply (pam_limits)."
    echo "# Applies to new login sessions only; systemd services use LimitNOFILE=/LimitMEMLOCK=."
    echo "# memlock is in KiB; io_uring rings and registered buffers count against it."
    for u in "${users[@]}"; do
        printf '%-10s %-5s %-8s %s\n' "$u" soft nofile "$NOFILE_REC" "$u" hard nofile "$NOFILE_REC" \
            "$u" soft memlock unlimited "$u" hard memlock unlimited
    done
}

case $MODE in
    print)
        read_limits
        print_table || true
        ;;
    check)
        read_limits
        print_table
        ;;
    conf)
        render_conf
        ;;
    apply)
        ((EUID == 0)) || die "--apply needs root: it writes $CONF. Try: sudo $0 --apply"
        [[ $LIMITS_USER =~ ^[A-Za-z0-9_.@*%:-]+$ ]] || die "--user: not a limits.conf domain: $LIMITS_USER"
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
        echo "New login sessions get these limits; restart services through their own unit settings."
        ;;
esac
