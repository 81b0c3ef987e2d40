"""What a level costs in memory, measured in a fresh process: the resident set size after its
onnxruntime session is built and after one run at the largest batch, each minus the process's
RSS before loading (numpy and onnxruntime already imported, the input already in memory).

In the bench's own process the figure is meaningless: the allocator reuses what earlier
levels freed, so a later level can read 0 or even less. A child process per level starts
clean. Linux (/proc/self/status); elsewhere the figures are None. numpy and onnxruntime only.
"""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

from matryoshka.errors import MatryoshkaError

# The child: reads the graph file, checks its sha256 (the bytes measured are the bytes the
# manifest names), builds the session from those bytes with the bench's own session options,
# drops them, runs once.
CHILD = r"""
import hashlib, json, sys
import numpy as np
import onnxruntime as ort
from matryoshka.runtime.providers import session_options

def rss():
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024.0
    except OSError:
        return None

graph, x_path, sha, providers, threads, fold = sys.argv[1:7]
x = np.load(x_path)
before = rss()
data = open(graph, "rb").read()
if hashlib.sha256(data).hexdigest() != sha:
    sys.exit("the graph file changed while it was measured")
opts = session_options(None if threads == "none" else int(threads), fold == "1")  # as the bench's
opts.log_severity_level = 3
session = ort.InferenceSession(data, opts, providers=providers.split(","))
del data
built = rss()
session.run(None, {session.get_inputs()[0].name: x})
ran = rss()
out = {"session_mb": None if before is None else built - before,
       "run_mb": None if before is None else ran - before}
print(json.dumps(out))
"""


def level_memory(graph: bytes, x: np.ndarray, providers: list[str],
                 threads: int | None = None, timeout: float = 600,
                 fold_dequantize: bool = False) -> dict:
    """{"session_mb", "run_mb"}: RSS growth of a fresh process that builds a session from
    `graph` (with providers.session_options(threads, fold_dequantize)) and runs it once on
    `x` (None where RSS cannot be read)."""
    with tempfile.TemporaryDirectory(prefix="matryoshka-mem-") as tmp:
        path = Path(tmp) / "graph.onnx"
        path.write_bytes(graph)
        np.save(Path(tmp) / "x.npy", x)
        args = [sys.executable, "-c", CHILD, str(path), str(Path(tmp) / "x.npy"),
                hashlib.sha256(graph).hexdigest(), ",".join(providers),
                "none" if threads is None else str(threads), "1" if fold_dequantize else "0"]
        try:
            r = subprocess.run(args, capture_output=True, text=True, timeout=timeout)
        except subprocess.TimeoutExpired:
            raise MatryoshkaError(f"measuring a level's memory took over {timeout:.0f} s"
                                  ) from None
    if r.returncode:
        last = (r.stderr.strip().splitlines() or ["no output"])[-1]
        raise MatryoshkaError(f"measuring a level's memory in a child process failed: {last}")
    return json.loads(r.stdout.strip().splitlines()[-1])


__all__ = ["level_memory"]
