import csv
import json
import re

import numpy as np
import pytest
from tokenizers import Tokenizer

from matryoshka.data.text import is_text_source, load_text, reload_text
from matryoshka.data.tokenizer import encode_dataset, tokenizer_info, train_tokenizer
from matryoshka.errors import ConfigError, DataError, MissingArtifactError
from matryoshka.runtime.text import PAD_ID, UNK_ID, encode

ANIMALS = {"cats": ("cat", "kitten"), "dogs": ("dog", "puppy"), "birds": ("bird", "parrot")}
VERBS = ("sleeps", "plays", "eats", "runs", "sits")


def rows(n_per_class: int = 20) -> list[dict]:
    """n_per_class short, distinct sentences per class, some with a comma (CSV quoting)."""
    out = []
    for label, (a, b) in ANIMALS.items():
        for i in range(n_per_class):
            noun = a if i % 2 else b
            out.append({"text": f"The {noun} {VERBS[i % 5]}, number {i}", "label": label})
    return out


def write_csv(path, records, fields=("text", "label")):
    with open(path, "w", newline="", encoding="utf-8") as f:
        w = csv.DictWriter(f, fieldnames=list(fields))
        w.writeheader()
        w.writerows(records)
    return path


def write_jsonl(path, records):
    path.write_text("\n".join(json.dumps(r) for r in records) + "\n\n", encoding="utf-8")
    return path


def write_folder(folder, train, val, test, ext="csv"):
    folder.mkdir()
    writer = write_csv if ext == "csv" else write_jsonl
    for name, recs in (("train", train), ("val", val), ("test", test)):
        writer(folder / f"{name}.{ext}", recs)
    return folder


@pytest.fixture
def csv_file(tmp_path):
    return write_csv(tmp_path / "animals.csv", rows())


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return load_text(write_csv(tmp_path_factory.mktemp("d") / "animals.csv", rows()))


@pytest.fixture(scope="module")
def tok(data):
    return train_tokenizer(data.splits["train"][0], vocab_size=200, max_len=16)


# --- loading ------------------------------------------------------------------------------

def test_csv_split_sizes_labels_and_seed(csv_file):
    data = load_text(csv_file)
    assert {s: len(t) for s, (t, _) in data.splits.items()} == {"train": 48, "val": 6, "test": 6}
    assert data.labels == ["birds", "cats", "dogs"]
    everything = [t for t, _ in data.splits.values()]
    assert sorted(sum(everything, [])) == sorted(r["text"] for r in rows())
    by_text = {r["text"]: r["label"] for r in rows()}
    for texts, y in data.splits.values():
        assert y.dtype == np.int64
        assert [data.labels[i] for i in y] == [by_text[t] for t in texts]
    again, other = load_text(csv_file, seed=0), load_text(csv_file, seed=1)
    assert again.splits["test"][0] == data.splits["test"][0]
    assert other.splits["test"][0] != data.splits["test"][0]
    assert data.source == {"kind": "text", "path": str(csv_file.resolve()),
                           "sha256": data.source["sha256"], "format": "csv",
                           "text_column": "text", "label_column": "label", "seed": 0,
                           "val_fraction": 0.1, "test_fraction": 0.1}
    assert len(data.source["sha256"]) == 64
    assert json.loads(json.dumps(data.source)) == data.source


def test_fractions_and_other_columns(tmp_path):
    recs = [{"body": r["text"], "animal": r["label"]} for r in rows()]
    p = write_csv(tmp_path / "a.csv", recs, fields=("body", "animal"))
    data = load_text(p, text_column="body", label_column="animal", val_fraction=0.25,
                     test_fraction=0.2)
    assert {s: len(t) for s, (t, _) in data.splits.items()} == {"train": 33, "val": 15,
                                                                "test": 12}
    with pytest.raises(ConfigError, match="sum to less than 1"):
        load_text(p, text_column="body", label_column="animal", val_fraction=0.5,
                  test_fraction=0.5)


