"""How an application embeds the matryoshka runtime: numpy + onnxruntime, no torch.

Run after the main job (README) has made artifacts/demo/export:

    python examples/embed_app.py [EXPORT_DIR]

It opens the export once, then serves "requests" (batches of raw 8x8 digit images) with the
calibrated cascade: easy inputs are answered by the small level, hard ones escalate.
"""

import logging
import sys

from matryoshka.runtime import MatryoshkaError, Runtime


def main(export_dir: str = "artifacts/demo/export") -> int:
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s: %(message)s")
    try:
        # One Runtime per process; it is thread-safe, so share it between request handlers.
        rt = Runtime.open(export_dir, device="auto")
    except MatryoshkaError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"levels {rt.levels} on {rt.providers[rt.levels[-1]][0]}")

    # Stand-in for incoming requests: the demo's test digits, in batches of 32.
    from matryoshka.data import load_dataset  # numpy only

    x, y = load_dataset("demo")["test"]
    correct, used = 0, []
    for start in range(0, len(x), 32):
        batch = x[start:start + 32]  # raw uint8 pixels: preprocessing is inside the graph
        try:
            out = rt.predict(batch)  # the calibrated cascade, or the largest level
        except MatryoshkaError as e:  # a malformed request: reject it, keep serving
            print(f"rejected request: {e}", file=sys.stderr)
            continue
        correct += int((out.labels == y[start:start + 32]).sum())
        used.extend(out.levels.tolist())
    print(f"accuracy {correct / len(x):.4f}; rows answered per level: "
          + ", ".join(f"{name}: {used.count(name)}" for name in rt.levels if name in used))

    # A fixed level, e.g. the largest one that fits this device's budget:
    print(f"level {rt.levels[0]} on the first 5 digits:",
          rt.predict(x[:5], level=rt.levels[0]).labels)
    return 0


if __name__ == "__main__":
    sys.exit(main(*sys.argv[1:]))
