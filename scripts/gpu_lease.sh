#!/usr/bin/env bash
# One GPU lease (the `device` tool's 15 minutes), run ON the device machine: two base-training
# arms at once on the one GPU, then the CUDA encode check.
#
#   bash scripts/gpu_bundle.sh pack                                  # here, first
#   device run: bash scripts/gpu_lease.sh 400    carry [".gpu"], timeout_s 600
#   bash scripts/gpu_bundle.sh restore                               # here, before any commit
#
# Arm "wide": the shipped model widened to N = WIDE_N (jobs/widen_weights.py: it starts out
# computing exactly what the shipped model computes; at the shipped width it is a plain copy) and
# trained for SECONDS. Arm "narrow": the last N = 64 model (NARROW, default the v8 file) trained as
# it is, the control (v9's lease: docs/DESIGN.md, "Widening instead of starting over"). Beside them,
# bench/cuda_roundtrip.py codes two Kodak images on the GPU with the shipped model, for the CPU
# here to restore. Both arms: BATCH (16) 256² crops a step, λ over q1-q6, bfloat16 autocast, the
# learning rate decaying over the last 30 %. The two small models leave the GPU idle between kernel launches, so running both at once
# costs each little: v9's lease ran 0.04 s a step in each arm at batch 16, launch-bound, so a larger
# BATCH buys crops nearly free. The whole command takes about SECONDS + 140 s (start-up of the arms,
# their final checkpoint and export): 400 fits a 600 s call; 470 did not.
#
# Back under $OUT: wide.pt and narrow.pt (exported weights files, each the next run's resume
# point; re-exported every minute while training runs, so a lease cut short still brings back its
# latest checkpoint), their training logs, what was printed, and cuda.tar (the coded files).
set -uo pipefail
cd "$(dirname "$0")/.."
BUDGET=${1:?usage: bash scripts/gpu_lease.sh SECONDS}
OUT=${OUT:?OUT is the device tool\'s folder of files to bring back}
WIDE_N=${WIDE_N:-128}
NARROW=${NARROW:-oml/weights/oml-default-v8.pt}
BATCH=${BATCH:-16}
PY=${PYTHON:-python3}
if [ -d .gpu/whl ] && ! "$PY" -c "import compressai" 2>/dev/null; then
  "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site .gpu/whl/*.whl
  export PYTHONPATH=/tmp/site
fi
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
RUNS=/tmp/oml-lease
mkdir -p "$RUNS"
exec > >(tee "$OUT/lease.out") 2>&1
nvidia-smi -L 2>/dev/null || true
"$PY" -c "import torch, compressai, numpy; print('torch', torch.__version__, 'numpy', numpy.__version__, 'cuda', torch.cuda.is_available())" || exit 1
"$PY" jobs/widen_weights.py oml/weights/oml-default.pt "$RUNS/wide-init.pt" --N "$WIDE_N" || exit 1

export_arm() {  # export_arm NAME INIT: the run's last checkpoint as $OUT/NAME.pt, replaced atomically
  [ -f "$RUNS/$1/last.pt" ] || return 0
  "$PY" jobs/export_weights.py "$RUNS/$1/last.pt" "$RUNS/$1.export.pt" --offsets-from "$2" >/dev/null &&
    mv "$RUNS/$1.export.pt" "$OUT/$1.pt"
}

train_arm() {  # train_arm NAME INIT N
  "$PY" jobs/train_base.py --device cuda --amp --data-dir .gpu/train --out-dir "$RUNS/$1" --init "$2" --N "$3" \
    --lambda-high 0.0483 --crop 256 --batch "$BATCH" --lr 1e-4 --warmup 300 --steps 100000000 \
    --seconds "$BUDGET" --decay-share 0.3 --eval-every 1000 --ckpt-every 1000 --threads 4 >"$RUNS/$1.out" 2>&1
  echo "$1: train_base exit $?"
}

"$PY" bench/cuda_roundtrip.py encode .gpu/kodak/*.png -o "$RUNS/cuda" --device cuda >"$RUNS/cuda.out" 2>&1 &
CUDA_PID=$!
train_arm wide "$RUNS/wide-init.pt" "$WIDE_N" &
WIDE_PID=$!
train_arm narrow "$NARROW" 64 &
NARROW_PID=$!
while kill -0 "$WIDE_PID" 2>/dev/null || kill -0 "$NARROW_PID" 2>/dev/null; do
  sleep 60
  for arm in wide narrow; do
    tail -n 1 "$RUNS/$arm/train_log.jsonl" 2>/dev/null | cut -c 1-200
    cp "$RUNS/$arm/train_log.jsonl" "$OUT/${arm}_log.jsonl" 2>/dev/null
  done
  export_arm wide "$RUNS/wide-init.pt"
  export_arm narrow "$NARROW"
done
wait "$WIDE_PID" "$NARROW_PID"
for arm in wide narrow; do
  cp "$RUNS/$arm/train_log.jsonl" "$OUT/${arm}_log.jsonl" 2>/dev/null
  tail -n 5 "$RUNS/$arm.out"
done
export_arm wide "$RUNS/wide-init.pt"
export_arm narrow "$NARROW"
ls -l "$OUT"

wait "$CUDA_PID" && tar -C "$RUNS" -cf "$OUT/cuda.tar" cuda
cat "$RUNS/cuda.out"
echo "lease done"
