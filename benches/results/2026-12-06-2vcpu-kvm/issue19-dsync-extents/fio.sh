#!/usr/bin/env bash
# fio.sh DIR: the latency of one 4 KiB O_DIRECT | O_DSYNC write through io_uring (queue
# depth 1) on the file system of DIR, by what the write lands on. DIR must not hold the
# files t.dat / zero.dat already; they are removed afterwards.
set -u
dir=$1
run() { # NAME FIO-ARGS...: prints NAME and the p50 / mean latency
    local name=$1; shift
    printf '%-44s' "$name"
    out=$(fio --name=t --directory="$dir" --ioengine=io_uring --direct=1 --sync=dsync \
        --rw=write --bs=4k --iodepth=1 --numjobs=1 "$@" 2>&1)
    p50=$(grep -o '50.00th=\[ *[0-9]*\]' <<< "$out" | head -1 | sed 's/.*\[ *//; s/\]//')
    mean=$(grep -E '^ +lat \(usec\): min' <<< "$out" | grep -o 'avg=[0-9.]*' | cut -d= -f2)
    echo "p50 $p50 us, mean $mean us"
    rm -f "$dir/t.dat" "$dir/zero.dat"
}
run "appended (the file grows: a segment today)" --filename=t.dat --size=32m --fallocate=none --file_append=1
run "into a hole (sparse, i_size already past)" --filename=t.dat --size=32m --fallocate=none
run "past EOF into FALLOC_FL_KEEP_SIZE blocks" --filename=t.dat --size=32m --fallocate=keep
run "into fallocate'd (unwritten) blocks" --filename=t.dat --size=32m --fallocate=native
dd if=/dev/zero of="$dir/zero.dat" bs=1M count=32 oflag=direct status=none
run "over written blocks (pre-zeroed)" --filename=zero.dat --size=32m --fallocate=none
