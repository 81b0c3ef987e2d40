"""Prepare here what `scripts/gpu_check.sh` needs on a lent GPU machine (docs/gpu.md).

    python scripts/gpu_prepare.py [--out .gpu] [--export NAME=DIR ...] [--no-wheel]
                                  [--part-mb 58]

The GPU machine has no onnxsim, no GPU onnxruntime and no network, and one transfer carries
at most 64 MiB. So this writes, under --out:
- `art/NAME/`: each export's files (the manifest and every file it names) and `data.npz`,
  its test rows as the graphs take them (images, or token ids tokenized here), under every
  split key that `--data` reads, so `matryoshka bench --data` works there without the
  original CSV or the tokenizers package;
- the onnxruntime-gpu wheel (cp312, manylinux_2_28, built for CUDA 13; about 255 MB);
- all of it packed into one tar and cut into parts of --part-mb MiB (`part-aa`, `part-ab`,
  ...), with `PARTS.sha256`, and `plan.txt`: the one device command per part, in order.
Exits 2 with one `error:` line on a bad argument, 1 when a download fails.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

WHEEL = "onnxruntime-gpu==1.31.1"
# onnxruntime_gpu-1.31.1-cp312-cp312-manylinux_2_28_x86_64.whl from PyPI (255,569,273 bytes)
WHEEL_SHA256 = "05d548956197b9d01f59b625de740e0d6be3593f874e241a12dc0362650ecdf7"
ROWS = 512  # test rows per export carried for parity and bench


def fail(message: str, code: int = 2) -> None:
    print(f"error: {message}", file=sys.stderr)
    raise SystemExit(code)


def parse_exports(values: list[str]) -> list[tuple[str, Path]]:
    out = []
    for v in values:
        name, sep, folder = v.partition("=")
        if not sep or not name.replace("-", "").replace("_", "").isalnum():
            fail(f"--export takes NAME=DIR with a plain NAME; got {v!r}")
        if not (Path(folder) / "manifest.json").is_file():
            fail(f"--export {name}: {folder} is not an export folder (no manifest.json)")
        out.append((name, Path(folder)))
    if len({n for n, _ in out}) != len(out):
        fail("--export names must differ")
    return out


def fp32_only(manifest: dict) -> dict:
    """The manifest without its INT8 graphs and the cascades, calibrations and plan built on
    them: what a check of the fp32 path needs, at about a third of a MiniLM export's bytes."""
    m = json.loads(json.dumps(manifest))
    for lv in m["levels"]:
        lv.pop("int8", None)
    for key in ("cascade", "calibration"):
        if m.get(key):
            m[key] = {k: v for k, v in m[key].items() if k == "fp32"}
    m.pop("plan", None)
    return m


def copy_export(name: str, src: Path, art: Path, only_fp32: bool) -> dict:
    """The export's committed files and its test rows; returns a line for the plan."""
    import numpy as np

    from matryoshka.data.source import for_export
    from matryoshka.runtime.inputs import check_input
    from matryoshka.runtime.manifest import named_files, read_manifest

    manifest = read_manifest(src)
    dst = art / name
    if dst.exists():
        shutil.rmtree(dst)
    dst.mkdir(parents=True)
    kept = fp32_only(manifest) if only_fp32 else manifest
    for file in named_files(kept):
        shutil.copy2(src / file, dst / file)
    (dst / "manifest.json").write_text(json.dumps(kept, indent=2, allow_nan=False) + "\n")
    dataset, _ = for_export(src, manifest, None)
    x, y = dataset["test"]
    x = check_input(x[:ROWS], manifest["input"])
    y = np.asarray(y[:ROWS], np.int64)
    np.savez(dst / "data.npz", **{f"{k}_{s}": v for s in ("train", "val", "test")
                                   for k, v in (("x", x), ("y", y))})
    size = sum(p.stat().st_size for p in dst.iterdir())
    return {"name": name, "levels": [lv.get("name", str(lv["dim"])) for lv in
                                     manifest["levels"]], "rows": int(len(y)),
            "mib": round(size / 2**20, 1)}


