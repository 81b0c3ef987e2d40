"""Logging helpers shared by the exporter and calibration (standard library only)."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator


@contextlib.contextmanager
def quiet_root_logger() -> Iterator[None]:
    """Silence the root logger below ERROR: onnxruntime's quantization tools log advice there
    for every graph."""
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)
    try:
        yield
    finally:
        root.setLevel(level)
