"""The INT8-relevant features of this CPU: which integer kernels onnxruntime runs here, and
whether its U8S8 products can saturate. docs/design.md, "Escalation and calibration".

onnxruntime's x86 U8S8 kernels without VNNI (SSE4.1, AVX2, AVX-512BW) multiply u8 activations
by s8 weights with `vpmaddubsw`, which adds each two neighbouring products into a saturating
int16: 255 * (|w_k| + |w_k+1|) can exceed 32,767, and the answer then depends on the CPU.
VNNI (`vpdpbusd`), AMX and ARM's kernels accumulate in int32 and are exact. The features come
from numpy's own CPUID probe (what this process really runs on, an emulator's CPU included),
and AMX and AVX-VNNI, which numpy does not name, from /proc/cpuinfo where it describes the same
CPU. Standard library and numpy only.
"""

from __future__ import annotations

import platform
from functools import lru_cache
from pathlib import Path

# numpy's name -> ours, for the features that decide onnxruntime's integer kernels
_NUMPY = {"AVX2": "avx2", "AVX512F": "avx512f", "AVX512BW": "avx512bw",
          "AVX512VNNI": "avx512_vnni", "ASIMD": "neon", "ASIMDDP": "dotprod"}
_CPUINFO = ("avx_vnni", "amx_int8", "amx_tile")  # flags numpy does not probe


def _numpy_features() -> dict[str, bool]:
    try:
        from numpy._core._multiarray_umath import __cpu_features__
    except ImportError:  # numpy 1.x
        from numpy.core._multiarray_umath import __cpu_features__
    return dict(__cpu_features__)


def _cpuinfo_flags() -> set[str]:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith(("flags", "Features")):
                return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


@lru_cache(maxsize=1)
def int8_features() -> dict:
    """What this CPU offers onnxruntime's INT8 kernels, e.g. {'arch': 'x86_64', 'avx2': True,
    'avx512_vnni': False, ..., 'u8s8_exact': False}. `u8s8_exact`: whether a u8 x s8 product
    is accumulated without saturation here (VNNI, AMX, ARM, or no x86 SIMD at all)."""
    found = _numpy_features()
    out: dict = {"arch": platform.machine().lower()}
    out.update({ours: bool(found.get(theirs)) for theirs, ours in _NUMPY.items()})
    flags = _cpuinfo_flags()
    # /proc/cpuinfo is the host's even under an emulator (qemu-user): trust its extra flags
    # only where it agrees with the CPUID numpy saw
    same_cpu = ("avx512f" in flags) == out["avx512f"] and ("avx2" in flags) == out["avx2"]
    out.update({flag: same_cpu and flag in flags for flag in _CPUINFO})
    x86 = out["arch"] in ("x86_64", "amd64", "i386", "i686")
    exact = out["avx512_vnni"] or out["avx_vnni"] or out["amx_int8"]
    out["u8s8_exact"] = bool(not x86 or exact or not (out["avx2"] or found.get("SSE41")))
    return out


def describe(features: dict | None = None) -> str:
    """The features in one line, e.g. 'x86_64: AVX2, no VNNI (U8S8 pair sums saturate)'."""
    f = int8_features() if features is None else features
    if f["arch"] in ("aarch64", "arm64"):
        return f"{f['arch']}: NEON" + (", dotprod" if f["dotprod"] else ", no dotprod")
    names = [n for key, n in (("avx2", "AVX2"), ("avx512f", "AVX-512"),
                              ("avx512_vnni", "AVX-512 VNNI"), ("avx_vnni", "AVX-VNNI"),
                              ("amx_int8", "AMX")) if f.get(key)]
    vnni = f.get("avx512_vnni") or f.get("avx_vnni") or f.get("amx_int8")
    tail = "" if vnni else ", no VNNI"
    exact = "U8S8 exact" if f["u8s8_exact"] else "U8S8 pair sums saturate"
    return f"{f['arch']}: {', '.join(names) or 'no AVX2'}{tail} ({exact})"
