"""Execution providers: ask for CUDA or the CPU and prove that is what runs.

docs/design.md, "Conventions": onnxruntime falls back to the CPU silently when the CUDA libraries
are missing, so every session's get_providers() is checked after it is created.
"""

from __future__ import annotations

import logging

import onnxruntime as ort

from matryoshka.errors import ConfigError, MatryoshkaError

log = logging.getLogger(__name__)
CPU, CUDA = "CPUExecutionProvider", "CUDAExecutionProvider"
DEVICES = ("cpu", "cuda", "auto")


class DeviceError(MatryoshkaError):
    """The requested device cannot be used here."""


def requested_providers(device: str) -> list[str]:
    """The provider list to create sessions with, before any session proves it works."""
    if device not in DEVICES:
        raise DeviceError(f"device must be one of {', '.join(DEVICES)}; got {device!r}")
    if device == "cpu":
        return [CPU]
    available = ort.get_available_providers()
    if CUDA in available:
        return [CUDA, CPU]
    if device == "cuda":
        raise DeviceError(
            "device='cuda' needs onnxruntime's CUDAExecutionProvider, which this onnxruntime "
            f"{ort.__version__} does not have (it has: {', '.join(available)}); install "
            "matryoshka[gpu] (onnxruntime-gpu) instead of matryoshka[cpu]")
    return [CPU]


def check_active(session: ort.InferenceSession, device: str, file: str) -> list[str]:
    """The providers the session really uses; raise when CUDA was required but is not active."""
    active = session.get_providers()
    if device == "cuda" and (not active or active[0] != CUDA):
        raise DeviceError(
            f"CUDAExecutionProvider is installed but did not become active for {file} "
            f"(active: {', '.join(active)}); the CUDA or cuDNN libraries that onnxruntime-gpu "
            "needs are probably missing or of the wrong version")
    return active


def check_threads(threads: int | None) -> None:
    """None (onnxruntime's default) or a positive integer; a ConfigError otherwise."""
    if threads is not None and (isinstance(threads, bool) or not isinstance(threads, int)
                                or threads < 1):
        raise ConfigError(f"threads must be a positive integer (or None for onnxruntime's "
                          f"default); got {threads!r}")


FOLD_DEQUANTIZE = "session.disable_quant_qdq"  # the session config entry weight8 graphs need


def folds_dequantize(method: str | None) -> bool:
    """Whether a graph of this quantization method (a manifest's int8 "method") runs best
    with its DequantizeLinear nodes of constants folded at load: weight8 stores int8 weights
    for fp32 compute, and onnxruntime otherwise keeps those nodes (waiting for a QDQ fusion
    that never comes) and loses its fp32 fusions behind them, 1.2-1.9x slower."""
    return bool(method) and method.removesuffix("-shared") == "weight8"


def session_options(threads: int | None, fold_dequantize: bool = False) -> ort.SessionOptions:
    """onnxruntime's options for one session: `threads` intra-op threads (None: its default),
    all graph optimizations, and with fold_dequantize the DequantizeLinear of every constant
    folded at load (see folds_dequantize)."""
    check_threads(threads)
    opts = ort.SessionOptions()
    if fold_dequantize:
        opts.add_session_config_entry(FOLD_DEQUANTIZE, "1")
    if threads is not None:
        opts.intra_op_num_threads = threads
        opts.inter_op_num_threads = 1
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    return opts
