#!/usr/bin/env bash
# The eighth lease, from the repo root, carrying data/all-sources and data/brain-tumor-mri-sartaj
# (results/gpu-8/README.md says what it is for and how its numbers are reported, fixed before the run):
#   bash results/gpu-8/lease.sh OUT_DIR          the main call (about 9 minutes: timeout_s 580)
#   bash results/gpu-8/lease.sh OUT_DIR bench    right after it, if 3 minutes of device time are left (about 2)
# Main: the paper's protocol at 100 epochs (the issue's count; the recipe otherwise the matrix's: 128 px, batch 128,
#     peak lr 2e-3, seed 42, the same stratified folds of brain-tumor-mri-4k) for the improved model and ResNet34,
#     10 train.py processes under CUDA MPS by run_matrix.py, which then runs robustness and the sartaj scores.
# Bench: where the improved model's step loses to ResNet34's: benchmarks/bench_train.py, one process, eager (every
#     kernel visible to the profiler), with --profile: device-busy and wall milliseconds per step and the operators
#     that take the most device time, for each model.
# EPOCHS, SIZE, STEPS, LIMIT (seconds of training), MATRIX_TIMEOUT, FOLDS and PROCESSES are for a rehearsal on the
# CPU with tiny settings.
set -u
OUT=${1:?give the folder for what comes back}
MODE=${2:-main}
EPOCHS=${EPOCHS:-100} SIZE=${SIZE:-128} STEPS=${STEPS:-40} LIMIT=${LIMIT:-330} MATRIX_TIMEOUT=${MATRIX_TIMEOUT:-550}
FOLDS=${FOLDS:-0,1,2,3,4} PROCESSES=${PROCESSES:-10}
export PYTHONUNBUFFERED=1 TQDM_MININTERVAL=10
R=results/gpu-8
for needed in data/all-sources/README.md data/brain-tumor-mri-sartaj/glioma; do
    [ -e "$needed" ] || { echo "missing $needed: carry data/all-sources and data/brain-tumor-mri-sartaj"; exit 1; }
done
mkdir -p "$R" "$OUT"
# the log goes to $OUT as it grows: a call cut off at its limit still brings back how far it got
log() { echo "[$SECONDS s] $*" | tee -a "$R/lease.log" "$OUT/lease.log"; }
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv >"$R/gpu.txt" 2>&1
python3 -c "import torch, transformers; print('torch', torch.__version__, 'transformers', transformers.__version__)" >>"$R/gpu.txt"

if [ "$MODE" = bench ]; then
    timeout 120 python3 benchmarks/bench_train.py --models improved,resnet34 --batch-size 128 --image-size "$SIZE" \
        --steps "$STEPS" --warmup 10 --no-compile --profile 5 >"$R/bench-profile.txt" 2>&1
    log "bench with profile: rc $?"
    tar czf "$OUT/lease-8-bench.tar.gz" "$R/bench-profile.txt" "$R/gpu.txt" "$R/lease.log"
    exit 0
fi

nvidia-cuda-mps-control -d 2>/dev/null && log "CUDA MPS on"
nvidia-smi dmon -s um -d 5 >"$R/gpu-utilisation.txt" 2>&1 &
dmon=$!
timeout "$MATRIX_TIMEOUT" python3 run_matrix.py --dataset data/all-sources --sources figshare,br35h \
    --external data/brain-tumor-mri-sartaj --runs random:improved,random:resnet34 --folds "$FOLDS" \
    --processes "$PROCESSES" --time-limit "$LIMIT" \
    --no-release --output-dir runs/gpu-8 --results "$R/paper-100" -- --epochs "$EPOCHS" --image-size "$SIZE" \
    --batch-size 128 --lr 2e-3 --save-every "$EPOCHS" --no-compile --workers 2 >"$R/matrix.log" 2>&1
log "matrix: rc $? ($(tail -n 3 "$R/matrix.log" | tr '\r\n' '  '))"
echo quit | nvidia-cuda-mps-control 2>/dev/null
kill "$dmon" 2>/dev/null
# the runs' own files too: a matrix cut off during its evaluations has not copied them into $R yet
find runs/gpu-8 -type f \( -name '*.json' -o -name '*.jsonl' -o -name '*.log' \) -not -path '*/fold-*' \
    -not -path '*/checkpoints/*' -not -path '*/tensorboard/*' >/tmp/packed-files
tar czf "$OUT/lease-8.tar.gz" "$R" -T /tmp/packed-files
log "packed: $(ls "$OUT" | tr '\n' ' ')"
