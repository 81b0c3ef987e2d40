"""cascade.onnx against the levels engine on an export's whole test split, for every variant
that has a cascade graph (fp32, int8, auto): its defaults, all 0, all 1, 20 random threshold
vectors and the tie vectors (thresholds equal in float32 to real confidences). Labels and
levels must be equal row for row and probs bit for bit.

    python scripts/cascade_parity.py artifacts/demo/export [--random 20]

Exit 0 when every variant holds, 1 (with the first difference) otherwise.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from matryoshka.data.source import for_export
from matryoshka.errors import ValidationError
from matryoshka.folder.cascades import check_cascade
from matryoshka.runtime import Runtime
from matryoshka.runtime.inputs import check_input
from matryoshka.runtime.manifest import read_manifest


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("export_dir")
    ap.add_argument("--random", type=int, default=20)
    args = ap.parse_args()
    folder = Path(args.export_dir)
    m = read_manifest(folder)
    x = check_input(for_export(folder, m, None)[0]["test"][0], m["input"])
    failed = False
    for variant, entry in (m.get("cascade") or {}).items():
        rt = Runtime.from_manifest(folder, m, device="cpu", variant=variant)
        data = (folder / entry["file"]).read_bytes()
        try:
            n = check_cascade(data, rt, entry, x, entry["file"], rows=len(x),
                              random=args.random)
            print(f"{variant:5} {entry['file']}: {len(x)} rows x {n} threshold vectors: labels "
                  "and levels equal, probs bit for bit")
        except ValidationError as e:
            failed = True
            print(f"{variant:5} {e}")
    if not m.get("cascade"):
        print(f"{folder} has no cascade graph; run matryoshka calibrate {folder}")
        return 1
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
