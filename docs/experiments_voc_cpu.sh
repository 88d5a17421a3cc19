#!/usr/bin/env bash
# The synthetic-VOC part of docs/experiments.md on 2 CPU cores (about 40 minutes): cross-entropy trained
# until its validation mIoU stops improving, then from its best weights cross-entropy against the
# Lovász-softmax (classes present / all), 4 more epochs each, 3 seeds.
#   bash docs/experiments_voc_cpu.sh
set -eu
RUNS=${RUNS:-runs}
[ -d data/synth-voc ] || lovaszseg data synth-voc data/synth-voc --n-images 400
converge="stages.0.epochs=30 stages.0.schedule=plateau stages.0.patience=2 stages.0.min_lr=0.00001 train.early_stopping=4"
lovaszseg train docs/experiments-voc-synth.yaml $converge --run-dir "$RUNS/voc-ce" --overwrite
lovaszseg compare docs/experiments-voc-synth.yaml stages.0.lr=0.0005 stages.0.schedule=cosine --from "$RUNS/voc-ce" \
    --seeds 0,1,2 --epochs 4 --losses "ce,lovasz_softmax,lovasz_softmax(classes=all)" --baseline ce \
    --out-dir "$RUNS/voc-finetune"
