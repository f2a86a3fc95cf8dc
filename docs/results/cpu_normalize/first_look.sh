#!/bin/bash
# align-only, 30 steps, raw vs standardize(base), τ 0.1, layer 9, Tatoeba cy/ja/jv/sw/tl; one seed each
cd "$(dirname "$0")/../../.."
mkdir -p "${OUT:-runs/first_look}"
for norm in standardize none; do
  out=${OUT:-runs/first_look}/$norm
  OMP_NUM_THREADS=1 .venv/bin/midalign train --model default --schedule align --align-data tatoeba:../shared/data/tatoeba \
    --align-langs cym,jpn,jav,swh,tgl --align-dev-pairs 16 --align-layers middle --temperature 0.1 \
    --normalize $norm --align-stats base --align-batch-pairs 8 --batch-size 8 --gradient-accumulation-steps 2 \
    --max-steps 30 --warmup-ratio 0 --eval-steps 10 --save-steps 30 --logging-steps 5 --seed 1 \
    --out $out --no-progress > ${OUT:-runs/first_look}/$norm.log 2>&1
  echo "$norm train rc=$?"
  for pn in none standardize; do
    OMP_NUM_THREADS=1 .venv/bin/midalign probe --model default --adapter $out --data sib200:../shared/data/sib200 --split dev \
      --langs arb,eng,spa,rus,zho,cym,jpn,jav,swh,tgl,deu,hin,tha,kor --max-sentences 50 --layers 9 --normalize $pn \
      --out ${OUT:-runs/first_look}/probe-$norm-$pn --no-progress > ${OUT:-runs/first_look}/probe-$norm-$pn.log 2>&1
    echo "$norm probe $pn rc=$?"
  done
done
for pn in none standardize; do
  OMP_NUM_THREADS=1 .venv/bin/midalign probe --model default --data sib200:../shared/data/sib200 --split dev \
    --langs arb,eng,spa,rus,zho,cym,jpn,jav,swh,tgl,deu,hin,tha,kor --max-sentences 50 --layers 9 --normalize $pn \
    --out ${OUT:-runs/first_look}/probe-base-$pn --no-progress > ${OUT:-runs/first_look}/probe-base-$pn.log 2>&1
  echo "base probe $pn rc=$?"
done
