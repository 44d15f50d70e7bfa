#!/usr/bin/env bash
# Round 9 of docs/results.md (session 4, CPU): accuracy levers at one equal small budget, each run
# fine-tuned from a released model for 400 whole-volume steps (round-8 settings, seed 9), one run at a
# time on one thread (in turns of one epoch, see below), then predicted and scored on the 33
# validation patients.
#   r9-mae-cdm       today's recipe (round 8: mae+cdm, openkbp protocol, cdm-a weights)
#   r9-mae-cdm-aug   the same + EMA of the weights (0.99) + rotations about the head-feet axis
#                    (40-degree steps, p 0.5) + translations keeping the possible-dose mask in view
#   r9-mae-cdm-clin  today's recipe with the openkbp-clinical protocol (V-metric sigmoid surrogates,
#                    tau 1 Gy) and the constraint term on its limits
#   r9-mae-cdm-shift today's recipe + translations keeping the possible-dose mask in view
# Every step is skipped when its output exists; a cut training continues with --resume. With
# DEADLINE (epoch seconds) the runs stop level at the last epoch reached by then and the last
# checkpoints are scored (pred/MODEL-eE, eval/MODEL-eE.*.json).
#
# usage: [MODELS="r9-mae-cdm ..."] [EPOCHS=8] [SEED=9] [TAG=] [DEADLINE=S] scripts/round9_experiment.sh [WORK_DIR]   (default /work/exp16)
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
work=${1:-/work/exp16}
cache=$work/cache
runs=$work/runs
pred=$work/pred
evald=$work/eval
export OMP_NUM_THREADS=1
dp() { echo "+ dosepred $*" >&2; python -m dosepred "$@"; }

[[ -f $cache/train/dataset.json ]] || dp data import-openkbp /work/data/provided-data/train-pats --out "$cache/train" --no-progress
[[ -f $cache/val/dataset.json ]] || dp data import-openkbp /work/data/provided-data/validation-pats --out "$cache/val" --no-progress

EPOCHS=${EPOCHS:-8}  # of 50 steps
TAG=${TAG:-}  # suffix of run, prediction and evaluation names (another budget: EPOCHS=2 TAG=-100)
BUDGET=(--patch 128 --batch 1 --epochs "$EPOCHS" --steps-per-epoch 50 --lr 2e-4 --schedule cosine --seed "${SEED:-9}" --threads 1)
CDM="--loss mae+cdm --loss-opt cdm_target_weight=4 --loss-opt cdm_oar_weight=1 --loss-opt cdm_spread=3"
declare -A INIT=([r9-mae-cdm-shift]=openkbp-mae-cdm [r9-mae-cdm]=openkbp-mae-cdm [r9-mae-cdm-aug]=openkbp-mae-cdm [r9-mae-cdm-clin]=openkbp-mae-cdm
                 [r9-mae]=openkbp-mae [r9-mae-aug]=openkbp-mae)
declare -A OPTS=(
  [r9-mae-cdm]="$CDM"
  [r9-mae-cdm-aug]="$CDM --set ema_decay=0.99 --set rotate_p=0.5 --set shift=true"
  [r9-mae-cdm-clin]="$CDM --protocol openkbp-clinical --loss-opt cdm_constraint=true"
  [r9-mae-cdm-shift]="$CDM --set shift=true"
  [r9-mae]="--loss mae"
  [r9-mae-aug]="--loss mae --set ema_decay=0.99 --set rotate_p=0.5 --set shift=true"
)
read -r -a models <<< "${MODELS:-r9-mae-cdm r9-mae-cdm-aug}"
DEADLINE=${DEADLINE:-}  # epoch seconds: start no slice after it once all models are level
mkdir -p "$runs" "$pred" "$evald"
done_epochs() { local f=$runs/$1$TAG/metrics.csv; if [[ -f $f ]]; then tail -n 1 "$f" | cut -d, -f1 | grep -E '^[0-9]+$' || echo 0; else echo 0; fi; }

# the runs advance in turns, one epoch (50 steps) at a time, the least advanced first, so that on a
# shared machine whose speed is unknown they stay at equal budgets; each slice ends with
# --stop-after and the next continues it exactly with --resume
while true; do
  low=; lowe=$EPOCHS; high=0
  for m in "${models[@]}"; do
    e=$(done_epochs "$m")
    (( e > high )) && high=$e
    if (( e < lowe )); then low=$m; lowe=$e; fi
  done
  [[ -z $low ]] && break
  if [[ -n $DEADLINE ]] && (( lowe == high )) && (( $(date +%s) > DEADLINE )); then
    echo "deadline: all runs at epoch $lowe of $EPOCHS" >&2; break
  fi
  stop=$(( lowe < high ? high : lowe + 1 ))
  r=$runs/$low$TAG
  if [[ -f $r/checkpoints/last.pt ]]; then
    dp train --out "$r" --data "$cache/train" --resume --threads 1 --stop-after "$stop" --no-progress
  else
    # shellcheck disable=SC2086
    dp train --data "$cache/train" --out "$r" --init "$here/models/${INIT[$low]}" ${OPTS[$low]} "${BUDGET[@]}" \
      --stop-after "$stop" --no-progress
  fi
done

for m in "${models[@]}"; do
  e=$(done_epochs "$m")
  out=$pred/$m$TAG-e$e
  if [[ ! -f $out/.done ]]; then
    dp predict --model "$runs/$m$TAG/checkpoints/last.pt" --data "$cache/val" --out "$out" --format cache --no-progress
    touch "$out/.done"
  fi
  for proto in openkbp openkbp-clinical; do
    [[ -f $evald/$m$TAG-e$e.$proto.json ]] && continue
    dp evaluate --reference "$cache/val" --prediction "$out" --protocol "$proto" \
      --json "$evald/$m$TAG-e$e.$proto.json" --no-progress > "$evald/$m$TAG-e$e.$proto.txt"
  done
done
