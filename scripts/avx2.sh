#!/usr/bin/env bash
# Run a program on an emulated x86-64 CPU with AVX2 and neither AVX-512 nor VNNI (an Intel
# Haswell, under qemu-user: scripts/setup_qemu.sh installs it), where onnxruntime picks the
# U8S8 kernels whose int16 pair sums saturate. The program must be a binary, not a script:
#   bash scripts/avx2.sh .venv/bin/python scripts/int8_check.py artifacts/demo/export
# The CPU flags turned off are those qemu's TCG cannot emulate (it warns about each).
set -euo pipefail
command -v qemu-x86_64 > /dev/null || { echo "error: qemu-x86_64 not found; run scripts/setup_qemu.sh" >&2; exit 1; }
exec qemu-x86_64 -cpu Haswell-noTSX,-pcid,-x2apic,-tsc-deadline,-invpcid "$@"
