#!/usr/bin/env bash
# The sixth GPU lease, from the repo root, carrying data/all-sources-clean (make data/all-sources-clean):
#   bash results/gpu-6/lease.sh OUT_DIR          the main call (about 8 minutes on an H100 or H200)
#   bash results/gpu-6/lease.sh OUT_DIR bench    a second call if device time is left (about 4 minutes)
# Main call: the release recipe (grouped folds of every source less the slices of
# results/label-audit/doubtful-notumor.txt, 128 px, 60 epochs, batch 128, peak lr 2e-3, pasted
# lesions) cross-validated on all 5 folds, for the improved model and ResNet34: 10 train.py processes side by side
# under CUDA MPS. The release is one of these folds' models; its 5-fold mean ± std, and every sartaj slice scored
# once by a model that did not train on it (cv_results.json's confusion_matrix_by_source), say how far one fold's
# numbers can be trusted. Then every fold model's held-out logits (held_out_logits.py), for operating points
# worked out on the CPU afterwards, and evaluation.py summary.
# The bench call times one process of train.py's step with CUDA graphs (--compile --compile-mode reduce-overhead),
# improved model against ResNet34, with this code (the third lease measured a variant of the SE block).
# EPOCHS, SIZE and LIMIT (seconds of training) are for a rehearsal on the CPU with tiny settings.
set -u
OUT=${1:?give the folder for what comes back}
MODE=${2:-main}
EPOCHS=${EPOCHS:-60} SIZE=${SIZE:-128} LIMIT=${LIMIT:-420}
export PYTHONUNBUFFERED=1 TQDM_MININTERVAL=10
R=results/gpu-6 RUNS=runs/gpu-6
mkdir -p "$R" "$RUNS" "$OUT"
log() { echo "[$SECONDS s] $*" | tee -a "$R/lease.log"; }
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv >"$R/gpu.txt" 2>&1
python3 -c "import torch, transformers; print('torch', torch.__version__, 'transformers', transformers.__version__)" >>"$R/gpu.txt"

if [ "$MODE" = bench ]; then
    timeout 240 python3 benchmarks/bench_train.py --models improved,resnet34 --batch-size 128 --image-size "$SIZE" \
        --steps 40 --warmup 10 --compile --compile-mode reduce-overhead >"$R/bench-cudagraphs.txt" 2>&1
    log "bench, CUDA graphs, one process: rc $?"
    tar czf "$OUT/lease-6-bench.tar.gz" "$R"
    exit 0
fi

nvidia-cuda-mps-control -d 2>/dev/null && log "CUDA MPS on"
nvidia-smi dmon -s um -d 5 >"$R/gpu-utilisation.txt" 2>&1 &
dmon=$!
DATA=data/all-sources-clean
RECIPE=(--dataset "$DATA" --protocol grouped --epochs "$EPOCHS" --image-size "$SIZE" --batch-size 128 --lr 2e-3
    --save-every "$EPOCHS" --no-compile --workers 2 --paste-prob 0.3 --resume)
train() {
    local name=$1
    shift
    log "$name: started"
    OMP_NUM_THREADS=2 timeout "$LIMIT" python3 train.py "$@" >"$RUNS/$name.log" 2>&1
    log "$name: rc $? ($(tail -c 200 "$RUNS/$name.log" | tr '\r\n' '  '))"
}
jobs=()
for model in improved resnet34; do
    for fold in 0 1 2 3 4; do
        # one process per fold, all writing into one run folder (train.py extends its cv_results.json under a lock)
        train "grouped-$model-fold-$fold" "${RECIPE[@]}" --model "$model" --folds "$fold" \
            --output-dir "$RUNS/release-recipe-$model" &
        jobs+=($!)
    done
done
wait "${jobs[@]}"
log "training done"
echo quit | nvidia-cuda-mps-control 2>/dev/null
kill "$dmon" 2>/dev/null
PYTHONPATH=. timeout 120 python3 "$R/held_out_logits.py" "$DATA" "$R/held-out-logits.json" "$RUNS/release-recipe-improved" \
    "$RUNS/release-recipe-resnet34" >"$R/held-out-logits.log" 2>&1
log "held-out logits: rc $?"
timeout 60 python3 evaluation.py summary "$RUNS/release-recipe-improved" "$RUNS/release-recipe-resnet34" \
    --output "$R/summary.json" >"$R/summary.log" 2>&1
log "summary: rc $?"
find "$RUNS" -type f \( -name '*.json' -o -name '*.jsonl' -o -name '*.log' -o -name '*.png' -o -name '*.md' \) \
    -not -path '*/checkpoints/*' -not -path '*/tensorboard/*' >/tmp/packed-files
tar czf "$OUT/lease-6.tar.gz" "$R" -T /tmp/packed-files
log "packed: $(ls "$OUT" | tr '\n' ' ')"
cp "$R/lease.log" "$OUT/"
