"""Importing every supported Hugging Face family (model/families.py, model/pretrained.py), checked
against `transformers` itself on tiny random folders that it saves (tests/model/hf_folders.py):
a base model's pooled output and a fine-tuned classifier's logits equal transformers' forward
within 1e-5 on a padded batch of texts of different lengths (RoBERTa's pad id 1 included); the
channel permutation leaves them unchanged; pytorch_model.bin imports as model.safetensors does;
`matryoshka import` then `mexport` gives ONNX logits within 1e-4 of transformers'; a classifier
nested by width exports every level within the export's own check, and its narrowest level's
graph equals a forward of the prefixes cut by hand (numpy's BERT; transformers' ModernBERT at
that width); bad folders are one line."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from matryoshka.cli import cli, mexport
from matryoshka.errors import ConfigError, DataError
from matryoshka.model.channels import permute_channels
from matryoshka.model.checkpoint import load_checkpoint
from matryoshka.model.pretrained import import_encoder
from matryoshka.runtime import Runtime
from tests.model.bert_reference import as_bert, bert_cfg, bert_pooled, head_logits
from tests.model.tiny_bert import texts

transformers = pytest.importorskip(
    "transformers", reason="transformers (the [dev] extra) is the reference of every import")

from tests.model.hf_folders import (  # noqa: E402  (after the importorskip that needs it)
    PAD_ID,
    encode_texts,
    label_names,
    make_hf_folder,
    modernbert_level_logits,
    reference_outputs,
)

SUPPORTED = ("bert", "distilbert", "roberta", "xlm-roberta", "camembert", "electra",
             "modernbert")


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    """family -> (base folder, classifier folder), made once."""
    root = tmp_path_factory.mktemp("hf")
    return {f: (make_hf_folder(root / f"{f}-base", f, seed=1),
                make_hf_folder(root / f"{f}-cls", f, classifier=True, seed=2))
            for f in SUPPORTED}


def _batch(folder):
    ids = encode_texts(folder, texts(16, seed=3), max_len=48)
    assert (ids == PAD_ID[json.loads((folder / "config.json").read_text())["model_type"]]
            ).any(), "the batch must hold padding"
    return ids


@pytest.mark.parametrize("family", SUPPORTED)
def test_a_base_model_pools_as_transformers_does(folders, family):
    folder = folders[family][0]
    model, tok, classes = import_encoder(folder, n_classes=2, max_len=48)
    assert classes is None and model.config.pad_id == PAD_ID[family]
    ids = _batch(folder)
    ref = reference_outputs(folder, ids, PAD_ID[family])["last_hidden_state"]
    mask = (ids != PAD_ID[family])[..., None]
    ref_mean = (ref * mask).sum(1) / mask.sum(1)  # no 1_Pooling file: mean pooling
    with torch.no_grad():
        ours = model.encode(torch.from_numpy(ids))[0].numpy()
    assert np.abs(ours - ref_mean).max() <= 1e-5
    # the model's own tokenizer gives the ids the reference was fed
    assert [e.ids for e in tok.encode_batch(texts(4, seed=3))] == [
        r[r != PAD_ID[family]].tolist() for r in ids[:4]]


@pytest.mark.parametrize("family", SUPPORTED)
def test_a_classifier_gives_transformers_logits_and_its_class_names(folders, family):
    folder = folders[family][1]
    model, _, classes = import_encoder(folder, max_len=48)
    assert classes == label_names(3) and model.config.head_act != "none"
    ids = _batch(folder)
    ref = reference_outputs(folder, ids, PAD_ID[family])["logits"]
    with torch.no_grad():
        ours = model(torch.from_numpy(ids)).numpy()
        alone = model(torch.from_numpy(ids[:1, :int((ids[0] != PAD_ID[family]).sum())])).numpy()
    assert np.abs(ours - ref).max() <= 1e-5
    assert np.abs(alone[0] - ref[0]).max() <= 1e-5  # padding changes nothing
    perm = np.random.default_rng(0).permutation(model.config.d_model)
    with torch.no_grad():
        permuted = permute_channels(model, perm)(torch.from_numpy(ids)).numpy()
    assert np.abs(permuted - ref).max() <= 1e-5


def test_pytorch_model_bin_imports_as_safetensors_does(tmp_path):
    a = make_hf_folder(tmp_path / "st", "bert", classifier=True, seed=4)
    b = make_hf_folder(tmp_path / "bin", "bert", classifier=True, seed=4, weights="bin")
    assert not (b / "model.safetensors").exists() and (b / "pytorch_model.bin").is_file()
    ma, _, _ = import_encoder(a)
    mb, _, _ = import_encoder(b)
    for (name, pa), (_, pb) in zip(ma.state_dict().items(), mb.state_dict().items()):
        assert torch.equal(pa, pb), name


def _write_csv(path, names, n=700):
    words = texts(n, seed=5)
    path.write_text("text,label\n" + "".join(f"{t},{names[i % len(names)]}\n"
                                             for i, t in enumerate(words)))
    return path


@pytest.mark.parametrize("family", SUPPORTED)
def test_import_then_mexport_gives_transformers_logits(folders, tmp_path, family):
    """The acceptance path: a user's classifier exported as it is, at full width."""
    folder = folders[family][1]
    # the data names the classes in another case and order: matched to id2label
    data = _write_csv(tmp_path / "data.csv", ["NEUTRAL", "Negative", "positive"])
    run = CliRunner().invoke
    r = run(cli, ["import", str(folder), "--out", str(tmp_path / "ck"), "--data", str(data),
                  "--max-len", "48"])
    assert r.exit_code == 0, r.output
    assert "test accuracy of the imported classifier" in r.output
    metrics = json.loads((tmp_path / "ck" / "metrics.json").read_text())
    assert metrics["labels"] == ["Negative", "positive", "NEUTRAL"]  # id2label's order
    assert metrics["imported_from"]["model_type"] == family
    r = run(mexport, ["--checkpoint", str(tmp_path / "ck"), "--out", str(tmp_path / "exp"),
                      "--no-progress"])
    assert r.exit_code == 0, r.output
    rt = Runtime.open(tmp_path / "exp", device="cpu")
    assert rt.input_spec["pad_id"] == PAD_ID[family]
    # the export read the data in the classifier's class order, as the import recorded it
    entry = rt.manifest["levels"][-1]["accuracy"]
    assert entry["onnx"] == entry["metrics_json"] == metrics["test_accuracy"]["32"]
    assert rt.manifest["data"]["class_order"] == metrics["labels"]
    sample = texts(12, seed=6)
    ids = encode_texts(folder, sample, max_len=48)
    ref = reference_outputs(folder, ids, PAD_ID[family])["logits"]
    level = rt.levels[-1]
    assert np.abs(rt.run_level(level, ids) - ref).max() <= 1e-4
    out = rt.predict(sample, level=level)  # strings: tokenized and padded with the pad id
    assert out.labels.tolist() == ref.argmax(-1).tolist()
    probs = np.exp(ref - ref.max(-1, keepdims=True))
    assert np.abs(out.probs - probs / probs.sum(-1, keepdims=True)).max() <= 1e-4


