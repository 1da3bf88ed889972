#!/usr/bin/env bash
# kcat (Debian's) as a CLI check against Portask's Kafka port: metadata, keyed produce
# with acks=all and each codec, headers, consume from the beginning, a balanced-group
# consumer (-G) with commits, offset look-up by time (-Q).
# Usage: kcat.sh BOOTSTRAP
set -u
B=$1
topic="kc-$RANDOM$RANDOM"
failed=0
produced=0

pass() { echo "PASS kcat $1${2:+ ($2)}"; }
fail() { echo "FAIL kcat $1: $2"; failed=$((failed + 1)); }

# kcat auto-creates the topic through Metadata (kafka.auto_create_topics); -L shows it.
if out=$(kcat -b "$B" -L -t "$topic" -X allow.auto.create.topics=true 2>&1) \
    && grep -q "topic \"$topic\"" <<<"$out"; then
    pass metadata
else
    fail metadata "$out"
fi

produce() { # name, extra args...
    local name=$1
    shift
    local lines
    lines=$(for i in $(seq 1 20); do echo "key-$((i % 4)):$name-$i"; done)
    if out=$(kcat -b "$B" -P -t "$topic" -K: -X acks=all "$@" <<<"$lines" 2>&1); then
        produced=$((produced + 20))
        pass "$name"
    else
        fail "$name" "$out"
    fi
}
produce produce_keyed_acks_all
for codec in gzip snappy lz4 zstd; do
    produce "compression_$codec" -z "$codec"
done

if out=$(echo "hk:with-headers" | kcat -b "$B" -P -t "$topic" -K: -H trace=t1 -H n=1 2>&1); then
    produced=$((produced + 1))
    got=$(kcat -b "$B" -C -t "$topic" -o beginning -e -q -f '%h %s\n' 2>&1 | grep with-headers)
    if [[ "$got" == "trace=t1,n=1 with-headers" ]]; then pass headers; else fail headers "read back: $got"; fi
else
    fail headers "$out"
fi

n=$(kcat -b "$B" -C -t "$topic" -o beginning -e -q 2>/dev/null | wc -l)
if [[ $produced -gt 0 && "$n" -eq "$produced" ]]; then pass consume_from_beginning "$n records"; else fail consume_from_beginning "$n of $produced"; fi

group="kc-group-$RANDOM"
n=$(timeout 30 kcat -b "$B" -G "$group" -o beginning -e -q -X enable.auto.commit=true \
    -X auto.commit.interval.ms=100 "$topic" 2>/dev/null | wc -l)
if [[ $produced -gt 0 && "$n" -eq "$produced" ]]; then pass group_consume_commit "$n records"; else fail group_consume_commit "$n of $produced"; fi

# Offsets by time: timestamp 0 finds the first offset of the partition.
if out=$(kcat -b "$B" -Q -t "$topic:0:0" 2>&1) && grep -q "offset 0" <<<"$out"; then
    pass list_offsets_by_time
else
    fail list_offsets_by_time "$out"
fi

exit $((failed > 0))
