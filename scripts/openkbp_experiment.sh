#!/usr/bin/env bash
# The OpenKBP experiment of docs/results.md: one shared MAE warm-up, then each objective fine-tuned
# from it for the same number of steps, evaluated on the validation split.
# Every step is skipped when its output exists, so the script resumes after an interruption
# (a half-finished training continues with `dosepred train --out RUN --resume`).
#
# usage: [OPENKBP=DIR] scripts/openkbp_experiment.sh WORK_DIR     (needs ~4 GB RAM per training)
# stages: STAGE=import|warmup|finetune|predict|evaluate|all (default all); ROUND=1..8 picks the fine-tune round (7: GPU)
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
work=${1:?usage: scripts/openkbp_experiment.sh WORK_DIR}
stage=${STAGE:-all}
shared=${SHARED:-$here/../shared}
mkdir -p "$work"

raw=${OPENKBP:-$work/openkbp/provided-data}  # train-pats/ and validation-pats/ (../shared/data/openkbp/extract.sh)
cache=$work/cache
runs=$work/runs
pred=$work/pred
evald=$work/eval

# ---- budget (the same for every objective) --------------------------------------------------
ARCH=(--patch 64 --batch 2 --base 16 --levels 4 --res-units 0)
WARMUP=(--loss mae --epochs 12 --stop-after 8 --steps-per-epoch 150 --lr 1e-3 --schedule constant --seed 0)
# round 1: 300 fine-tune steps per objective (2 epochs x 150); round 2: 600 steps, CDM weights
# tuned on validation after round 1 (stronger target terms, gradients spread over a percentile band)
FINETUNE1=(--epochs 2 --steps-per-epoch 150 --lr 3e-4 --schedule cosine --seed 1 --threads 1)
FINETUNE2=(--epochs 4 --steps-per-epoch 150 --lr 3e-4 --schedule cosine --seed 1 --threads 1)
FINETUNE3=(--epochs 4 --steps-per-epoch 150 --lr 3e-4 --schedule cosine --seed 2 --threads 1)  # new crops
FINETUNE4=(--epochs 16 --steps-per-epoch 150 --lr 3e-4 --schedule cosine --seed 3 --threads 1)  # new crops
# round 5: whole volumes (the 128^3 OpenKBP grid as one "crop", batch 1), so every D-metric of the
# loss is the metric the evaluation computes, not one of the part of an ROI inside a 64^3 crop
FINETUNE5=(--patch 128 --batch 1 --epochs 10 --steps-per-epoch 150 --lr 2e-4 --schedule cosine --seed 4
           --threads 1)
# round 6: the four round-5 objectives continued for 600 more whole-volume steps (new seed)
FINETUNE6=(--patch 128 --batch 1 --epochs 4 --steps-per-epoch 150 --lr 2e-4 --schedule cosine --seed 5
           --threads 1)

declare -A LOSS=(
  [mae]="mae"                 [r2-mae]="mae"
  [mae-dvh]="mae+dvh"         [r2-mae-dvh]="mae+dvh"
  [mae-moment]="mae+moment"   [r2-mae-moment]="mae+moment"
  [mae-cdm]="mae+cdm"         [r2-mae-cdm-a]="mae+cdm"
  [mae-cdm-t2]="mae+cdm"      [r2-mae-cdm-b]="mae+2*cdm"
)
declare -A OPTS=(
  [mae-cdm-t2]="--loss-opt cdm_target_weight=2 --loss-opt cdm_oar_weight=0.5 --loss-opt cdm_spread=1"
  [r2-mae-cdm-a]="--loss-opt cdm_target_weight=4 --loss-opt cdm_oar_weight=1 --loss-opt cdm_spread=3"
  [r2-mae-cdm-b]="--loss-opt cdm_target_weight=4 --loss-opt cdm_oar_weight=0.5 --loss-opt cdm_spread=5"
)
# round 3: each round-2 objective (CDM: the variant chosen on validation, cdm-a) continued for 600
# more steps from its own round-2 weights: 1200 fine-tune steps in all, the same for every objective
declare -A INIT=([r3-mae]=r2-mae [r3-mae-dvh]=r2-mae-dvh [r3-mae-moment]=r2-mae-moment
                 [r3-mae-cdm]=r2-mae-cdm-a)
LOSS+=([r3-mae]="mae" [r3-mae-dvh]="mae+dvh" [r3-mae-moment]="mae+moment" [r3-mae-cdm]="mae+cdm")
OPTS+=([r3-mae-cdm]="${OPTS[r2-mae-cdm-a]}")
# round 4 (a later session; the round-3 runs were gone, their exports in models/ are the same
# weights): each released model continued for 2400 more steps (3600 fine-tune steps in all), plus a
# CDM variant with twice the target weight, continued from the released CDM model too
declare -A INIT4=([r4-mae]=openkbp-mae [r4-mae-dvh]=openkbp-mae-dvh [r4-mae-moment]=openkbp-mae-moment
                  [r4-mae-cdm]=openkbp-mae-cdm [r4-mae-cdm-t8]=openkbp-mae-cdm)
