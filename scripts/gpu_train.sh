#!/usr/bin/env bash
# One GPU lease of base training, run ON the device machine (see scripts/gpu_bundle.sh):
#
#   bash scripts/gpu_train.sh SECONDS [extra train_base flags]      # e.g. 420
#
# Resumes the shipped weights file, which is the resume point (it holds the training model with its
# checkerboard context and the step it was taken at), batch 16 of 256² crops, λ over q1-q6, for
# SECONDS of wall time with the learning rate decaying over the last 30 % of it; picks --amp only
# where bench/train_speed.py measures it faster. Then meta-trains the λ-offset branches again on the
# new decoder (META_STEPS, offset mode, in-process: the device has no Ray). Brings back under $OUT:
# the exported weights (oml-default-gpu.pt, itself the next run's resume point), the same with
# re-trained branches (oml-default-gpu-meta.pt, the one to ship), both logs and what was printed.
# The full checkpoint (optimiser state, ~60 MB) stays behind.
set -euo pipefail
cd "$(dirname "$0")/.."
BUDGET=${1:?usage: bash scripts/gpu_train.sh SECONDS [train_base flags]}
shift
OUT=${OUT:?OUT is the device tool\'s folder of files to bring back}
PY=${PYTHON:-python3}
if [ -d .gpu/whl ] && ! "$PY" -c "import compressai" 2>/dev/null; then
  "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site .gpu/whl/*.whl
  export PYTHONPATH=/tmp/site
fi
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
DEVICE=${DEVICE:-cuda}
DATA=${DATA:-.gpu/train}
RUN=${RUN:-/tmp/oml-gpu-run}
BATCH=${BATCH:-16}
CROP=${CROP:-256}
N=${N:-128}  # the shipped model's width (v9 on; v1-v8 were 64)
META_STEPS=${META_STEPS:-300}  # offset-mode meta-training after base training (0: none); 300 steps is v2's recipe
{
  nvidia-smi -L 2>/dev/null || true
  "$PY" -c "import torch, compressai, numpy; print('torch', torch.__version__, 'numpy', numpy.__version__, 'cuda', torch.cuda.is_available())"
  AMP=$("$PY" bench/train_speed.py --device "$DEVICE" --batch "$BATCH" --crop "$CROP" --N "$N" --steps 10 --rounds 2 --choose)
  echo "training with $AMP for $BUDGET s"
  "$PY" jobs/train_base.py --device "$DEVICE" "$AMP" --data-dir "$DATA" --out-dir "$RUN" \
    --init oml/weights/oml-default.pt --N "$N" \
    --lambda-high 0.0483 --crop "$CROP" --batch "$BATCH" --lr 1e-4 --warmup 300 --steps 100000000 \
    --seconds "$BUDGET" --decay-share 0.3 --eval-every 2000 --ckpt-every 2000 --threads 8 "$@"
  "$PY" jobs/export_weights.py "$RUN/last.pt" "$OUT/oml-default-gpu.pt" \
    --offsets-from oml/weights/oml-default.pt
  cp "$RUN/train_log.jsonl" "$OUT/train_log.jsonl"
  if [ "$META_STEPS" -gt 0 ]; then  # the λ-offset branches, meta-trained again on the new decoder
    GPU_FLAG=$([ "$DEVICE" = cuda ] && echo --use-gpu || echo --no-use-gpu)
    "$PY" jobs/metatrain.py --weights "$OUT/oml-default-gpu.pt" --mode offset --steps "$META_STEPS" --outer-lr 1e-2 \
      --tasks-per-step 4 --no-ray --num-workers 1 "$GPU_FLAG" --threads 8 --data-dir "$DATA" \
      --storage-path "$RUN-meta" --name offset --output "$RUN-meta/offset.pt" --report-every 25
    "$PY" jobs/export_weights.py "$RUN-meta/offset.pt" "$OUT/oml-default-gpu-meta.pt"
    cp "$RUN-meta/offset.log.jsonl" "$OUT/offset.log.jsonl"
  fi
} 2>&1 | tee "$OUT/gpu_train.out"