@pytest.mark.parametrize("family", ["roberta", "electra", "modernbert"])
def test_a_classifier_nested_by_width_exports_every_level(folders, tmp_path, family):
    """RoBERTa (pad id 1), imported first, and ELECTRA (its embedding projection nested by
    its output rows), its folder given to --init-from as it is, are nested and trained one
    epoch with the classifier as the teacher; mexport checks each level's graph against
    torch, padding included, and its INT8 graphs against exact arithmetic; calibrate and
    predict take the INT8 cascade."""
    folder = folders[family][1]
    data = _write_csv(tmp_path / "data.csv", [n.upper() for n in label_names(3)])
    run = CliRunner().invoke
    start = folder
    if family == "roberta":
        start = tmp_path / "imp"
        r = run(cli, ["import", str(folder), "--out", str(start), "--data", str(data),
                      "--max-len", "48"])
        assert r.exit_code == 0, r.output
    r = run(cli, ["train", "--data", str(data), "--init-from", str(start), "--levels", "16,32",
                  "--max-len", "48", "--epochs", "1", "--out", str(tmp_path / "ck"),
                  "--no-progress"])
    assert r.exit_code == 0, r.output
    metrics = json.loads((tmp_path / "ck" / "metrics.json").read_text())
    assert metrics["labels"] == [n.upper() for n in label_names(3)]  # id2label's order
    assert metrics["train_config"]["teacher"] == str(start)
    # INT8 too: each graph checked against exact integer arithmetic by the export itself
    quantize = {"roberta": "dynamic-pc", "electra": "weight8"}.get(family, "dynamic")
    r = run(mexport, ["--checkpoint", str(tmp_path / "ck"), "--out", str(tmp_path / "exp"),
                      "--quantize", quantize, "--no-progress"])
    assert r.exit_code == 0, r.output
    r = run(cli, ["calibrate", str(tmp_path / "exp"), "--variant", "int8", "--epsilon", "0.1",
                  "--no-progress"])
    assert r.exit_code == 0, r.output
    r = run(cli, ["predict", str(tmp_path / "exp"), "--variant", "int8", "--device", "cpu",
                  "--text", "free money prize", "--text", "lunch thursday"])
    assert r.exit_code == 0 and r.output.count("\n") >= 2, r.output
    rt = Runtime.open(tmp_path / "exp", device="cpu")
    assert len(rt.levels) == 2 and rt.input_spec["pad_id"] == PAD_ID[family]
    # the narrow level's graph is the model cut by hand from the prefixes, run in numpy
    model, _ = load_checkpoint(tmp_path / "ck")
    ids = encode_texts(folder, texts(20, seed=8), max_len=48)
    state, dim = model.state_dict(), 16
    if family == "modernbert":  # transformers' own ModernBERT, built at width 16 by hand
        ref = modernbert_level_logits(state, model.config, dim, ids)
    else:
        pooled = bert_pooled(as_bert(state, model.config, dim, model.config.ffn_width(dim)),
                             bert_cfg(model.config, dim), ids, pad_id=PAD_ID[family],
                             pooling="cls")
        ref = head_logits(state, model.config, pooled)
    assert np.abs(rt.run_level(rt.levels[0], ids) - ref).max() <= 1e-4
    sample = texts(6, seed=7)
    both = rt.predict(sample, level=rt.levels[0])
    alone = [rt.predict([t], level=rt.levels[0]) for t in sample]
    assert np.abs(both.probs - np.concatenate([a.probs for a in alone])).max() <= 1e-5


