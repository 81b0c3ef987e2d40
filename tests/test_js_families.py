"""Every tokenizer kind an imported family ships (WordPiece, byte-level BPE, Unigram) gives the
same ids in Node.js and headless Chromium (@huggingface/tokenizers) as in Python (tokenizers),
on 200+ strings (accents, CJK, emoji, URLs, long words, text that normalizes to nothing), and
cascade.onnx, padded with the model's own pad id (1 for RoBERTa and XLM-R, one near the end
of the vocabulary for ModernBERT, whose graph has rotary positions and local attention), gives
the Python runtime's labels. The exports are tiny random classifiers saved by transformers
(tests/model/hf_folders.py), imported and exported at full width. Needs Node.js, Chromium and
the examples' node_modules (scripts/setup_js.sh); each test that lacks one skips and says
which."""

import json

import numpy as np
import pytest
from click.testing import CliRunner

from matryoshka.cli import cli, mexport
from matryoshka.runtime import Runtime
from matryoshka.runtime.text import encode
from tests.model.tiny_bert import texts
from tests.test_js_examples import EDGE_TEXTS, _runner, js_parity

pytest.importorskip("transformers", reason="transformers (the [dev] extra) saves the folders")

from tests.model.hf_folders import (  # noqa: E402
    PAD_ID,
    label_names,
    make_hf_folder,
    training_texts,
)

URLS = ["see https://example.com/a/b?c=1&d=2#frag now", "mail me: first.last+tag@example.org",
        "www.example.co.uk/path_to/page.html", "ftp://files.example.net/x.tar.gz"]
LONG = ["supercalifragilisticexpialidocious antidisestablishmentarianism",
        "pneumonoultramicroscopicsilicovolcanoconiosis " * 3, "a" * 300, "x-" * 80]
WORLD = ["Привет, как дела?", "Γειά σου Κόσμε", "مرحبا بالعالم", "שלום עולם", "नमस्ते दुनिया",
         "こんにちは世界、元気ですか", "안녕하세요 세계", "你好，世界！今天天气很好。", "ไม่เป็นไร",
         "Ça va? Très bien, merci!", "naïve café résumé", "Zürich Straße Größe", "São Paulo ação",
         "🙂🚀❤️👍", "👩‍👩‍👧‍👦 family", "🇫🇷🇯🇵 flags", "x² + y² = z²", "½ ¼ ¾ ℃ ™ ©"]
NOTHING = ["\u200b", "\u0301", "\u200b\u200c\u200d", "\ufeffword"]  # normalize to (almost) nothing


def strings() -> list[str]:
    """At least 200 test strings."""
    out = (training_texts(150, seed=11) + EDGE_TEXTS + URLS + LONG + WORLD + NOTHING
           + [t.upper() for t in WORLD[:10]] + [" ".join(WORLD[:4])])
    assert len(out) >= 200
    return out


@pytest.fixture(scope="module", params=["bert", "roberta", "xlm-roberta", "modernbert"])
def family_export(request, tmp_path_factory):
    """(family, export): the family's tiny classifier imported with a 3-class CSV and
    exported at full width."""
    family = request.param
    d = tmp_path_factory.mktemp(f"js-{family}")
    folder = make_hf_folder(d / "model", family, classifier=True, seed=8)
    names = label_names(3)
    data = d / "data.csv"
    data.write_text("text,label\n" + "".join(
        f"{t.replace(',', ' ')},{names[i % 3]}\n" for i, t in enumerate(texts(700, seed=9))))
    r = CliRunner().invoke(cli, ["import", str(folder), "--out", str(d / "ck"), "--data",
                                 str(data), "--max-len", "40"])
    assert r.exit_code == 0, r.output
    r = CliRunner().invoke(mexport, ["--checkpoint", str(d / "ck"), "--out", str(d / "exp"),
                                     "--no-progress"])
    assert r.exit_code == 0, r.output
    return family, d / "exp"


@pytest.mark.parametrize("runtime", ["node", "chromium"])
def test_ids_and_answers_equal_python_for_every_tokenizer_kind(family_export, runtime,
                                                               tmp_path):
    family, export = family_export
    run = _runner(runtime)
    rt = Runtime.open(export, device="cpu")
    sample = strings()
    out = rt.predict(sample)
    cases = {"texts": sample, "ids": [r.tolist() for r in encode(rt.tokenizer, sample)],
             "expected": {"labels": out.labels.tolist(), "levels": [str(v) for v in out.levels],
                          "confidence": out.confidence.tolist()}}
    assert rt.input_spec["pad_id"] == PAD_ID[family]
    assert max(len(i) for i in cases["ids"]) == 40  # some are truncated, specials kept
    path = tmp_path / "cases.json"
    path.write_text(json.dumps(cases))
    res = js_parity.compare(cases, run(export, path, "fp32"))
    assert res["rows"] == len(sample) and res["ids_differ"] == 0, res
    assert res["equal"] and res["max_confidence_diff"] < 1e-5, res
    assert len(np.unique(out.labels)) >= 2  # the answers are not all one class
