"""How an application classifies raw text with a text export: numpy + onnxruntime + tokenizers
(`pip install matryoshka[cpu,text]`), no torch.

Run after the main job (README) has made artifacts/minilm-demo/export:

    printf 'WIN a FREE cruise!!!\\nRe: razor - the patch works, thanks\\n' | \\
        python examples/classify_text.py [EXPORT_DIR]

Each line of standard input is one text; the export's own tokenizer.json turns it into the ids
the model was trained on, and the calibrated cascade answers it.
"""

import sys

from matryoshka.runtime import MatryoshkaError, Runtime


def main(export_dir: str = "artifacts/minilm-demo/export") -> int:
    texts = [line.strip() for line in sys.stdin if line.strip()]
    try:
        rt = Runtime.open(export_dir, device="cpu")
        out = rt.predict(texts)
    except MatryoshkaError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    for text, label, level, conf in zip(texts, out.labels, out.levels, out.confidence):
        print(f"{rt.class_names[label]:>6}  level {level:>4}  {conf:.3f}  {text[:60]}")
    return 0


if __name__ == "__main__":
    sys.exit(main(*sys.argv[1:2]))
