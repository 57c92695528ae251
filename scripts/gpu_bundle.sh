#!/usr/bin/env bash
# Get this checkout ready for one GPU training lease (the `device` tool), and back.
#
#   bash scripts/gpu_bundle.sh pack       # here, before the device call
#   device run: bash scripts/gpu_lease.sh 400        (carry: [".gpu"], timeout_s: 600)
#     (or scripts/gpu_train.sh 420 for the narrow model alone)
#   bash scripts/gpu_bundle.sh restore    # here, right after it, before any commit
#
# Everything tracked travels to the device machine, and all of it must fit in 64 MiB with what is
# carried. The training photos (142 MB of PNG in ../shared, which does not travel) go as JPEG
# quality 92, 4:4:4, in .gpu/train (same names, so the held-out split is the same five photos);
# CompressAI, which the device's Python lacks, goes as its cp312 wheel in .gpu/whl. To make
# room, `pack` takes what training does not read out of git's index (docs/data, the older
# weights versions, tests/expected): the files stay on disk, untracked and excluded for the
# lease; `restore` puts them back in the index. Never commit between the two.
set -euo pipefail
cd "$(dirname "$0")/.."
DATA=${DATA:-../shared/data/train}
QUALITY=${QUALITY:-92}
LEAVE=(docs/data tests/expected)
KEEP=${KEEP:-oml/weights/oml-default-v8.pt}  # the N = 64 control arm of scripts/gpu_lease.sh starts there
# When the shipped oml-default.pt is an overlay (docs/DESIGN.md "Shipped weights"), its base travels too.
BASE=$(.venv/bin/python -c 'import torch
s = torch.load("oml/weights/oml-default.pt", map_location="cpu", weights_only=True, mmap=True)
print(s["base"]["name"] if s.get("format") == "oml-weights-overlay/1" else "")')
for f in oml/weights/oml-default-v*.pt; do [ "$f" = "$KEEP" ] || [ "$f" = "oml/weights/$BASE" ] || LEAVE+=("$f"); done
EXCLUDE=.git/info/exclude
MARK="# gpu_bundle.sh: out of the index for a GPU lease"

case "${1:-}" in
pack)
  grep -qxF "/.gpu/" "$EXCLUDE" 2>/dev/null || echo "/.gpu/" >>"$EXCLUDE"
  mkdir -p .gpu/whl .gpu/train
  if ! ls .gpu/whl/compressai-*.whl >/dev/null 2>&1; then
    python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
      --platform manylinux_2_34_x86_64 --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 \
      -d .gpu/whl "compressai==1.2.8" pytorch-msssim
  fi
  mkdir -p .gpu/kodak  # two Kodak images for the CUDA encode check (bench/cuda_roundtrip.py), never trained on
  for k in ${KODAK_IMAGES:-kodim05 kodim23}; do
    [ -f "../shared/data/kodak/$k.png" ] && cp -n "../shared/data/kodak/$k.png" .gpu/kodak/
  done
  .venv/bin/python - "$DATA" .gpu/train "$QUALITY" <<'EOF'
import sys
from pathlib import Path
from PIL import Image
from pipeline import storage
src, dst, quality = sys.argv[1], Path(sys.argv[2]), int(sys.argv[3])
for uri in storage.list_images(src):
    out = dst / (Path(uri).stem + ".jpg")
    if not out.exists():
        Image.open(uri).convert("RGB").save(out, "JPEG", quality=quality, subsampling=0)
EOF
  if ! grep -qxF "$MARK" "$EXCLUDE"; then
    echo "$MARK" >>"$EXCLUDE"
    for p in "${LEAVE[@]}"; do echo "/$p" >>"$EXCLUDE"; done
    git rm -r -q --cached "${LEAVE[@]}"
  fi
  tracked=$(git ls-files -z | xargs -0 du -cb 2>/dev/null | tail -1 | cut -f1)
  carried=$(du -sb .gpu | cut -f1)
  echo "travels: $((tracked / 1048576)) MiB tracked + $((carried / 1048576)) MiB in .gpu (limit 64 MiB)"
  echo "now: device run 'bash scripts/gpu_train.sh 420' with carry [\".gpu\"]; then: bash scripts/gpu_bundle.sh restore"
  ;;
restore)
  if grep -qxF "$MARK" "$EXCLUDE"; then
    git reset -q -- "${LEAVE[@]}"
    python3 - "$EXCLUDE" "$MARK" "${LEAVE[@]}" <<'EOF'
import sys
path, mark, *paths = sys.argv[1:]
drop = {mark, *("/" + p for p in paths)}
lines = open(path).read().splitlines()
open(path, "w").write("".join(line + "\n" for line in lines if line not in drop))
EOF
  fi
  git status --short | grep -v '^??' || true
  echo "index restored (nothing of the above should show as deleted)"
  ;;
*)
  echo "usage: bash scripts/gpu_bundle.sh pack|restore" >&2
  exit 2
  ;;
esac
