#!/usr/bin/env bash
# The GPU part of docs/experiments.md, as one script with a time budget (a lent GPU comes for minutes):
#   TGS=path/to/tgs OUT=folder bash docs/experiments_gpu.sh [seconds]
# 1. the GPU benchmark of the losses; 2. the BCE run of docs/experiments-tgs-finetune.yaml, trained until
# its validation TGS metric stops improving; 3. from its best weights, every entry for the same further
# epochs and 3 seeds (`lovaszseg compare --from ... --seeds 0,1,2`); 4. the results, without model
# files, packed into $OUT/results.tgz. SMOKE="override ..." shrinks every run for a check on a CPU.
set -u
BUDGET=${1:-560}
TGS=${TGS:-../shared/tgs}
OUT=${OUT:-runs/gpu-out}
RUNS=${RUNS:-runs/gpu}
SMOKE=${SMOKE:-}
FURTHER_EPOCHS=${FURTHER_EPOCHS:-4}
mkdir -p "$OUT" "$RUNS"
export PYTHONUNBUFFERED=1 COLUMNS=${COLUMNS:-180}  # wide tables in the logs
left() { echo $((BUDGET - SECONDS)); }
finetune="stages.0.lr=0.0002 stages.0.schedule=cosine stages.0.min_lr=0 train.early_stopping=null"
entries="bce,lovasz_hinge(variant=elu+1),lovasz_hinge,lovasz_hinge(variant=elu+1;warmup_steps=75;ema=0.99)"
entries+=",bce+lovasz_hinge(variant=elu+1),lovasz_hinge(symmetric=true),lovasz_hinge(warmup_steps=75;ema=0.99)"

{ nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv; python3 -c "import torch; print(torch.__version__)"; } \
    >"$OUT/device.txt" 2>&1
[ -z "$SMOKE" ] && timeout 60 python3 benchmarks/bench_losses.py --device cuda --repeats 10 >"$OUT/bench_losses_cuda.txt" 2>&1
timeout $(($(left) - 330)) python3 -m lovaszseg train docs/experiments-tgs-finetune.yaml "data.root=$TGS" $SMOKE \
    --run-dir "$RUNS/tgs-bce" --overwrite >"$OUT/bce.log" 2>&1
timeout $(($(left) - 15)) python3 -m lovaszseg compare docs/experiments-tgs-finetune.yaml "data.root=$TGS" $finetune $SMOKE \
    --from "$RUNS/tgs-bce" --seeds 0,1,2 --epochs "$FURTHER_EPOCHS" --losses "$entries" --baseline bce \
    --out-dir "$RUNS/tgs-finetune" >"$OUT/compare.log" 2>&1
echo "compare exit $?, ${SECONDS}s" >>"$OUT/device.txt"
tar czf "$OUT/results.tgz" --exclude='*.pt' --exclude='*.safetensors' --exclude='tensorboard' -C "$RUNS" .
