#!/usr/bin/env bash
# Round 13 (issue 24): export a finished campaign run as a released-model candidate and score it on the
# validation split: fp16 model folder (and an fp32 one to measure what half precision moves), predictions
# flipped (predict's default) and unflipped, `evaluate` with both protocols, the QA calibration (flipped
# predictions, docs/qa.md "Recomputing the released calibrations").
#
#   scripts/round13_release.sh NAME RUN_CHECKPOINT WORK VAL TRAIN_RANGES
#
# NAME: mae | mae-cdm | ...; RUN_CHECKPOINT: the run's checkpoints/last.pt; WORK: output folder
# (WORK/models/openkbp-NAME, WORK/pred/NAME-*, WORK/eval/NAME-*.{openkbp,openkbp-clinical}.json);
# VAL: the validation cache; TRAIN_RANGES: training ranges JSON for `calibrate --train-data`
# (docs/qa.md). One CPU thread; every step is skipped when its output exists (resumable).
set -euo pipefail
name=$1; ckpt=$2; work=$3; val=$4; ranges=$5
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1} MKL_NUM_THREADS=${MKL_NUM_THREADS:-1}
model=$work/models/openkbp-$name
fp32=$work/fp32/openkbp-$name
mkdir -p "$work/models" "$work/fp32" "$work/pred" "$work/eval"
[[ -d $model ]] || dosepred export-model "$ckpt" --out "$model"
[[ -d $fp32 ]] || dosepred export-model "$ckpt" --out "$fp32" --fp32
score() {  # MODEL_DIR VARIANT FLAG
  local p=$work/pred/$name-$2
  [[ -d $p ]] || dosepred predict --model "$1" --data "$val" --out "$p" --format cache "$3" --no-progress
  for proto in openkbp openkbp-clinical; do
    local j=$work/eval/$name-$2.$proto.json
    [[ -f $j ]] || dosepred evaluate --reference "$val" --prediction "$p" --protocol $proto --json "$j" \
      --no-progress > /dev/null
  done
  echo "$name-$2: $(python -c "import json; d = json.load(open('$work/eval/$name-$2.openkbp.json')); \
print(' / '.join(f'{d[k]:.3f}' for k in ('dose_score', 'dvh_score', 'ptv_score', 'oar_score')))")"
}
score "$model" tta --tta
score "$model" no-tta --no-tta
score "$fp32" fp32-no-tta --no-tta
[[ -f $model/calibration.json ]] || dosepred calibrate --model "$model" --data "$val" \
  --predictions "$work/pred/$name-tta" --protocol openkbp-clinical --train-data "$ranges" --no-progress
echo "$name: done"