def test_a_base_encoder_is_not_an_init_from(folders, tmp_path):
    data = _write_csv(tmp_path / "data.csv", label_names(3))
    r = CliRunner().invoke(cli, ["train", "--data", str(data), "--init-from",
                                 str(folders["bert"][0]), "--out", str(tmp_path / "ck")])
    assert r.exit_code == 2 and "start from it with --pretrained" in r.output, r.output
    assert not (tmp_path / "ck").exists()


@pytest.mark.parametrize("names", [["negative", "positive", "sarcastic"],  # one unknown
                                   ["negative", "positive"]])  # a head with more labels
def test_class_names_must_match(folders, tmp_path, names):
    data = _write_csv(tmp_path / "data.csv", names)
    r = CliRunner().invoke(cli, ["import", str(folders["bert"][1]), "--out",
                                 str(tmp_path / "ck"), "--data", str(data)])
    assert r.exit_code == 2 and "error:" in r.output and "the names must be the same" in r.output
    assert not (tmp_path / "ck").exists()


def test_label_map_pairs_other_names(folders, tmp_path):
    data = _write_csv(tmp_path / "data.csv", ["2", "0", "1"])
    run = CliRunner().invoke
    r = run(cli, ["import", str(folders["distilbert"][1]), "--out", str(tmp_path / "ck"),
                  "--data", str(data), "--label-map", "0=positive,1=neutral,2=negative"])
    assert r.exit_code == 0, r.output
    metrics = json.loads((tmp_path / "ck" / "metrics.json").read_text())
    assert metrics["labels"] == ["2", "0", "1"]  # negative, positive, neutral: id2label's order
    for bad, fragment in (("0=positive,1=neutral,7=negative", "names '7', which is not a class"),
                          ("0=positive,1=neutral,2=sarcastic", "maps to 'sarcastic'"),
                          ("0positive", "needs DATA=MODEL pairs"),
                          ("0=positive,1=positive", "maps two data classes to one")):
        r = run(cli, ["import", str(folders["distilbert"][1]), "--out", str(tmp_path / "x"),
                      "--data", str(data), "--label-map", bad])
        errors = [ln for ln in r.output.splitlines() if ln.startswith("error:")]
        assert r.exit_code == 2 and len(errors) == 1 and fragment in errors[0], (bad, r.output)
        assert not (tmp_path / "x").exists()
    r = run(cli, ["train", "--data", str(data), "--out", str(tmp_path / "y"), "--label-map",
                  "0=a"])
    assert r.exit_code == 2 and "--label-map pairs the data's classes" in r.output, r.output


