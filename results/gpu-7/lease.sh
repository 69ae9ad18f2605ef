#!/usr/bin/env bash
# The seventh lease, from the repo root, carrying data/all-sources (make data/all-sources):
#   bash results/gpu-7/lease.sh OUT_DIR [SEED]     one call per seed: 42 first, then 1 if the lease has time (~5 min
#                                                  each; at most 360 s of training, 120 s of logits)
# The test of --untyped-tumors by patient (results/gpu-7/README.md, its rule fixed before the run): the release recipe
# (grouped folds of data/all-sources, 128 px, 60 epochs, batch 128, peak lr 2e-3, pasted lesions) on all 5 folds in
# two arms, one train.py process per fold, 10 at once under CUDA MPS, eager (what the sixth lease ran in 233 s):
#   control: every audited slice left out (--exclude results/label-audit/doubtful-notumor.txt), as the release;
#   untyped: fold k trains on four Br35H patients' audited slices as tumors of unknown type and never sees the
#            fifth (patient k) or sartaj's audited slices (results/gpu-7/lists, by patient_lists.py).
# Then every fold model's logits on every row and its mirror image (row_logits.py), scored on the CPU afterwards
# (untyped_cv.py): patient k by fold k's model, the held-out folds, sartaj.
# EPOCHS, SIZE, FOLDS and LIMIT (seconds of training) are for a rehearsal on the CPU with tiny settings.
set -u
OUT=${1:?give the folder for what comes back}
SEED=${2:-42}
EPOCHS=${EPOCHS:-60} SIZE=${SIZE:-128} LIMIT=${LIMIT:-360} FOLDS=${FOLDS:-0 1 2 3 4}
export PYTHONUNBUFFERED=1 TQDM_MININTERVAL=10
R=results/gpu-7 RUNS=runs/gpu-7
for needed in data/all-sources/README.md results/label-audit/doubtful-notumor.txt "$R"/lists/untyped-fold-0.txt; do
    [ -e "$needed" ] || { echo "missing $needed: carry data/all-sources, and keep results/label-audit and $R in the tree"; exit 1; }
done
mkdir -p "$R" "$RUNS" "$OUT"
# the log goes to $OUT as it grows: a call cut off at its limit still brings back how far it got
log() { echo "[$SECONDS s] $*" | tee -a "$R/lease-seed$SEED.log" "$OUT/lease-seed$SEED.log"; }
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv >"$R/gpu.txt" 2>&1
python3 -c "import torch, transformers; print('torch', torch.__version__, 'transformers', transformers.__version__)" >>"$R/gpu.txt"

nvidia-cuda-mps-control -d 2>/dev/null && log "CUDA MPS on"
nvidia-smi dmon -s um -d 5 >"$R/gpu-utilisation-seed$SEED.txt" 2>&1 &
dmon=$!
DATA=data/all-sources
RECIPE=(--dataset "$DATA" --protocol grouped --model improved --epochs "$EPOCHS" --image-size "$SIZE" --batch-size 128
    --lr 2e-3 --paste-prob 0.3 --seed "$SEED" --save-every "$EPOCHS" --no-compile --workers 2 --resume)
train() {
    local name=$1
    shift
    log "$name: started"
    # SIGTERM makes train.py checkpoint after its epoch; -k: killed 20 s later whatever it is doing
    OMP_NUM_THREADS=2 timeout -k 20 "$LIMIT" python3 train.py "$@" >"$RUNS/$name.log" 2>&1
    log "$name: rc $? ($(tail -c 200 "$RUNS/$name.log" | tr '\r\n' '  '))"
}
jobs=()
for fold in $FOLDS; do
    # one process per fold, each arm's folds writing into one run folder (train.py extends its cv_results.json
    # under a lock); an arm's folds differ in their lists, which run_args.json records per process
    train "control-seed$SEED-fold-$fold" "${RECIPE[@]}" --folds "$fold" --exclude results/label-audit/doubtful-notumor.txt \
        --output-dir "$RUNS/control-seed$SEED" &
    jobs+=($!)
    train "untyped-seed$SEED-fold-$fold" "${RECIPE[@]}" --folds "$fold" --untyped-tumors "$R/lists/untyped-fold-$fold.txt" \
        --exclude "$R/lists/exclude-fold-$fold.txt" --output-dir "$RUNS/untyped-seed$SEED-fold-$fold" &
    jobs+=($!)
done
wait "${jobs[@]}"
log "training done"
echo quit | nvidia-cuda-mps-control 2>/dev/null
kill "$dmon" 2>/dev/null
PYTHONPATH=. timeout -k 10 120 python3 "$R/row_logits.py" "$DATA" "$R/row-logits-seed$SEED.json" "$RUNS/control-seed$SEED" \
    $(for fold in $FOLDS; do echo "$RUNS/untyped-seed$SEED-fold-$fold"; done) >"$R/row-logits-seed$SEED.log" 2>&1
log "row logits: rc $?"
find "$RUNS" -type f \( -name '*.json' -o -name '*.jsonl' -o -name '*.log' \) -path "*seed$SEED*" \
    -not -path '*/checkpoints/*' -not -path '*/tensorboard/*' -not -path '*/fold-*' >/tmp/packed-files
tar czf "$OUT/lease-7-seed$SEED.tar.gz" "$R"/*seed"$SEED"* "$R/gpu.txt" -T /tmp/packed-files
log "packed: $(ls "$OUT" | tr '\n' ' ')"
