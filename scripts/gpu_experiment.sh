#!/usr/bin/env bash
# A GPU round of the OpenKBP experiment (docs/results.md): the four released models (models/openkbp-*)
# each continued on one GPU for the same number of whole-volume steps, all four at once on the one
# GPU; then the CUDA benchmarks. Round 7 ("Round 7 on a GPU") was the default: ROUND=r7 SEED=6, no
# EXTRA. The prepared next round (the capacity campaign, docs/results.md "Round 13"): the 6-level
# network (channels 16..512) from the campaign's shared MAE warm-up, all four objectives at one budget:
#   ROUND=r13 SEED=13 INIT=experiments/round13/state/r13-warmup-1400 LR=5e-4 EXTRA="--shift" \
#     BUDGET_S=540 OUT=out bash scripts/gpu_experiment.sh
# (the cascade of round 11 on the 4-level release: ROUND=r13c EXTRA="--stages 2 --freeze-stage1 --shift")
# Written for a lent machine with a time limit:
#
#   dosepred data pack /work/exp/cache/train --out .gpu/train --ct-step 8 --dose-step 5
#   pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
#     --platform manylinux2014_x86_64 -d .whl monai==1.6.1 pydantic==2.14.4 pydantic_core==2.50.5 \
#     annotated-types==0.8.0 typing-inspection==0.4.5 typer==0.29.2 rich==15.0.0
#   (.gpu and .whl ignored by git, carried to the machine: 42 + 5 MiB; its image lacks MONAI and pydantic)
#   (on the GPU machine, repository root)  BUDGET_S=480 OUT=out bash scripts/gpu_experiment.sh
#
# A short calibration run of all four measures the step time; the number of epochs (of STEPS steps)
# is then the most that fits in BUDGET_S (seconds from the start of this script, training, export
# and benchmarks included), the same for all four. Outputs under $OUT: ROUND-NAME.tar.gz (exported
# model folder, fp32, plus metrics.csv, config and log), logs.tar.gz, summary.txt; while the runs
# train, progress.txt and ROUND-NAME.metrics.csv are refreshed every 30 s (and each run's last epoch
# line is printed), so a run cut by the machine's limit still returns its numbers.
# Env: PACKED (default .gpu/train), WHEELS (.whl, installed with --no-deps if present), DEVICE
# (cuda), STEPS (steps per epoch, 100), MAX_EPOCHS (60), CALIB_STEPS (30), BENCH (1: run benchmarks),
# EXTRA (extra train options for every run), ROUND (r7: the runs' name prefix), SEED (6), PY (python3),
# INIT (the weights every run starts from; default models/openkbp-NAME, each its own), LR (2e-4).
set -uo pipefail
t0=$(date +%s)
BUDGET_S=${BUDGET_S:-480}
OUT=${OUT:?set OUT}
PACKED=${PACKED:-.gpu/train}
WHEELS=${WHEELS:-.whl}
DEVICE=${DEVICE:-cuda}
STEPS=${STEPS:-100}
MAX_EPOCHS=${MAX_EPOCHS:-60}
CALIB_STEPS=${CALIB_STEPS:-30}
BENCH=${BENCH:-1}
PY=${PY:-python3}
ROUND=${ROUND:-r7}
SEED=${SEED:-6}
WORK=${WORK:-/tmp/dp}
NAMES=(mae mae-dvh mae-moment mae-cdm)
declare -A LOSS=([mae]=mae [mae-dvh]=mae+dvh [mae-moment]=mae+moment [mae-cdm]=mae+cdm)
CDM_OPTS="--loss-opt cdm_target_weight=4 --loss-opt cdm_oar_weight=1 --loss-opt cdm_spread=3"
mkdir -p "$OUT" "$WORK"
exec > >(tee -a "$WORK/gpu_experiment.log") 2>&1
elapsed() { echo $(( $(date +%s) - t0 )); }
say() { echo "[$(elapsed) s] $*"; }