def test_jsonl_with_integer_labels_and_blank_lines(tmp_path):
    labels = [0, 1, 2, 10]
    recs = [{"text": f"word{i % 7} item {i}", "label": labels[i % 4], "id": i} for i in range(80)]
    data = load_text(write_jsonl(tmp_path / "a.jsonl", recs))
    assert data.labels == ["0", "1", "2", "10"]  # by value, so label k is index k for 0..2
    texts, y = data.splits["train"]
    want = {r["text"]: str(r["label"]) for r in recs}
    assert [data.labels[i] for i in y] == [want[t] for t in texts]
    assert sum(len(t) for t, _ in data.splits.values()) == 80
    assert data.source["format"] == "jsonl"
    ndjson = tmp_path / "a.ndjson"
    ndjson.write_bytes((tmp_path / "a.jsonl").read_bytes())
    assert load_text(ndjson).splits["val"][0] == data.splits["val"][0]


def test_folder_is_used_as_given(tmp_path):
    r = rows()
    train, val, test = r[0:15] + r[20:35] + r[40:55], r[15:18] + r[35:38], r[55:60] + r[18:20]
    folder = write_folder(tmp_path / "d", train, val, test, ext="jsonl")
    assert is_text_source(folder)
    data = load_text(folder)
    assert data.splits["train"][0] == [x["text"] for x in train]
    assert data.splits["test"][0] == [x["text"] for x in test]
    assert [data.labels[i] for i in data.splits["val"][1]] == [x["label"] for x in val]
    assert data.source["format"] == "folder" and data.source["seed"] is None
    assert reload_text(data.source).splits["test"][0] == data.splits["test"][0]


def test_is_text_source(tmp_path, csv_file):
    assert is_text_source(csv_file) and is_text_source(tmp_path / "x.NDJSON")
    assert not is_text_source(tmp_path / "x.npz")
    assert not is_text_source(tmp_path)  # a folder without split files


# --- errors -------------------------------------------------------------------------------

def test_missing_file_and_unknown_extension(tmp_path):
    with pytest.raises(MissingArtifactError, match="data file not found: .*nope.csv"):
        load_text(tmp_path / "nope.csv")
    (tmp_path / "a.tsv").write_text("text\tlabel\n")
    with pytest.raises(DataError, match=r"a.tsv.*'\.tsv'.*\.csv, \.jsonl, \.ndjson"):
        load_text(tmp_path / "a.tsv")


def test_not_utf8_names_byte_offset_and_iconv(tmp_path):
    p = tmp_path / "latin.csv"
    p.write_bytes("text,label\ncaf\u00e9 au lait,drinks\n".encode("latin1"))
    with pytest.raises(DataError, match=r"latin.csv is not UTF-8 \(byte 14, line 2\).*"
                                        r"iconv -f latin1 -t utf-8"):
        load_text(p)


def test_missing_columns_list_what_the_file_has(tmp_path):
    p = write_csv(tmp_path / "a.csv", [{"body": "x", "label": "y"}], fields=("body", "label"))
    with pytest.raises(DataError, match=r"no column 'text' .*'body', 'label'.*--text-column"):
        load_text(p)
    with pytest.raises(DataError, match=r"no column 'tag' .*--label-column"):
        load_text(p, text_column="body", label_column="tag")
    j = write_jsonl(tmp_path / "a.jsonl", rows()[:3] + [{"text": "hi", "lbl": "x"}])
    with pytest.raises(DataError, match=r"no column 'label' \(row 4 \(line 4\) has 'text', "
                                        r"'lbl'\); set --label-column"):
        load_text(j)


@pytest.mark.parametrize("bad, fragment", [
    ({"text": "   ", "label": "cats"}, r"row 3 \(line 4\): the text is empty"),
    ({"text": "a cat", "label": ""}, r"row 3 \(line 4\): the label is missing or empty"),
])
def test_empty_text_or_label_names_the_row(tmp_path, bad, fragment):
    recs = rows()
    recs[2] = bad
    with pytest.raises(DataError, match=fragment):
        load_text(write_csv(tmp_path / "a.csv", recs))