@pytest.mark.parametrize("case,fragment", [
    ("unknown", "model_type is 'gpt2'; the families that can be imported are"),
    ("missing-key", "dim must be a positive integer; got None (a DistilBERT config needs it)"),
    ("shapes", "config.json says"),
    ("not-a-state-dict", "is not a state dict"),
    ("bin-code", "cannot be read as weights only"),
    ("base-no-data", "is a base model without a classifier head: give --data"),
    ("head", "lacks the classifier's classifier, which DistilBertForSequenceClassification has"),
])
def test_bad_folders_are_one_error_and_write_nothing(tmp_path, case, fragment):
    family = "distilbert" if case in ("missing-key", "head") else "bert"
    folder = make_hf_folder(tmp_path / "m", family, classifier=case != "base-no-data",
                            weights="bin" if case in ("not-a-state-dict", "bin-code")
                            else "safetensors")
    cfg = json.loads((folder / "config.json").read_text())
    if case == "unknown":
        cfg["model_type"] = "gpt2"
    elif case == "missing-key":
        del cfg["dim"]
    elif case == "shapes":
        cfg["intermediate_size"] = 96
    elif case == "not-a-state-dict":
        torch.save([torch.zeros(2)], folder / "pytorch_model.bin")
    elif case == "bin-code":
        import pickle

        (folder / "pytorch_model.bin").write_bytes(pickle.dumps(ConfigError("x")))
    elif case == "head":
        from safetensors.numpy import load_file, save_file

        w = load_file(str(folder / "model.safetensors"))
        del w["classifier.weight"]
        save_file(w, str(folder / "model.safetensors"))
    (folder / "config.json").write_text(json.dumps(cfg))
    r = CliRunner().invoke(cli, ["import", str(folder), "--out", str(tmp_path / "ck")])
    assert r.exit_code == 2, r.output
    errors = [ln for ln in r.output.splitlines() if ln.startswith("error:")]
    assert len(errors) == 1 and fragment in errors[0], r.output
    assert "Traceback" not in r.output and not (tmp_path / "ck").exists()


def test_match_errors_are_data_errors():
    from matryoshka.data.text import match_classes

    with pytest.raises(DataError, match="the names must be the same"):
        match_classes(["a", "b"], ["a", "c"], "m")
    assert match_classes(["b", "a"], ["B", "A"], "m") == ["b", "a"]


def test_the_user_side_fine_tuning_script_writes_an_importable_classifier(folders, tmp_path):
    """scripts/hf_finetune.py (transformers' own *ForSequenceClassification) saves a folder
    that imports as a classifier of the data's classes, with transformers' logits."""
    import importlib.util

    spec = importlib.util.spec_from_file_location(
        "hf_finetune", Path(__file__).resolve().parents[2] / "scripts" / "hf_finetune.py")
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    data = _write_csv(tmp_path / "data.csv", ["ham", "spam"])
    out = tmp_path / "classifier"
    assert script.main([str(folders["bert"][0]), str(data), "--out", str(out), "--epochs", "1",
                        "--max-len", "48"]) == 0
    model, _, classes = import_encoder(out, max_len=48)
    assert classes == ["ham", "spam"]
    ids = encode_texts(out, texts(8, seed=4))
    with torch.no_grad():
        ours = model(torch.from_numpy(ids)).numpy()
    assert np.abs(ours - reference_outputs(out, ids, 0)["logits"]).max() <= 1e-5
