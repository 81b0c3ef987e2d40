#!/usr/bin/env bash
# The JavaScript side of the examples and of their checks (scripts/js_parity.py,
# tests/test_js_examples.py): Debian's Chromium (as root, where apt-get exists) and the npm
# packages pinned by examples/{node,web}/package-lock.json, installed with `npm ci` into the
# ignored examples/*/node_modules. Nothing here is committed; rerunning it is cheap.
# Exit 0 with a line saying what is missing when Node.js or Chromium cannot be installed:
# the checks that need them then skip and say why.
set -euo pipefail
cd "$(dirname "$0")/.."
have() { command -v "$1" > /dev/null 2>&1; }
if ! have chromium && [ "$(id -u)" = 0 ] && have apt-get; then
  echo "== setup_js: installing Debian's chromium"
  (apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium) \
    > /tmp/matryoshka-apt.log 2>&1 || echo "setup_js: apt-get install chromium failed (see /tmp/matryoshka-apt.log)"
fi
if ! have node || ! have npm; then
  echo "setup_js: node/npm not found: the Node.js and browser checks will skip"
  exit 0
fi
for ex in examples/node examples/web; do
  # npm ci installs exactly the lock file; examples/node/.npmrc skips onnxruntime-node's
  # download of CUDA binaries from nuget.org
  # (once per change of the lock file: npm writes node_modules/.package-lock.json last)
  if [ ! "$ex/node_modules/.package-lock.json" -nt "$ex/package-lock.json" ]; then
    echo "== setup_js: npm ci in $ex"
    (cd "$ex" && npm ci --no-audit --no-fund --loglevel=error)
  fi
done
have chromium || echo "setup_js: chromium not found: the browser checks will skip"
