#!/usr/bin/env bash
# The fourth GPU lease, in one call from the repo root: bash results/gpu-4/lease.sh OUT_DIR
#  1. side by side under CUDA MPS, each the release recipe (grouped fold 0 held out, 60 epochs, 128 px, batch 128,
#     lr 2e-3): the release candidate with pasted lesions (--paste-prob 0.3) on every source, and the proxy of a
#     source seen with healthy slices only (--sources figshare,br35h,sartaj/notumor) with and without pasting,
#     seeds 42 and 1; beside them the paper's protocol at 224 px (stratified 5 folds, improved model) by run_matrix.py
#  2. the proxies scored on sartaj's unseen tumors (evaluation.py external and README's found-at-false-alarms
#     snippet), the candidate packed by make_release.py; its shards and one archive of the rest go to OUT_DIR.
# EPOCHS, SIZE, SIZE_PAPER, LIMIT and LIMIT_PAPER (seconds of training at SIZE and SIZE_PAPER) are for a rehearsal on the CPU with tiny settings.
set -u
OUT=${1:?give the folder for what comes back}
EPOCHS=${EPOCHS:-60} SIZE=${SIZE:-128} SIZE_PAPER=${SIZE_PAPER:-224} LIMIT=${LIMIT:-450} LIMIT_PAPER=${LIMIT_PAPER:-420}
export PYTHONUNBUFFERED=1 TQDM_MININTERVAL=10
R=results/gpu-4 RUNS=runs/gpu-4
mkdir -p "$R" "$RUNS" "$OUT"
log() { echo "[$SECONDS s] $*" | tee -a "$R/lease.log"; }
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv >"$R/gpu.txt" 2>&1
python3 -c "import torch, transformers; print('torch', torch.__version__, 'transformers', transformers.__version__)" >>"$R/gpu.txt"
nvidia-cuda-mps-control -d 2>/dev/null && log "CUDA MPS on"
nvidia-smi dmon -s um -d 5 >"$R/gpu-utilisation.txt" 2>&1 &
dmon=$!
RECIPE=(--dataset data/all-sources --protocol grouped --folds 0 --model improved --epochs "$EPOCHS" --image-size "$SIZE"
    --batch-size 128 --lr 2e-3 --save-every "$EPOCHS" --no-compile --workers 2)
PROXY=(--sources figshare,br35h,sartaj/notumor)
train() {
    local name=$1
    shift
    log "$name: started"
    OMP_NUM_THREADS=2 timeout "$LIMIT" python3 train.py --output-dir "$RUNS/$name" "$@" >"$RUNS/$name.log" 2>&1
    log "$name: rc $? ($(tail -c 300 "$RUNS/$name.log" | tr '\r\n' '  '))"
}
train release-paste "${RECIPE[@]}" --paste-prob 0.3 &
jobs_128=($!)
for seed in 42 1; do
    train "proxy-seed$seed" "${RECIPE[@]}" "${PROXY[@]}" --seed "$seed" &
    jobs_128+=($!)
    train "proxy-paste-seed$seed" "${RECIPE[@]}" "${PROXY[@]}" --paste-prob 0.3 --seed "$seed" &
    jobs_128+=($!)
done
timeout $((LIMIT_PAPER + 110)) python3 run_matrix.py --dataset data/all-sources --sources figshare,br35h \
    --external data/brain-tumor-mri-sartaj --runs random:improved --processes 5 --time-limit "$LIMIT_PAPER" --no-release \
    --output-dir runs/gpu-224 --results results/gpu-224 -- --epochs "$EPOCHS" --image-size "$SIZE_PAPER" \
    --batch-size 128 --lr 2e-3 --save-every "$EPOCHS" --no-compile >"$R/matrix-224.log" 2>&1 &
matrix=$!
wait "${jobs_128[@]}"
log "128 px runs done"
proxies=()
for run in proxy-seed42 proxy-paste-seed42 proxy-seed1 proxy-paste-seed1; do
    [ -f "$RUNS/$run/fold-0/config.json" ] && proxies+=("$RUNS/$run/fold-0")
done
if [ ${#proxies[@]} -gt 0 ]; then
    models=()
    for model in "${proxies[@]}"; do models+=(--model "$model"); done
    timeout 120 python3 evaluation.py external data/brain-tumor-mri-sartaj "${models[@]}" \
        --output "$R/external-sartaj-proxy.json" >"$R/external-proxy.log" 2>&1
    log "external: rc $?"
    PYTHONPATH=. timeout 300 python3 results/gpu-4/found_at_false_alarms.py "${proxies[@]}" >"$R/found-at-false-alarms.txt" 2>&1
    log "found at false alarms: rc $?"
fi
if [ -f "$RUNS/release-paste/fold-0/config.json" ]; then
    timeout 120 python3 make_release.py "$RUNS/release-paste/fold-0" --output "$RUNS/release-paste-packed" \
        --report "$R/release-paste.json" --workers 8 >"$R/make-release.log" 2>&1
    log "make_release: rc $?"
    if [ ! -f "$RUNS/release-paste-packed/config.json" ]; then  # the weights come back as float16 shards anyway
        PYTHONPATH=. python3 -c "import sys; from pathlib import Path; from brain_resnet.hub import save_model_folder
from brain_resnet.modeling import BrainResNetForImageClassification as M, BrainResNetImageProcessor as P
save_model_folder(M.from_pretrained(sys.argv[1]), P.from_pretrained(sys.argv[1]), Path(sys.argv[2]), half_storage=True)" \
            "$RUNS/release-paste/fold-0" "$RUNS/release-paste-packed"
        log "float16 shards without make_release: rc $?"
    fi
    cp "$RUNS"/release-paste-packed/*.safetensors "$OUT"/ 2>/dev/null
fi
wait "$matrix"
log "paper protocol at $SIZE_PAPER px: rc $?"
echo quit | nvidia-cuda-mps-control 2>/dev/null
kill "$dmon" 2>/dev/null
find "$RUNS" runs/gpu-224 -type f \( -name '*.json' -o -name '*.jsonl' -o -name '*.log' -o -name '*.png' -o -name '*.md' \
    -o -name '*.txt' -o -name '*.py' \) -not -path '*/checkpoints/*' -not -path '*/tensorboard/*' >/tmp/packed-files
tar czf "$OUT/lease-4.tar.gz" "$R" results/gpu-224 -T /tmp/packed-files
log "packed: $(ls "$OUT" | tr '\n' ' ')"
cp "$R/lease.log" "$OUT/"
