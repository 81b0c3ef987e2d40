#!/usr/bin/env bash
# The CUDA check of a lent GPU machine, end to end (docs/gpu.md): reassemble the parts that
# scripts/gpu_prepare.py made and the device runs copied into PARTS_DIR, check their sha256,
# install onnxruntime-gpu beside the machine's own packages, then run scripts/gpu_check.py,
# which writes gpu.md and gpu.json into OUT_DIR.
#   bash scripts/gpu_check.sh PARTS_DIR OUT_DIR
# Where CUDA cannot run, it ends with one `error:` line and exit 1.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ $# -ne 2 ]; then echo "error: usage: bash scripts/gpu_check.sh PARTS_DIR OUT_DIR" >&2; exit 2; fi
PARTS=$1 OUT=$2
mkdir -p "$OUT"
PY=${PYTHON:-python3}
if [ -f "$PARTS/PARTS.sha256" ]; then
  (cd "$PARTS" && sha256sum --quiet -c PARTS.sha256) || {
    echo "error: a part in $PARTS does not match PARTS.sha256; copy it again" >&2; exit 1; }
  WORK=$PARTS/unpacked
  rm -rf "$WORK" && mkdir -p "$WORK"
  cat "$PARTS"/part-* | tar -x -C "$WORK"
else
  WORK=$PARTS  # already unpacked (art/ and, maybe, wheel/)
fi
SITE=$WORK/site
if ls "$WORK"/wheel/onnxruntime_gpu-*.whl > /dev/null 2>&1; then
  "$PY" -m pip install -q --no-index --no-deps --target "$SITE" "$WORK"/wheel/onnxruntime_gpu-*.whl
fi
export PYTHONPATH="$SITE:$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
exec "$PY" scripts/gpu_check.py "$WORK/art" --out "$OUT"