def download_wheel(to: Path) -> Path:
    to.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
           "--python-version", "3.12", "--implementation", "cp", "--platform",
           "manylinux_2_28_x86_64", "-d", str(to), WHEEL]
    r = subprocess.run(cmd, capture_output=True, text=True)
    wheels = sorted(to.glob("onnxruntime_gpu-*.whl"))
    if r.returncode or not wheels:
        fail(f"pip download {WHEEL} failed: {r.stderr.strip().splitlines()[-1:]}", 1)
    h = hashlib.sha256()
    with open(wheels[-1], "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    if h.hexdigest() != WHEEL_SHA256:
        fail(f"{wheels[-1].name} has sha256 {h.hexdigest()}, not the pinned {WHEEL_SHA256}", 1)
    return wheels[-1]


def pack(out: Path, members: list[Path], part_mb: int) -> list[Path]:
    """One uncompressed tar of `members` (relative to out), cut into parts."""
    for old in out.glob("part-*"):
        old.unlink()
    bundle = out / "bundle.tar"
    with tarfile.open(bundle, "w") as tar:
        for m in members:
            tar.add(m, arcname=m.relative_to(out))
    parts, size = [], part_mb * 2**20
    with open(bundle, "rb") as f:
        for i in range(10**4):
            chunk = f.read(size)
            if not chunk:
                break
            part = out / f"part-{chr(97 + i // 26)}{chr(97 + i % 26)}"
            part.write_bytes(chunk)
            parts.append(part)
    bundle.unlink()
    return parts


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default=".gpu")
    ap.add_argument("--export", action="append", default=[], metavar="NAME=DIR")
    ap.add_argument("--no-wheel", action="store_true", help="leave the wheel out (tests)")
    ap.add_argument("--part-mb", type=int, default=58)
    ap.add_argument("--fp32-only", action="store_true",
                    help="carry no INT8 graph (a MiniLM export: about 240 MB instead of 400)")
    args = ap.parse_args()
    if not 1 <= args.part_mb <= 60:
        fail(f"--part-mb must be 1 to 60 (a transfer carries at most 64 MiB); got {args.part_mb}")
    exports = parse_exports(args.export or ["digits=artifacts/demo/export",
                                            "minilm=artifacts/minilm-demo/export"])
    out = Path(args.out)
    art = out / "art"
    art.mkdir(parents=True, exist_ok=True)
    summary = [copy_export(name, folder, art, args.fp32_only) for name, folder in exports]
    members = [art / s["name"] for s in summary]
    if not args.no_wheel:
        members.append(download_wheel(out / "wheel"))
    parts = pack(out, members, args.part_mb)
    for m in members:  # the parts are what travels; the copies would double the disk used
        shutil.rmtree(m) if m.is_dir() else m.unlink()
    shutil.rmtree(art, ignore_errors=True)
    sums = [f"{hashlib.sha256(p.read_bytes()).hexdigest()}  {p.name}" for p in parts]
    (out / "PARTS.sha256").write_text("\n".join(sums) + "\n")
    plan = [f"# {len(parts)} device runs, back to back; each carries one part (carry: "
            f"[\"{out}/<part>\"]) and copies it to /tmp/w, the last one also runs the check"]
    for p in parts[:-1]:
        plan.append(f"mkdir -p /tmp/w && cp {out}/{p.name} /tmp/w/")
    plan.append(f"mkdir -p /tmp/w && cp {out}/{parts[-1].name} {out}/PARTS.sha256 /tmp/w/ && "
                "bash scripts/gpu_check.sh /tmp/w $OUT")
    (out / "plan.txt").write_text("\n".join(plan) + "\n")
    (out / "prepared.json").write_text(json.dumps({"exports": summary, "parts": len(parts),
                                                   "wheel": not args.no_wheel}, indent=2))
    for s in summary:
        print(f"{s['name']}: levels {', '.join(s['levels'])}; {s['rows']} test rows; "
              f"{s['mib']} MiB")
    total = sum(p.stat().st_size for p in parts) / 2**20
    print(f"{len(parts)} part(s) of at most {args.part_mb} MiB ({total:.0f} MiB) in {out}; "
          f"the device commands are in {out}/plan.txt")


if __name__ == "__main__":
    main()
