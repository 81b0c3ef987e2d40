#!/usr/bin/env bash
# The main job of the README, on the built-in demo (handwritten digits), from a fresh clone:
# install, train, export every level, calibrate the cascade (and INT8), bench on this device.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
echo "== install (torch pinned to the CPU wheel by constraints.txt)"
if ! .venv/bin/python -m pip install -q --disable-pip-version-check -c constraints.txt \
    -e ".[train,cpu,plot]" > .venv/pip.log 2>&1; then
  cat .venv/pip.log >&2
  exit 1
fi
M=.venv/bin/matryoshka
A=artifacts/demo
step() { echo "== $1"; SECONDS=0; }
took() { echo "   ($SECONDS s wall clock)"; }
step train
$M train --preset demo --data demo --out $A/checkpoint --force
took
step export
.venv/bin/mexport --levels 64,128,256,512 --checkpoint $A/checkpoint --out $A/export \
  --quantize dynamic --force
took
step "calibrate (fp32 cascade), then INT8 static quantization and its own cascade"
$M calibrate $A/export --data demo --epsilon 0.02 --delta 0.1
$M calibrate $A/export --data demo --epsilon 0.02 --delta 0.1 --int8 static --variant int8
took
step bench
$M bench $A/export --device cpu --batch 1,32 --baselines torch,padded \
  --json $A/bench-cpu-fp32.json --plot $A/bench-cpu.png
$M bench $A/export --device cpu --batch 1,32 --variant int8 --json $A/bench-cpu-int8.json
took
echo "== done: table in $A/export/bench.md, plot in $A/bench-cpu.png"