if [[ -d $WHEELS ]] && ls "$WHEELS"/*.whl >/dev/null 2>&1; then
  $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$WORK/site" \
    "$WHEELS"/*.whl || exit 1
  export PYTHONPATH=$WORK/site:$PWD/src
else
  export PYTHONPATH=$PWD/src${PYTHONPATH:+:$PYTHONPATH}
fi
dp() { $PY -m dosepred "$@"; }
say "python: $($PY -c 'import sys, torch, monai; print(sys.version.split()[0], "torch", torch.__version__, "monai", monai.__version__, "cuda", torch.cuda.is_available())')"
command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader

cache=$WORK/cache/train
[[ -f $cache/dataset.json ]] || dp data unpack "$PACKED" --out "$cache" --jobs "$(nproc)" --no-progress || exit 1
say "data ready"

train() {  # NAME OUT EPOCHS STEPS_PER_EPOCH SEED
  local n=$1 o=$2 opts=""
  [[ $n == mae-cdm ]] && opts=$CDM_OPTS
  # shellcheck disable=SC2086
  dp train --data "$cache" --out "$o" --init "${INIT:-models/openkbp-$n}" --loss "${LOSS[$n]}" $opts \
    --patch 128 --batch 1 --epochs "$3" --steps-per-epoch "$4" --lr "${LR:-2e-4}" --schedule cosine --seed "$5" \
    --device "$DEVICE" --workers 3 --no-progress ${EXTRA:-} > "$o.log" 2>&1
}

# ---- calibration: all four at once for CALIB_STEPS steps --------------------------------------
t_c0=$(elapsed)
pids=()  # two short epochs: the second one's step time is free of cuDNN's first-call autotuning
for n in "${NAMES[@]}"; do train "$n" "$WORK/calib-$n" 2 "$CALIB_STEPS" 99 & pids+=($!); done
ok=1; for p in "${pids[@]}"; do wait "$p" || ok=0; done
if [[ $ok == 0 ]]; then
  say "calibration failed"; tail -n 30 "$WORK"/calib-*.log
  tar -czf "$OUT/logs.tar.gz" -C "$WORK" $(cd "$WORK" && ls -d ./*.log) ; exit 1
fi
sps=$(for n in "${NAMES[@]}"; do tail -n 1 "$WORK/calib-$n/metrics.csv"; done |
      $PY -c "import sys; print(max(float(l.split(',')[-2]) for l in sys.stdin if l.strip()))")
t_cal=$(elapsed)
# a run's start (data loading, CUDA) = calibration wall time minus its steps; time left for training:
# budget minus what is spent, the start, export (~30 s) and benchmarks, with a 15 % margin
reserve=$(( 40 + (BENCH == 1 ? 100 : 0) ))
epochs=$($PY -c "import math; start=max(0, $t_cal-$t_c0-2*$CALIB_STEPS*$sps); left=$BUDGET_S-$t_cal-$reserve-start; print(max(0, min($MAX_EPOCHS, math.floor(0.85*left/($sps*$STEPS)))))")
say "calibration: slowest run $sps s/step with four at once; $epochs epochs x $STEPS steps each"
echo "sec_per_step_calibration=$sps epochs=$epochs steps_per_epoch=$STEPS" > "$WORK/plan.txt"
[[ $epochs -ge 1 ]] || { say "no time left to train"; exit 1; }

# ---- the round: the same steps for all four ----------------------------------------------------
deadline=$(( BUDGET_S - reserve ))
pids=()
for n in "${NAMES[@]}"; do train "$n" "$WORK/$ROUND-$n" "$epochs" "$STEPS" "$SEED" & pids+=($!); done
( i=0; while sleep 5; do
    if (( i++ % 6 == 0 )); then
      command -v nvidia-smi >/dev/null && echo "$(elapsed) s: $(nvidia-smi \
        --query-gpu=utilization.gpu,memory.used --format=csv,noheader)" >> "$WORK/gpu_usage.txt"
      for n in "${NAMES[@]}"; do  # progress that comes back even if the machine cuts this script
        m=$WORK/$ROUND-$n/metrics.csv
        [[ -f $m ]] && cp "$m" "$OUT/$ROUND-$n.metrics.csv" && echo "$(elapsed) s $ROUND-$n: $(tail -n 1 "$m")"
      done | tee -a "$OUT/progress.txt"
    fi
    if (( $(elapsed) > deadline )); then say "deadline: stopping the trainings"; pkill -f "dosepred train"; break; fi
    alive=0; for p in "${pids[@]}"; do kill -0 "$p" 2>/dev/null && alive=1; done; [[ $alive == 0 ]] && break
  done ) &
watch=$!
for p in "${pids[@]}"; do wait "$p"; done
kill "$watch" 2>/dev/null
say "training done"
for n in "${NAMES[@]}"; do
  r=$WORK/$ROUND-$n
  echo "$ROUND-$n: $(tail -n 1 "$r/metrics.csv" | cut -d, -f1,2) (epoch,step) $(tail -n 1 "$r.log")" >> "$WORK/plan.txt"
  [[ -f $r/checkpoints/last.pt ]] || continue
  dp export-model "$r" --out "$WORK/export/$ROUND-$n" --fp32 >> "$r.log" 2>&1 || continue
  cp "$r/metrics.csv" "$r.log" "$WORK/export/$ROUND-$n/"; cp "$r/config.json" "$WORK/export/$ROUND-$n/train_config.json"
  tar -czf "$OUT/$ROUND-$n.tar.gz" -C "$WORK/export" "$ROUND-$n"
done
say "exported"

# ---- CUDA benchmarks (what the CPU-only sessions could not measure) ----------------------------
if [[ $BENCH == 1 && $DEVICE == cuda* ]]; then
  left=$(( BUDGET_S - $(elapsed) - 10 ))
  if (( left > 30 )); then
    timeout $(( left * 2 / 3 )) $PY -m dosepred bench bitmask --size 64 --patients 4 --device cuda --workers 2 \
      --json "$WORK/bench_bitmask_cuda.json" --no-progress > "$WORK/bench_bitmask_cuda.txt" 2>&1
    say "bench bitmask rc $?"
  fi
  left=$(( BUDGET_S - $(elapsed) - 5 ))
  if (( left > 15 )); then
    timeout "$left" $PY -m dosepred bench losses --sizes 64,128 --repeats 5 --device cuda \
      --json "$WORK/bench_losses_cuda.json" --no-progress > "$WORK/bench_losses_cuda.txt" 2>&1
    say "bench losses rc $?"
  fi
fi
say "total"
cp "$WORK/plan.txt" "$OUT/summary.txt"
command -v nvidia-smi >/dev/null && nvidia-smi >> "$OUT/summary.txt"
(cd "$WORK" && tar -czf "$OUT/logs.tar.gz" ./*.log ./*.txt $(ls ./*.json 2>/dev/null) \
   $(ls -d ./calib-*/metrics.csv ./"$ROUND"-*/metrics.csv 2>/dev/null))
exit 0
