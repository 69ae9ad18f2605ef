#!/usr/bin/env bash
# The fifth GPU lease, from the repo root, carrying data/all-sources and data/brain-tumor-mri-sartaj:
#   bash results/gpu-5/lease.sh OUT_DIR          the main call (about 9 minutes on an H100)
#   bash results/gpu-5/lease.sh OUT_DIR bench    a second, short call if device time is left (about 2 minutes)
# Main call, side by side under CUDA MPS:
#  1. ResNet34 under the paper's protocol at 224 px (stratified 5 folds, seed 42, the recipe and folds of
#     results/gpu-224's improved model), by run_matrix.py, which then runs robustness and the sartaj scores on its folds;
#  2. four 4k-only trainings with the release recipe (grouped fold 0 held out, 128 px, 60 epochs), seeds 42 and 1,
#     without and with the two augmentations against the source shortcut (--paste-prob 0.3 --mirror-prob 0.5), and
#     the proxy of a source seen with healthy slices only (--sources figshare,br35h,sartaj/notumor) with both
#     augmentations, seeds 42 and 1 (its pasting-only pair is results/gpu-4's); all scored on sartaj
#     (evaluation.py external, README's found-at-false-alarms snippet).
# The bench call times train.py's step, eager, improved model against ResNet34 in one process, then 4 processes.
# EPOCHS, SIZE, SIZE_PAPER, LIMIT (seconds of training) and MATRIX_TIMEOUT (seconds for the 224 px matrix with its
# evaluations) are for a rehearsal on the CPU with tiny settings.
set -u
OUT=${1:?give the folder for what comes back}
MODE=${2:-main}
EPOCHS=${EPOCHS:-60} SIZE=${SIZE:-128} SIZE_PAPER=${SIZE_PAPER:-224} LIMIT=${LIMIT:-400} MATRIX_TIMEOUT=${MATRIX_TIMEOUT:-530}
export PYTHONUNBUFFERED=1 TQDM_MININTERVAL=10
R=results/gpu-5 RUNS=runs/gpu-5
mkdir -p "$R" "$RUNS" "$OUT"
log() { echo "[$SECONDS s] $*" | tee -a "$R/lease.log"; }
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv >"$R/gpu.txt" 2>&1
python3 -c "import torch, transformers; print('torch', torch.__version__, 'transformers', transformers.__version__)" >>"$R/gpu.txt"

if [ "$MODE" = bench ]; then
    BENCH=(--batch-size 128 --image-size "$SIZE" --steps 40 --warmup 10 --no-compile)
    timeout 80 python3 benchmarks/bench_train.py --models improved,resnet34 "${BENCH[@]}" >"$R/bench-eager.txt" 2>&1
    log "bench, one process: rc $?"
    nvidia-cuda-mps-control -d 2>/dev/null && log "CUDA MPS on"
    timeout 80 python3 benchmarks/bench_train.py --models improved "${BENCH[@]}" --processes 4 --mps \
        >"$R/bench-4-mps-eager.txt" 2>&1
    log "bench, 4 processes: rc $?"
    echo quit | nvidia-cuda-mps-control 2>/dev/null
    tar czf "$OUT/lease-5-bench.tar.gz" "$R"
    exit 0
fi

nvidia-cuda-mps-control -d 2>/dev/null && log "CUDA MPS on"
nvidia-smi dmon -s um -d 5 >"$R/gpu-utilisation.txt" 2>&1 &
dmon=$!
timeout "$MATRIX_TIMEOUT" python3 run_matrix.py --dataset data/all-sources --sources figshare,br35h \
    --external data/brain-tumor-mri-sartaj --runs random:resnet34 --processes 5 --time-limit "$LIMIT" --no-release \
    --output-dir runs/gpu-224 --results "$R/paper-224" -- --epochs "$EPOCHS" --image-size "$SIZE_PAPER" \
    --batch-size 128 --lr 2e-3 --save-every "$EPOCHS" --no-compile >"$R/matrix-224.log" 2>&1 &
matrix=$!
RECIPE=(--dataset data/all-sources --sources figshare,br35h --protocol grouped --folds 0 --model improved
    --epochs "$EPOCHS" --image-size "$SIZE" --batch-size 128 --lr 2e-3 --save-every "$EPOCHS" --no-compile --workers 2)
train() {
    local name=$1
    shift
    log "$name: started"
    OMP_NUM_THREADS=2 timeout "$LIMIT" python3 train.py --output-dir "$RUNS/$name" "$@" >"$RUNS/$name.log" 2>&1
    log "$name: rc $? ($(tail -c 300 "$RUNS/$name.log" | tr '\r\n' '  '))"
}
jobs_128=()
for seed in 42 1; do
    train "4k-seed$seed" "${RECIPE[@]}" --seed "$seed" &
    jobs_128+=($!)
    train "4k-paste-mirror-seed$seed" "${RECIPE[@]}" --paste-prob 0.3 --mirror-prob 0.5 --seed "$seed" &
    jobs_128+=($!)
    train "proxy-paste-mirror-seed$seed" "${RECIPE[@]}" --sources figshare,br35h,sartaj/notumor --paste-prob 0.3 \
        --mirror-prob 0.5 --seed "$seed" &
    jobs_128+=($!)
done
wait "${jobs_128[@]}"
log "128 px runs done"
models=()
for run in 4k-seed42 4k-paste-mirror-seed42 4k-seed1 4k-paste-mirror-seed1 proxy-paste-mirror-seed42 \
    proxy-paste-mirror-seed1; do
    [ -f "$RUNS/$run/fold-0/config.json" ] && models+=("$RUNS/$run/fold-0")
done
if [ ${#models[@]} -gt 0 ]; then
    external=()
    for model in "${models[@]}"; do external+=(--model "$model"); done
    timeout 120 python3 evaluation.py external data/brain-tumor-mri-sartaj "${external[@]}" \
        --output "$R/external-sartaj.json" >"$R/external.log" 2>&1
    log "external: rc $?"
    PYTHONPATH=. timeout 150 python3 results/gpu-4/found_at_false_alarms.py "${models[@]}" \
        >"$R/found-at-false-alarms.txt" 2>&1
    log "found at false alarms: rc $?"
fi
wait "$matrix"
log "ResNet34 at $SIZE_PAPER px: rc $?"
echo quit | nvidia-cuda-mps-control 2>/dev/null
kill "$dmon" 2>/dev/null
find "$RUNS" runs/gpu-224 -type f \( -name '*.json' -o -name '*.jsonl' -o -name '*.log' -o -name '*.png' -o -name '*.md' \
    -o -name '*.txt' \) -not -path '*/checkpoints/*' -not -path '*/tensorboard/*' >/tmp/packed-files
tar czf "$OUT/lease-5.tar.gz" "$R" -T /tmp/packed-files
log "packed: $(ls "$OUT" | tr '\n' ' ')"
cp "$R/lease.log" "$OUT/"