LOSS+=([r4-mae]="mae" [r4-mae-dvh]="mae+dvh" [r4-mae-moment]="mae+moment" [r4-mae-cdm]="mae+cdm"
       [r4-mae-cdm-t8]="mae+cdm")
OPTS+=([r4-mae-cdm]="${OPTS[r2-mae-cdm-a]}"
       [r4-mae-cdm-t8]="--loss-opt cdm_target_weight=8 --loss-opt cdm_oar_weight=1 --loss-opt cdm_spread=3")
# round 5 (whole volumes, see FINETUNE5): each round-4 objective continued for 1500 steps
INIT+=([r5-mae]=r4-mae [r5-mae-dvh]=r4-mae-dvh [r5-mae-moment]=r4-mae-moment [r5-mae-cdm]=r4-mae-cdm
       [r5-mae-cdm-t2]=r4-mae-cdm)
LOSS+=([r5-mae]="mae" [r5-mae-dvh]="mae+dvh" [r5-mae-moment]="mae+moment" [r5-mae-cdm]="mae+cdm"
       [r5-mae-cdm-t2]="mae+cdm")
OPTS+=([r5-mae-cdm]="${OPTS[r2-mae-cdm-a]}"
       [r5-mae-cdm-t2]="--loss-opt cdm_target_weight=2 --loss-opt cdm_oar_weight=1 --loss-opt cdm_spread=3")
INIT+=([r6-mae]=r5-mae [r6-mae-dvh]=r5-mae-dvh [r6-mae-moment]=r5-mae-moment [r6-mae-cdm]=r5-mae-cdm)
LOSS+=([r6-mae]="mae" [r6-mae-dvh]="mae+dvh" [r6-mae-moment]="mae+moment" [r6-mae-cdm]="mae+cdm")
OPTS+=([r6-mae-cdm]="${OPTS[r2-mae-cdm-a]}")
# round 7 ran on a lent GPU (scripts/gpu_experiment.sh: 3700 whole-volume steps each from the round-5
# release, lr 2e-4 cosine, seed 6, bf16 autocast); its exports are the models/openkbp-* release.
# round 8 (CPU): each round-7 model continued for 600 whole-volume steps, plus the CDM model with the
# CDM term's weight doubled (mae+2*cdm), to see whether the weighting is the lever at this stage
FINETUNE8=(--patch 128 --batch 1 --epochs 4 --steps-per-epoch 150 --lr 2e-4 --schedule cosine --seed 7
           --threads 1)
INIT4+=([r8-mae]=openkbp-mae [r8-mae-dvh]=openkbp-mae-dvh [r8-mae-moment]=openkbp-mae-moment
        [r8-mae-cdm]=openkbp-mae-cdm [r8-mae-2cdm]=openkbp-mae-cdm)
LOSS+=([r8-mae]="mae" [r8-mae-dvh]="mae+dvh" [r8-mae-moment]="mae+moment" [r8-mae-cdm]="mae+cdm"
       [r8-mae-2cdm]="mae+2*cdm")
OPTS+=([r8-mae-cdm]="${OPTS[r2-mae-cdm-a]}" [r8-mae-2cdm]="${OPTS[r2-mae-cdm-a]}")
# and the D-metric gradient spread at this stage: exact percentiles (0) and a wider band (6 %)
INIT4+=([r8-mae-cdm-s0]=openkbp-mae-cdm [r8-mae-cdm-s6]=openkbp-mae-cdm)
LOSS+=([r8-mae-cdm-s0]="mae+cdm" [r8-mae-cdm-s6]="mae+cdm")
OPTS+=([r8-mae-cdm-s0]="--loss-opt cdm_target_weight=4 --loss-opt cdm_oar_weight=1 --loss-opt cdm_spread=0"
       [r8-mae-cdm-s6]="--loss-opt cdm_target_weight=4 --loss-opt cdm_oar_weight=1 --loss-opt cdm_spread=6")
