#!/usr/bin/env bash
# Train the default model further on a CUDA GPU, then meta-train its λ-offset branches again and
# export both weights files. For any machine with an NVIDIA GPU and this checkout set up
# (bash scripts/setup.sh), e.g. a GPU node of the Ray cluster in cluster.yaml:
#
#   bash scripts/train_gpu.sh DATA_DIR SECONDS [extra jobs/train_base.py flags]
#   bash scripts/train_gpu.sh ../shared/data/train 3600                 # an hour, then the exports
#   BATCH=32 OUT=runs/next bash scripts/train_gpu.sh s3://bucket/train 7200
#
# Base training resumes the shipped weights file, which is the resume point (it holds the training
# model with its checkerboard context and the step it was taken at): batch BATCH of CROP² crops,
# λ over q1-q6, for SECONDS of wall time with the learning rate decaying over the last 30 % of it;
# bfloat16 autocast (--amp) unless bench/train_speed.py, where present, measures float32 faster.
# WIDEN_N=K first widens the transforms to K channels (jobs/widen_weights.py: function-preserving,
# so training resumes from the shipped quality). Running the same command again resumes from
# OUT/run/last.pt. TRAIN_WORKERS=W trains data-parallel on W Ray Train workers, one GPU each, the
# global batch BATCH split over them (the cluster in RAY_ADDRESS, else a local Ray; OUT on a shared
# file system when they are on several nodes); a re-run resumes from OUT/run's latest checkpoint.
# Then the λ-offset branches are meta-trained again on the new decoder (META_STEPS,
# offset mode): in this process (META_WORKERS=0, the default) or on Ray Train with META_WORKERS GPU
# workers (the cluster in RAY_ADDRESS, else a local Ray; put META_STORAGE on s3:// when the workers
# are on several nodes).
#
# Writes under OUT (default runs/gpu): oml-default-gpu.pt (the exported weights, itself the next
# run's resume point), oml-default-gpu-meta.pt (the same with re-trained branches: the file to
# ship; docs/MODELS.md says how), both logs (train_log.jsonl, offset.log.jsonl) and train_gpu.out
# (what was printed). The full checkpoint with the optimiser state (~60 MB) stays in OUT/run.
set -euo pipefail
cd "$(dirname "$0")/.."
USAGE="usage: bash scripts/train_gpu.sh DATA_DIR SECONDS [jobs/train_base.py flags]"
DATA=${1:?$USAGE}
BUDGET=${2:?$USAGE}
shift 2
if [ -x .venv/bin/python ]; then PY=${PYTHON:-.venv/bin/python}; else PY=${PYTHON:-python3}; fi
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
DEVICE=${DEVICE:-cuda}
OUT=${OUT:-runs/gpu}
BATCH=${BATCH:-16}
CROP=${CROP:-256}
INIT=${INIT:-oml/weights/oml-default.pt}
WIDEN_N=${WIDEN_N:-0}  # 0: keep the shipped width (128 from v9; v1-v8 were 64)
META_STEPS=${META_STEPS:-300}  # offset-mode meta-training after base training (0: none); 300 steps is v2's recipe
META_WORKERS=${META_WORKERS:-0}
TRAIN_WORKERS=${TRAIN_WORKERS:-0}  # 0: base training in this process
META_STORAGE=${META_STORAGE:-$OUT/meta}
THREADS=${THREADS:-8}
RUN=$OUT/run
mkdir -p "$OUT"
{
  nvidia-smi -L 2>/dev/null || true
  "$PY" -c "import torch, compressai, numpy; print('torch', torch.__version__, 'numpy', numpy.__version__, 'cuda', torch.cuda.is_available())"
  START=$INIT
  if [ "$WIDEN_N" -gt 0 ]; then  # a re-run keeps the widened file it made (and resumes OUT/run/last.pt)
    [ -f "$OUT/widened.pt" ] || "$PY" jobs/widen_weights.py "$INIT" "$OUT/widened.pt" --N "$WIDEN_N"
    START=$OUT/widened.pt
  fi
  AMP=--amp
  if [ -f bench/train_speed.py ]; then  # the width the run trains at: that of OUT/run/last.pt, else of START
    N=$("$PY" -c 'import sys; from pipeline.training.base import BaseTrainConfig, resolve_widths
print(resolve_widths(BaseTrainConfig(data_dir=sys.argv[1], out_dir=sys.argv[2], init=sys.argv[3])).N)' "$DATA" "$RUN" "$START")
    AMP=$("$PY" bench/train_speed.py --device "$DEVICE" --batch $((BATCH / (TRAIN_WORKERS > 0 ? TRAIN_WORKERS : 1))) --crop "$CROP" --N "$N" --steps 10 --rounds 2 --choose)
  fi
  if [ "$TRAIN_WORKERS" -gt 0 ]; then
    WHERE=(--num-workers "$TRAIN_WORKERS" "$([ "$DEVICE" = cpu ] && echo --no-use-gpu || echo --use-gpu)")
  else
    WHERE=(--device "$DEVICE")
  fi
  echo "training with $AMP for $BUDGET s"
  "$PY" jobs/train_base.py "${WHERE[@]}" "$AMP" --data-dir "$DATA" --out-dir "$RUN" --init "$START" \
    --lambda-high 0.0483 --crop "$CROP" --batch "$BATCH" --lr 1e-4 --warmup 300 --steps 100000000 \
    --seconds "$BUDGET" --decay-share 0.3 --eval-every 2000 --ckpt-every 2000 --threads "$THREADS" "$@"
  "$PY" jobs/export_weights.py "$RUN/last.pt" "$OUT/oml-default-gpu.pt" --offsets-from "$START"
  cp "$RUN/train_log.jsonl" "$OUT/train_log.jsonl"
  if [ "$META_STEPS" -gt 0 ]; then  # the λ-offset branches, meta-trained again on the new decoder
    GPU_FLAG=$([ "$DEVICE" = cpu ] && echo --no-use-gpu || echo --use-gpu)
    if [ "$META_WORKERS" -gt 0 ]; then
      WHERE=(--ray --num-workers "$META_WORKERS")
    else
      WHERE=(--no-ray --num-workers 1)
    fi
    "$PY" jobs/metatrain.py --weights "$OUT/oml-default-gpu.pt" --mode offset --steps "$META_STEPS" --outer-lr 1e-2 \
      --tasks-per-step 4 "${WHERE[@]}" "$GPU_FLAG" --threads "$THREADS" --data-dir "$DATA" \
      --storage-path "$META_STORAGE" --name offset --output "$OUT/offset.pt" --report-every 25
    "$PY" jobs/export_weights.py "$OUT/offset.pt" "$OUT/oml-default-gpu-meta.pt"
  fi
} 2>&1 | tee "$OUT/train_gpu.out"
