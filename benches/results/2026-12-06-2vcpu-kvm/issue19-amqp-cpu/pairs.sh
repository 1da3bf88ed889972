#!/usr/bin/env bash
# pairs.sh BEFORE AFTER LOAD [N]: N (default 4) alternating before/after runs of run.sh for
# each of AMQP 16 B transient (1 500 000 messages), 1 KiB transient (600 000) and 1 KiB
# persistent + confirms (600 000), one line per run: binary, scenario, shard ticks,
# consume rate, broker CPU per message. The figures of README.md are these lines.
set -u
before=$1; after=$2; load=$3; n=${4:-4}
here=$(dirname "$0")
for i in $(seq 1 "$n"); do
    for label in before after; do
        bin=$before; [[ $label == after ]] && bin=$after
        echo "$label 16B $(MSGS=1500000 "$here/run.sh" "$bin" "$load" 16)"
        echo "$label 1KiB $(MSGS=600000 "$here/run.sh" "$bin" "$load" 1024)"
        echo "$label 1KiB-persistent-confirms $(MSGS=600000 "$here/run.sh" "$bin" "$load" 1024 --persistent --confirm)"
    done
done
