"""The CUDA check (docs/gpu.md): prove that CUDAExecutionProvider runs every level and the
cascade graph of each prepared export, compare every level with the CPU provider on every
carried test row, check the refusal paths, and bench on CUDA; write gpu.md and gpu.json.

    python scripts/gpu_check.py ART_DIR --out OUT_DIR [--device cuda|cpu]

--device cpu runs every step with the CPU provider in place of CUDA: it proves the script
itself here, before a lent machine's minutes are spent on it (tests/test_gpu_scripts.py).

ART_DIR holds one folder per export, as scripts/gpu_prepare.py writes them (the export's
files and data.npz). Exits 1 with one `error:` line where CUDA cannot run at all.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

CUDA, CPU = "CUDAExecutionProvider", "CPUExecutionProvider"
ATOL = 1e-3  # fp32 logits, CUDA against CPU: different kernels (and TF32 where it is on)


def fail(message: str) -> None:
    print(f"error: {message}", file=sys.stderr)
    raise SystemExit(1)


def cuda_ready() -> str:
    """Load the CUDA and cuDNN libraries of the nvidia pip packages; the onnxruntime version,
    or exit 1 with the reason CUDA cannot run."""
    try:
        import onnxruntime as ort
    except ImportError as e:
        fail(f"onnxruntime cannot be imported ({e})")
    if CUDA not in ort.get_available_providers():
        fail(f"CUDA cannot run here: onnxruntime {ort.__version__} has no {CUDA} (it has: "
             f"{', '.join(ort.get_available_providers())}); run this on a lent GPU machine "
             "with the onnxruntime-gpu wheel that scripts/gpu_prepare.py fetches")
    if hasattr(ort, "preload_dlls"):
        ort.preload_dlls()
    return ort.__version__


def median_ms(fn, n: int = 20) -> float:
    fn()  # warm-up: the first CUDA run allocates and tunes
    times = []
    for _ in range(n):
        t0 = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t0) * 1e3)
    return float(np.median(times))


def check_export(folder: Path, device: str) -> dict:
    import onnxruntime as ort

    from matryoshka.runtime import Runtime

    want = CUDA if device == "cuda" else CPU

    data = np.load(folder / "data.npz")
    x, y = data["x_test"], data["y_test"]
    cpu = Runtime.open(folder, device="cpu", engine="levels")
    gpu = Runtime.open(folder, device=device, engine="levels")
    rows = []
    for level in gpu.levels:
        providers = gpu.providers[level]
        z_gpu, z_cpu = gpu.run_level_in_chunks(level, x), cpu.run_level_in_chunks(level, x)
        plain = ort.InferenceSession(gpu.graph_bytes(level), providers=gpu._providers)
        z_plain = np.concatenate([plain.run(None, {gpu.input_spec["name"]: x[i:i + 64]})[0]
                                  for i in range(0, len(x), 64)])
        rows.append({
            "level": level, "providers": providers, "cuda_active": providers[0] == want,
            "max_abs_vs_cpu": float(np.abs(z_gpu - z_cpu).max()),
            "argmax_equal": int((z_gpu.argmax(1) == z_cpu.argmax(1)).sum()), "rows": len(x),
            "iobinding_equals_run": bool(np.array_equal(z_gpu, z_plain)),
            "accuracy_cuda": float((z_gpu.argmax(1) == y).mean()),
            "batch32_ms_cuda": median_ms(lambda lv=level: gpu.run_level(lv, x[:32])),
            "batch32_ms_cpu": median_ms(lambda lv=level: cpu.run_level(lv, x[:32]), 5),
        })
    out = {"levels": rows, "auto_picks": Runtime.open(folder, device="auto").active_providers()}
    if gpu.manifest.get("cascade"):
        g_gpu = Runtime.open(folder, device=device, engine="graph")
        g_cpu = Runtime.open(folder, device="cpu", engine="graph")
        a, b = g_gpu.predict(x), g_cpu.predict(x)
        out["cascade"] = {
            "providers": g_gpu.active_providers(), "cuda_active": g_gpu.active_providers()[0]
            == want, "labels_equal": int((a.labels == b.labels).sum()),
            "levels_equal": int((a.levels == b.levels).sum()), "rows": len(x),
            "batch32_ms_cuda": median_ms(lambda: g_gpu.predict(x[:32])),
            "batch32_ms_cpu": median_ms(lambda: g_cpu.predict(x[:32]), 5)}
    out["refusal"] = refusal(folder)
    out["bench"] = bench(folder, device)
    return out


def refusal(folder: Path) -> dict:
    """With the CUDA libraries unloadable (no preload, an empty LD_LIBRARY_PATH), cuda must
    raise the clear error and auto must fall back to the CPU."""
    code = ("import sys, logging\n"
            "logging.basicConfig()\n"
            "from matryoshka.runtime import Runtime\n"
            "try:\n"
            "    Runtime.open(sys.argv[1], device='cuda', preload=True)\n"
            "    print('CUDA-OPENED')\n"
            "except Exception as e:\n"
            "    print('REFUSED', type(e).__name__, e)\n"
            "print('AUTO', Runtime.open(sys.argv[1], device='auto').active_providers())\n")
    env = {**os.environ, "LD_LIBRARY_PATH": ""}
    r = subprocess.run([sys.executable, "-c", code, str(folder)], capture_output=True,
                       text=True, env=env, timeout=300)
    return {"stdout": r.stdout.strip()[-600:], "stderr_tail": r.stderr.strip()[-600:]}


def bench(folder: Path, device: str) -> dict:
    cmd = [sys.executable, "-m", "matryoshka", "bench", str(folder), "--device", device,
           "--batch", "1,32,256", "--data", str(folder / "data.npz"), "--iters", "30",
           "--warmup", "5", "--no-progress"]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=420)
    md = folder / "bench.md"
    return {"rc": r.returncode, "stderr_tail": r.stderr.strip()[-600:],
            "table": md.read_text() if md.is_file() else ""}


def markdown(report: dict) -> str:
    lines = [f"# CUDA check: {report['gpu']}", "",
             f"onnxruntime {report['onnxruntime']}; tolerance for logits against the CPU "
             f"provider: {ATOL} (absolute)", ""]
    for name, r in report["exports"].items():
        lines += [f"## {name}", "",
                  "| level | provider | max \\|CUDA - CPU\\| | argmax equal | io-binding = run "
                  "| batch 32 CUDA ms | batch 32 CPU ms |",
                  "|---|---|---:|---:|---|---:|---:|"]
        for lv in r["levels"]:
            lines.append(f"| {lv['level']} | {lv['providers'][0]} | {lv['max_abs_vs_cpu']:.2e} | "
                         f"{lv['argmax_equal']}/{lv['rows']} | {lv['iobinding_equals_run']} | "
                         f"{lv['batch32_ms_cuda']:.3f} | {lv['batch32_ms_cpu']:.3f} |")
        c = r.get("cascade")
        if c:
            lines += ["", f"cascade.onnx on {c['providers'][0]}: labels equal to the CPU graph "
                      f"on {c['labels_equal']}/{c['rows']} rows, levels on "
                      f"{c['levels_equal']}; batch 32 {c['batch32_ms_cuda']:.3f} ms "
                      f"(CPU {c['batch32_ms_cpu']:.3f} ms)"]
        lines += ["", f"device='auto' picks: {r['auto_picks']}", "",
                  f"refusal without the CUDA libraries: `{r['refusal']['stdout']}`", "",
                  r["bench"]["table"] or f"bench failed: {r['bench']['stderr_tail']}", ""]
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("art")
    ap.add_argument("--out", required=True)
    ap.add_argument("--device", choices=["cuda", "cpu"], default="cuda")
    args = ap.parse_args()
    art = Path(args.art)
    exports = sorted(p for p in art.iterdir() if (p / "manifest.json").is_file()) \
        if art.is_dir() else []
    if not exports:
        print(f"error: {art} holds no prepared export (run scripts/gpu_prepare.py)",
              file=sys.stderr)
        raise SystemExit(2)
    if args.device == "cuda":
        version = cuda_ready()
        gpu = subprocess.run(["nvidia-smi", "--query-gpu=name", "--format=csv,noheader"],
                             capture_output=True, text=True).stdout.strip() or "unknown GPU"
    else:
        import onnxruntime as ort

        version, gpu = ort.__version__, "none: the CPU provider stands in (--device cpu)"
    report = {"gpu": gpu, "onnxruntime": version, "atol": ATOL, "exports": {}}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    for folder in exports:
        print(f"== {folder.name}", flush=True)
        report["exports"][folder.name] = check_export(folder, args.device)
        (out / "gpu.json").write_text(json.dumps(report, indent=2))  # what is done so far
    (out / "gpu.md").write_text(markdown(report))
    bad = [f"{n}/{lv['level']}" for n, r in report["exports"].items() for lv in r["levels"]
           if not lv["cuda_active"] or lv["max_abs_vs_cpu"] > ATOL]
    print(markdown(report))
    if bad:
        print(f"error: CUDA did not run, or missed the CPU by more than {ATOL}, at: "
              f"{', '.join(bad)}", file=sys.stderr)
        raise SystemExit(1)


if __name__ == "__main__":
    main()
