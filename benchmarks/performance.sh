#!/usr/bin/env bash
# The measurements behind docs/results.md's "Performance" section, on this machine.
# Run after scripts/demo.sh has made artifacts/demo/export.
set -euo pipefail
cd "$(dirname "$0")/.."
E=${1:-artifacts/demo/export}
.venv/bin/matryoshka bench "$E" --device cpu --batch 1,32 --baselines torch,padded \
  --json artifacts/demo/bench-cpu-fp32.json --plot artifacts/demo/bench-cpu.png
.venv/bin/matryoshka bench "$E" --device cpu --batch 1,32 --variant int8 \
  --json artifacts/demo/bench-cpu-int8.json
.venv/bin/python benchmarks/runtime_overhead.py "$E"
.venv/bin/python benchmarks/runtime_overhead.py "$E" --threads 1
.venv/bin/python benchmarks/exporters.py