def test_jsonl_line_errors(tmp_path):
    p = tmp_path / "a.jsonl"
    p.write_text('{"text": "a", "label": "x"}\n\n[1, 2]\n')
    with pytest.raises(DataError, match=r"a.jsonl, row 2 \(line 3\): not a JSON object"):
        load_text(p)
    p.write_text('{"text": "a", "label": "x"}\n{"text": oops}\n')
    with pytest.raises(DataError, match=r"row 2 \(line 2\): not valid JSON"):
        load_text(p)
    p.write_text('{"text": "a", "label": null}\n')
    with pytest.raises(DataError, match="row 1 .*label is missing"):
        load_text(p)


def test_label_unseen_in_train_is_named_with_its_split(tmp_path):
    r = rows()
    val = r[15:18] + [{"text": "a fish swims", "label": "fish"}]
    folder = write_folder(tmp_path / "d", r[:15] + r[20:35], val, r[40:45])
    with pytest.raises(DataError, match=r"val.csv: label 'fish' appears in the val split but "
                                        "not in train"):
        load_text(folder)


def test_one_class_empty_split_and_incomplete_folder(tmp_path):
    one = [{"text": f"cat {i}", "label": "cats"} for i in range(30)]
    with pytest.raises(DataError, match=r"train split has 1 class\(es\) \(cats\).*at least 2"):
        load_text(write_csv(tmp_path / "one.csv", one))
    with pytest.raises(DataError, match=r"the test split is empty \(4 rows"):
        load_text(write_csv(tmp_path / "few.csv", rows()[:4]))
    (tmp_path / "d").mkdir()
    write_csv(tmp_path / "d" / "train.csv", rows())
    with pytest.raises(DataError, match="lacks the val, test split file"):
        load_text(tmp_path / "d")


# --- reload -------------------------------------------------------------------------------

def test_reload_gives_the_same_splits(csv_file):
    data = load_text(csv_file, seed=7, val_fraction=0.2)
    again = reload_text(json.loads(json.dumps(data.source)))
    assert again.labels == data.labels and again.source == data.source
    for s in ("train", "val", "test"):
        assert again.splits[s][0] == data.splits[s][0]
        assert np.array_equal(again.splits[s][1], data.splits[s][1])


def test_reload_moved_or_changed(csv_file):
    data = load_text(csv_file)
    write_csv(csv_file, rows()[:-1])
    now = load_text(csv_file).source["sha256"]
    was = data.source["sha256"][:12]
    want = rf"changed since training \(sha256 recorded {was}, now {now[:12]}\)"
    with pytest.raises(DataError, match=want):
        reload_text(data.source)
    csv_file.rename(csv_file.with_name("moved.csv"))
    gone = re.escape(str(csv_file))
    with pytest.raises(MissingArtifactError, match=f"{gone} was moved or deleted"):
        reload_text(data.source)


def test_folder_hash_sees_swapped_files(tmp_path):
    r = rows()
    folder = write_folder(tmp_path / "d", r[:15] + r[20:35] + r[40:55], r[15:20] + r[35:40],
                          r[55:60] + r[35:37])
    data = load_text(folder)
    val, test = (folder / "val.csv").read_bytes(), (folder / "test.csv").read_bytes()
    (folder / "val.csv").write_bytes(test)
    (folder / "test.csv").write_bytes(val)
    with pytest.raises(DataError, match="changed since training"):
        reload_text(data.source)


# --- tokenizer ----------------------------------------------------------------------------

def test_special_ids_truncation_and_no_padding_in_tokenizer_json(tok):
    assert (tok.token_to_id("[PAD]"), tok.token_to_id("[UNK]")) == (PAD_ID, UNK_ID) == (0, 1)
    spec = json.loads(tok.to_str())
    assert spec["truncation"]["max_length"] == 16 and spec["padding"] is None
    long = " ".join(["cat"] * 40)
    assert len(tok.encode(long).ids) == 16
    assert tok.encode("\u03b6").ids == [UNK_ID]  # a letter never seen in training


def test_lowercase_and_case_sensitive(data):
    texts = data.splits["train"][0]
    low = train_tokenizer(texts, vocab_size=200)
    assert low.encode("The Cat SLEEPS").ids == low.encode("the cat sleeps").ids
    cased = train_tokenizer(texts, vocab_size=200, lowercase=False)
    assert cased.encode("The cat").ids != cased.encode("the cat").ids
    assert tokenizer_info(cased)["lowercase"] is False


