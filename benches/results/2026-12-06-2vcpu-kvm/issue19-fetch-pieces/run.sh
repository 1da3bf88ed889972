#!/usr/bin/env bash
# run.sh BEFORE AFTER LOAD [PAIRS]: Kafka 1 KiB acks=all, 6 partitions, 2 000 000 messages at
# full speed (../issue19-copies-hops/kafka-full.sh), BEFORE and AFTER alternately, PAIRS times
# (default 8), each on a fresh broker; then the mean broker CPU per message of each and the
# mean of the paired differences.
set -u
before=$1; after=$2; load=$3; pairs=${4:-8}
full="$(dirname "$0")/../issue19-copies-hops/kafka-full.sh"
out=$(mktemp)
for i in $(seq 1 "$pairs"); do
    "$full" "$before" "$load" "before$i" | tee -a "$out"
    "$full" "$after" "$load" "after$i" | tee -a "$out"
done
# "labelN: produce ... broker CPU X s = Y µs per message sent"
awk '{l=$1; sub(/[0-9]+:$/, "", l); c=$(NF-4); s[l]+=c; n[l]++; if (l == "before") b=c; else d+=c-b}
     END {printf "before %.3f µs/msg, after %.3f µs/msg (means of %d); paired difference %.3f\n",
          s["before"]/n["before"], s["after"]/n["after"], n["after"], d/n["after"]}' "$out"
rm -f "$out"
