#!/usr/bin/env bash
# Proves that the runtime installs and predicts without torch or onnx: a second virtual
# environment with only `pip install -e .[cpu,text]` runs `matryoshka predict` on exports that
# the full environment (.venv, made by scripts/test.sh) produced: arrays on the digits, and raw
# strings (--text) on a text export, whose tokenizer.json it applies with `tokenizers` alone.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
RT=.venv-runtime
[ -x $RT/bin/python ] || "$PY" -m venv $RT
if ! $RT/bin/python -m pip install -q --disable-pip-version-check -e ".[cpu,text]" > $RT/pip.log 2>&1
then
  cat $RT/pip.log >&2
  exit 1
fi
$RT/bin/python - <<'PYEOF'
import importlib.util
import sys

for name in ("torch", "onnx"):
    assert importlib.util.find_spec(name) is None, f"{name} is installed in the runtime venv"
import matryoshka.runtime  # noqa: F401

loaded = [m for m in ("torch", "onnx") if m in sys.modules]
assert not loaded, f"import matryoshka.runtime pulled in {loaded}"
PYEOF
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
.venv/bin/matryoshka train --preset tiny --epochs 1 --out "$tmp/ck" --no-progress > /dev/null
.venv/bin/mexport --checkpoint "$tmp/ck" --out "$tmp/exp" --no-progress > /dev/null
.venv/bin/python -c "
import numpy as np
from matryoshka.data import load_dataset
np.save('$tmp/x.npy', load_dataset('demo')['test'][0][:9])"
$RT/bin/matryoshka predict "$tmp/exp" "$tmp/x.npy" --device cpu --json > "$tmp/rt.json"
.venv/bin/matryoshka predict "$tmp/exp" "$tmp/x.npy" --device cpu --json > "$tmp/full.json"
cmp "$tmp/rt.json" "$tmp/full.json"
$RT/bin/python -c "
import json; out = json.load(open('$tmp/rt.json')); assert len(out['labels']) == 9, out"
# raw text: a tiny model on the text demo's data (scripts/fetch_text_demo.sh fetched it)
.venv/bin/matryoshka train --data artifacts/data/spam.csv --preset tiny-text --max-len 32 \
  --vocab-size 500 --epochs 1 --out "$tmp/tck" --no-progress > /dev/null
.venv/bin/mexport --checkpoint "$tmp/tck" --out "$tmp/texp" --no-progress > /dev/null
texts=(--text "WIN a FREE cruise!!! Reply now to claim your prize" --text "lunch on Thursday?")
$RT/bin/matryoshka predict "$tmp/texp" "${texts[@]}" --device cpu --json > "$tmp/rt-text.json"
.venv/bin/matryoshka predict "$tmp/texp" "${texts[@]}" --device cpu --json > "$tmp/full-text.json"
cmp "$tmp/rt-text.json" "$tmp/full-text.json"
$RT/bin/python -c "
import json; out = json.load(open('$tmp/rt-text.json'))
assert len(out['label_names']) == 2 and set(out['label_names']) <= {'ham', 'spam'}, out"
# an imported pretrained encoder (a tiny random BERT folder, WordPiece with [CLS]/[SEP])
.venv/bin/python -c "
from tests.model.tiny_bert import labelled_csv, make_tiny_bert
make_tiny_bert('$tmp/bert')
labelled_csv('$tmp/bert.csv')"
.venv/bin/matryoshka train --data "$tmp/bert.csv" --pretrained "$tmp/bert" --max-len 16 \
  --epochs 1 --out "$tmp/bck" --no-progress > /dev/null
.venv/bin/mexport --checkpoint "$tmp/bck" --out "$tmp/bexp" --no-progress > /dev/null
$RT/bin/matryoshka predict "$tmp/bexp" "${texts[@]}" --device cpu --json > "$tmp/rt-bert.json"
.venv/bin/matryoshka predict "$tmp/bexp" "${texts[@]}" --device cpu --json > "$tmp/full-bert.json"
cmp "$tmp/rt-bert.json" "$tmp/full-bert.json"
echo "runtime-only check: torch and onnx absent, matryoshka predict (arrays, --text, and --text" \
  "on an imported BERT) agrees with the full install"