def test_bpe_model(data):
    bpe = train_tokenizer(data.splits["train"][0], vocab_size=120, model="bpe", max_len=8)
    assert (bpe.token_to_id("[PAD]"), bpe.token_to_id("[UNK]")) == (0, 1)
    ids = bpe.encode("the kitten plays").ids
    assert 0 < len(ids) <= 8 and PAD_ID not in ids
    assert bpe.id_to_token(ids[0]) == "the" and 1 not in ids  # no [UNK] for known words
    info = tokenizer_info(bpe)
    assert info["model"] == "BPE" and info["max_len"] == 8 and info["vocab_size"] <= 120


def test_tokenizer_info_reads_the_tokenizer(tok):
    info = tokenizer_info(Tokenizer.from_str(tok.to_str()))
    assert info == {
        "model": "BPE", "vocab_size": tok.get_vocab_size(), "lowercase": True,
        "normalizer": "BertNormalizer(clean_text=True, handle_chinese_chars=True, "
                      "strip_accents=True, lowercase=True)",
        "pre_tokenizer": "BertPreTokenizer", "pad_id": 0, "unk_id": 1, "max_len": 16,
        "truncation": "right: ids beyond max_len are dropped"}
    assert json.loads(json.dumps(info)) == info


@pytest.mark.parametrize("kwargs, fragment", [
    ({"vocab_size": 2}, "vocab_size must be at least 3"),
    ({"max_len": 0}, "max_len must be at least 1"),
    ({"model": "unigram"}, "unknown tokenizer model 'unigram'; use one of wordpiece, bpe"),
])
def test_tokenizer_config_errors(kwargs, fragment):
    with pytest.raises(ConfigError, match=fragment):
        train_tokenizer(["a cat"], **kwargs)


def test_encode_dataset_widths_and_round_trip(tok, data):
    encoded = encode_dataset(tok, data)
    widths = {s: ids.shape[1] for s, (ids, _) in encoded.items()}
    assert len(set(widths.values())) == 1 and widths["train"] <= 16
    longest = max(len(r) for s in encoded for r in encode(tok, data.splits[s][0]))
    assert widths["train"] == longest
    loaded = Tokenizer.from_str(tok.to_str())
    for s, (ids, y) in encoded.items():
        assert ids.dtype == np.int64 and np.array_equal(y, data.splits[s][1])
        rows_ = encode(loaded, data.splits[s][0])
        for row, padded in zip(rows_, ids):
            assert np.array_equal(padded[:len(row)], row)
            assert (padded[len(row):] == PAD_ID).all() and (row != PAD_ID).all()


def test_encode_dataset_truncates_to_max_len(data):
    short = train_tokenizer(data.splits["train"][0], vocab_size=200, max_len=3)
    encoded = encode_dataset(short, data)
    assert {ids.shape for ids, _ in encoded.values()} == {(48, 3), (6, 3)}


def test_bpe_training_is_the_same_in_every_process(tmp_path):
    """The hash maps inside tokenizers are seeded per process, so determinism is checked
    across processes (WordPiece is not deterministic there: tokenizers#1794)."""
    import subprocess
    import sys

    rows = [f"{w} {v} number {i} of the {w}s" for i, (w, v) in
            enumerate(zip(["cat", "dog", "bird", "kitten", "puppy"] * 40,
                          ["meows", "barks", "tweets", "plays", "fetches"] * 40))]
    (tmp_path / "texts.txt").write_text("\n".join(rows))
    code = ("import sys; from matryoshka.data.tokenizer import train_tokenizer; "
            "texts = open(sys.argv[1]).read().splitlines(); "
            "print(train_tokenizer(texts, vocab_size=90, model='bpe').to_str())")
    outs = {subprocess.run([sys.executable, "-c", code, str(tmp_path / "texts.txt")],
                           capture_output=True, text=True, check=True).stdout for _ in range(3)}
    assert len(outs) == 1
