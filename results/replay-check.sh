#!/bin/bash
# Does this commit's code replay a recorded run? Trains TRAIN_ARG... into CHECK (emptied first) until its first epoch
# is logged, stops it (train.py ends that epoch and exits), and requires that epoch's training loss to be LOSS exactly;
# the check's log.jsonl is kept as RECORD. Exits 1, saying so, if it does not replay. Run from the repository root:
#   bash results/replay-check.sh CHECK LOSS RECORD TRAIN_ARG [TRAIN_ARG ...]
check=$1 loss=$2 record=$3; shift 3
rm -rf $check
.venv/bin/python train.py "$@" --output-dir $check > $check.log 2>&1 &
pid=$!
while [ ! -s $check/log.jsonl ] && kill -0 $pid 2>/dev/null; do sleep 5; done
kill $pid; wait $pid
grep -q "\"train_loss\": $loss," $check/log.jsonl || { echo "baseline does not replay"; exit 1; }
cp $check/log.jsonl $record
echo "baseline replays"
