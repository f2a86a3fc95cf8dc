#!/bin/bash
# bf16 mixed precision vs float32 training: recipes/train/cpu_demo.yaml (alternate schedule,
# standardised alignment loss at layer 9), 20 optimizer steps, seeds 1-3, once with
# optim.bf16 true and once false, 1 torch thread each. Then compare.py reads the logs.
#   bash docs/results/bf16_training/run.sh [runs/bf16_curves]
set -e
cd "$(dirname "$0")/../../.."
OUT=${1:-runs/bf16_curves}
M=.venv/bin/midalign
D=runs/data
export OMP_NUM_THREADS=1
for split in train dev; do
  [ -f $D/topic-eng-$split.jsonl ] || $M data prepare --task topic --source sib200:../shared/data/sib200 \
    --langs eng --split $split --out $D/topic-eng-$split.jsonl
done
for bf16 in true false; do
  name=$([ $bf16 = true ] && echo bf16 || echo fp32)
  for seed in 1 2 3; do
    $M train --config recipes/train/cpu_demo.yaml --task-data $D/topic-eng-train.jsonl \
      --dev-data $D/topic-eng-dev.jsonl --max-steps 20 --eval-steps 10 --save-steps 10 \
      --seed $seed --bf16 $bf16 --no-progress --out $OUT/$name-seed$seed
  done
done
.venv/bin/python docs/results/bf16_training/compare.py $OUT
