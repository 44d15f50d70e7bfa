#!/usr/bin/env bash
# One experiment round of docs/results.md: every run is a training-config file of experiments/ROUND/
# (NAME.json: the whole recipe, `dosepred train --config`); the runs are trained on the OpenKBP train
# split in turns of one epoch, the least advanced first (`--stop-after` + exact `--resume`), so on a
# shared machine whose speed is unknown they stay at equal budgets; then each last checkpoint is
# predicted and scored on the 33 validation patients with both protocols. Every step is skipped when
# its output exists, so the script can be cut and started again. Run it from the repository root
# (config paths such as "init": "models/openkbp-mae-cdm" are relative to it).
#
# usage: [OPENKBP=DIR] [MODELS="r9-mae ..."] [DEADLINE=epoch-seconds] [EPOCHS=E TAG=-suffix] [SEED=S] \
#          scripts/experiment_round.sh experiments/ROUND WORK
#   OPENKBP: the folder holding train-pats/ and validation-pats/ (needed only while WORK/cache lacks
#   them; ../shared/data/openkbp/extract.sh makes it); SEED: another seed than the configs' (with a TAG)
#   WORK: cache/{train,val} (imported when absent), runs/NAME, pred/NAME-eE,
#   eval/NAME-eE.{openkbp,openkbp-clinical}.json; with DEADLINE the runs stop level at the last epoch
#   reached by then and those checkpoints are scored; EPOCHS (with a TAG for the names: runs/NAME-TAG)
#   another budget than the configs' (e.g. EPOCHS=2 TAG=-100: 100 steps; the schedule follows it).
set -euo pipefail
round=$(cd "$(dirname "${1:?usage: scripts/experiment_round.sh experiments/ROUND WORK}")" && pwd)/$(basename "$1")
work=$(mkdir -p "${2:?usage: scripts/experiment_round.sh experiments/ROUND WORK}" && cd "$2" && pwd)
cd "$(dirname "$0")/.."  # the repository root: the configs' paths ("init": "models/...") are relative to it
cache=$work/cache runs=$work/runs pred=$work/pred evald=$work/eval
export OMP_NUM_THREADS=1
dp() { echo "+ dosepred $*" >&2; python -m dosepred "$@"; }

for split in train:train-pats val:validation-pats; do
  [[ -f $cache/${split%%:*}/dataset.json ]] || dp data import-openkbp "${OPENKBP:?set OPENKBP=DIR (train-pats, validation-pats)}/${split#*:}" \
    --out "$cache/${split%%:*}" --no-progress
done

if [[ -n ${MODELS:-} ]]; then read -r -a models <<< "$MODELS"
else models=(); for f in "$round"/*.json; do models+=("$(basename "$f" .json)"); done; fi
epochs() { python -c "from dosepred.training import TrainConfig; print(TrainConfig.load('$round/$1.json').epochs)"; }
TAG=${TAG:-}
if [[ -z ${EPOCHS:-} ]]; then
  EPOCHS=$(epochs "${models[0]}")
  for m in "${models[@]}"; do [[ $(epochs "$m") == "$EPOCHS" ]] || { echo "$m: another number of epochs" >&2; exit 2; }; done
fi
mkdir -p "$runs" "$pred" "$evald"
done_epochs() { local f=$runs/$1$TAG/metrics.csv; if [[ -f $f ]]; then tail -n 1 "$f" | cut -d, -f1 | grep -E '^[0-9]+$' || echo 0; else echo 0; fi; }

while true; do
  low=; lowe=$EPOCHS; high=0
  for m in "${models[@]}"; do
    e=$(done_epochs "$m")
    (( e > high )) && high=$e
    if (( e < lowe )); then low=$m; lowe=$e; fi
  done
  [[ -z $low ]] && break
  if [[ -n ${DEADLINE:-} ]] && (( lowe == high )) && (( $(date +%s) > DEADLINE )); then
    echo "deadline: all runs at epoch $lowe of $EPOCHS" >&2; break
  fi
  stop=$(( lowe < high ? high : lowe + 1 ))
  if [[ -f $runs/$low$TAG/checkpoints/last.pt ]]; then
    dp train --out "$runs/$low$TAG" --resume --stop-after "$stop" --no-progress
  else
    dp train --config "$round/$low.json" --data "$cache/train" --out "$runs/$low$TAG" --epochs "$EPOCHS" \
      ${SEED:+--seed "$SEED"} --stop-after "$stop" --no-progress
  fi
done

for m in "${models[@]}"; do
  e=$(done_epochs "$m")
  out=$pred/$m$TAG-e$e
  [[ -f $out/.done ]] || { dp predict --model "$runs/$m$TAG/checkpoints/last.pt" --data "$cache/val" --out "$out" \
                             --format cache --no-progress --overwrite && touch "$out/.done"; }
  for proto in openkbp openkbp-clinical; do
    [[ -f $evald/$m$TAG-e$e.$proto.json ]] && continue
    dp evaluate --reference "$cache/val" --prediction "$out" --protocol "$proto" \
      --json "$evald/$m$TAG-e$e.$proto.json" --no-progress > "$evald/$m$TAG-e$e.$proto.txt"
  done
done
