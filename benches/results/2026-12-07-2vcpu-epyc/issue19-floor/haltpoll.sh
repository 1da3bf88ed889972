#!/usr/bin/env bash
# haltpoll.sh NS COMMAND...: runs COMMAND with the guest's halt polling at NS ns
# (/sys/module/haltpoll/parameters/guest_halt_poll_ns, root; the cpuidle-haltpoll driver of a
# KVM guest) and puts the old value back. After COMMAND's output, prints the time both vCPUs
# spent in the POLL idle state over the run: spinning the host sees as busy and the guest
# counts as idle.
set -u
knob=/sys/module/haltpoll/parameters/guest_halt_poll_ns
ns=$1; shift
old=$(cat $knob)
poll() { cat /sys/devices/system/cpu/cpu*/cpuidle/state0/time | awk '{s+=$1} END {print s}'; }
echo "$ns" > $knob
p0=$(poll); s0=$(date +%s.%N)
"$@"
p1=$(poll); s1=$(date +%s.%N)
echo "$old" > $knob
echo "  guest_halt_poll_ns=$ns: POLL state $(( (p1-p0)/1000 )) ms over $(awk -v a="$s0" -v b="$s1" 'BEGIN {printf "%.1f", b-a}') s"