ROUND1=(mae mae-dvh mae-moment mae-cdm mae-cdm-t2)
ROUND2=(r2-mae r2-mae-dvh r2-mae-moment r2-mae-cdm-a r2-mae-cdm-b)
ROUND3=(r3-mae r3-mae-dvh r3-mae-moment r3-mae-cdm)
ROUND4=(r4-mae r4-mae-dvh r4-mae-moment r4-mae-cdm r4-mae-cdm-t8)
ROUND5=(r5-mae r5-mae-dvh r5-mae-moment r5-mae-cdm r5-mae-cdm-t2)
ROUND6=(r6-mae r6-mae-dvh r6-mae-moment r6-mae-cdm)
# and MAE and MAE+CDM once more with another seed (other volumes, flips, order): the run-to-run noise
INIT4+=([r8-mae-seed8]=openkbp-mae [r8-mae-cdm-seed8]=openkbp-mae-cdm)
LOSS+=([r8-mae-seed8]="mae" [r8-mae-cdm-seed8]="mae+cdm")
OPTS+=([r8-mae-cdm-seed8]="${OPTS[r2-mae-cdm-a]}")
declare -A AFTER=([r8-mae-seed8]="--seed 8" [r8-mae-cdm-seed8]="--seed 8")  # after the budget: wins
ROUND8=(r8-mae r8-mae-dvh r8-mae-moment r8-mae-cdm r8-mae-2cdm r8-mae-cdm-s0 r8-mae-cdm-s6
        r8-mae-seed8 r8-mae-cdm-seed8)
case ${ROUND:-1} in
  1) MODELS=("${ROUND1[@]}"); FINETUNE=("${FINETUNE1[@]}") ;;
  2) MODELS=("${ROUND2[@]}"); FINETUNE=("${FINETUNE2[@]}") ;;
  3) MODELS=("${ROUND3[@]}"); FINETUNE=("${FINETUNE3[@]}") ;;
  4) MODELS=("${ROUND4[@]}"); FINETUNE=("${FINETUNE4[@]}") ;;
  5) MODELS=("${ROUND5[@]}"); FINETUNE=("${FINETUNE5[@]}") ;;
  6) MODELS=("${ROUND6[@]}"); FINETUNE=("${FINETUNE6[@]}") ;;
  7) echo "round 7 ran on a GPU: see scripts/gpu_experiment.sh" >&2; exit 2 ;;
  8) MODELS=("${ROUND8[@]}"); FINETUNE=("${FINETUNE8[@]}") ;;
  *) echo "ROUND must be 1 to 6 or 8" >&2; exit 2 ;;
esac

run() { echo "+ $*" >&2; "$@"; }

if [[ $stage == import || $stage == all ]]; then
  [[ -d $raw/train-pats ]] || run bash "$shared/data/openkbp/extract.sh" "$work/openkbp" train validation
  [[ -f $cache/train/dataset.json ]] || run dosepred data import-openkbp "$raw/train-pats" --out "$cache/train" --no-progress
  [[ -f $cache/val/dataset.json ]] || run dosepred data import-openkbp "$raw/validation-pats" --out "$cache/val" --no-progress
  [[ -d $pred/baseline ]] || run dosepred baseline --data "$cache/val" --out "$pred/baseline" --no-progress
fi

if [[ $stage == warmup || $stage == all ]]; then
  if [[ ! -f $runs/warmup/checkpoints/last.pt ]]; then
    run dosepred train --data "$cache/train" --val "$cache/val" --val-patients 6 --val-every 100 \
      --out "$runs/warmup" "${ARCH[@]}" "${WARMUP[@]}" --no-progress
  fi
fi

if [[ $stage == finetune || $stage == all ]]; then
  # all objectives at once, one thread each: the same wall time and the same steps for each
  pids=()
  for m in "${MODELS[@]}"; do
    [[ -f $runs/$m/checkpoints/last.pt ]] && continue
    init=$runs/${INIT[$m]:-warmup}/checkpoints/last.pt
    [[ -n ${INIT4[$m]:-} ]] && init=$here/models/${INIT4[$m]}
    # shellcheck disable=SC2086
    run dosepred train --data "$cache/train" --out "$runs/$m" --init "$init" \
      --loss "${LOSS[$m]}" ${OPTS[$m]:-} "${FINETUNE[@]}" ${AFTER[$m]:-} --no-progress > "$runs/$m.log" 2>&1 &
    pids+=($!)
  done
  for p in "${pids[@]}"; do wait "$p"; done
fi

if [[ $stage == predict || $stage == all ]]; then
  for m in "${MODELS[@]}"; do
    [[ -f $pred/$m/.done ]] && continue
    run dosepred predict --model "$runs/$m" --data "$cache/val" --out "$pred/$m" --no-progress
    touch "$pred/$m/.done"
  done
fi

if [[ $stage == evaluate || $stage == all ]]; then
  mkdir -p "$evald"
  for m in baseline "${MODELS[@]}"; do
    for proto in openkbp openkbp-clinical; do
      run dosepred evaluate --reference "$cache/val" --prediction "$pred/$m" --protocol "$proto" \
        --json "$evald/$m.$proto.json" --no-progress > "$evald/$m.$proto.txt"
    done
  done
fi
