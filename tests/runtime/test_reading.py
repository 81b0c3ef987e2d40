"""Reading a text longer than max_len: the head-tail cut, exactly; the tokenizer that applies
it; the reading recorded in the config and the manifest, and refused when it is bad."""

import json
import shutil

import numpy as np
import pytest
from click.testing import CliRunner

from matryoshka.cli import cli, mexport
from matryoshka.errors import ConfigError
from matryoshka.model import MatryoshkaConfig, preset
from matryoshka.model.checkpoint import load_checkpoint
from matryoshka.runtime import Runtime
from matryoshka.runtime.reading import Reading, head_tail
from matryoshka.runtime.text import HeadTail, encode, load_tokenizer, reader
from tests.model.tiny_bert import labelled_csv, wordpiece

WORDS = [f"w{i}" for i in range(30)]
VOCAB = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", *WORDS]


def tokenizer(max_len: int):
    tok = wordpiece(VOCAB)
    tok.add_special_tokens(["[CLS]", "[SEP]"])  # as a BERT tokenizer.json has them
    tok.enable_truncation(max_length=max_len)
    return tok


def text(n: int) -> str:
    return " ".join(WORDS[i % 30] for i in range(n))


def ids(n: int) -> list[int]:
    return [4 + i % 30 for i in range(n)]


@pytest.mark.parametrize("share,head,tail", [(0.25, 2, 6), (0.5, 4, 4), (0.0, 0, 8),
                                             (1.0, 8, 0), (0.99, 7, 1)])
def test_the_cut_keeps_the_specials_the_head_and_the_tail(share, head, tail):
    body = ids(20)
    got = head_tail([2, *body, 3], body, 10, share)
    assert got == [2, *body[:head], *body[20 - tail:], 3]
    assert len(got) == 10


def test_a_text_within_max_len_is_read_whole_and_specials_may_sit_on_both_sides():
    assert head_tail([2, 5, 6, 3], [5, 6], 4, 0.25) == [2, 5, 6, 3]
    body = ids(9)
    assert head_tail([2, 2, *body, 3], body, 7, 0.5) == [2, 2, *body[:2], *body[7:], 3]
    assert head_tail([2, *body, 3], body, 1, 0.5) == [2, 3]  # nothing left for the text
    with pytest.raises(ConfigError, match="do not wrap"):
        head_tail([2, 9, 9, 3], [5, 6, 7, 8], 3, 0.5)


def test_the_tokenizer_cuts_long_texts_and_leaves_the_rest_as_truncation_does():
    tok = tokenizer(10)
    ht = reader(tok, Reading("head-tail", 0.25))
    assert isinstance(ht, HeadTail) and reader(tok, Reading()) is tok
    texts = [text(3), text(8), text(9), text(40)]
    got = [r.tolist() for r in encode(ht, texts)]
    cut = [r.tolist() for r in encode(tok, texts)]
    assert got[:2] == cut[:2]  # 5 and 10 ids fit; 11 and 42 do not
    assert got[2] == [2, *ids(9)[:2], *ids(9)[3:], 3] != cut[2]
    assert got[3] == [2, *ids(40)[:2], *ids(40)[34:], 3] != cut[3]
    # head_share 1 is truncation, through the same cut
    whole = [r.tolist() for r in encode(reader(tok, Reading("head-tail", 1.0)), texts)]
    assert whole == cut
    assert ht.to_str() == tok.to_str() and ht.truncation["max_length"] == 10


def test_a_text_holding_a_special_token_is_cut_as_javascript_cuts_it():
    """"[CLS] ..." encodes to [CLS] [CLS] ...: the text's own ids (its [CLS] among them)
    start where they first occur whole, which examples/js/cascade.mjs finds the same way."""
    ht = reader(tokenizer(6), Reading("head-tail", 0.5))
    assert encode(ht, ["[CLS] " + text(10)])[0].tolist() == [2, 2, 4, 12, 13, 3]


def test_load_tokenizer_reads_as_the_manifest_says_and_an_older_one_truncates():
    data = tokenizer(10).to_str().encode()
    assert isinstance(load_tokenizer(data, Reading.of({"reading": "head-tail"})), HeadTail)
    assert Reading.of({}) == Reading() and Reading.of({}).to_spec() == {"reading": "truncate"}
    assert Reading("head-tail", 0.3).to_spec() == {"reading": "head-tail", "head_share": 0.3}


@pytest.mark.parametrize("mode,share,fragment", [
    ("middle", 0.25, "reading must be one of truncate, head-tail"),
    ("head-tail", 1.5, "head_share must be a number from 0 to 1"),
    ("head-tail", True, "head_share"), ("head-tail", "0.5", "head_share"),
])
def test_a_bad_reading_is_refused(mode, share, fragment):
    with pytest.raises(ConfigError, match=fragment):
        Reading(mode, share)
    with pytest.raises(ConfigError, match=fragment):
        MatryoshkaConfig.from_dict({**preset("tiny-text").to_dict(), "reading": mode,
                                    "head_share": share})


def test_the_config_records_a_reading_only_when_it_is_not_truncate():
    cfg = preset("tiny-text")
    assert "reading" not in cfg.to_dict() and cfg.long_texts() == Reading()
    ht = MatryoshkaConfig.from_dict({**cfg.to_dict(), "reading": "head-tail"})
    assert ht.to_dict()["reading"] == "head-tail" and ht.long_texts().head_share == 0.25
    with pytest.raises(ConfigError, match="reads long texts; this model takes image"):
        MatryoshkaConfig(reading="head-tail")


@pytest.fixture(scope="module")
def head_tail_export(tmp_path_factory):
    """A tiny BPE model trained for one epoch on texts of up to 40 words, read by their head
    (a third) and tail at max_len 12, and exported."""
    d = tmp_path_factory.mktemp("head-tail")
    data = labelled_csv(d / "data.csv", n=700)
    r = CliRunner().invoke(cli, ["train", "--data", str(data), "--preset", "tiny-text",
                                 "--vocab-size", "200", "--max-len", "12", "--epochs", "1",
                                 "--long", "head-tail", "--head-share", "0.34",
                                 "--out", str(d / "ck"), "--no-progress"])
    assert r.exit_code == 0, r.output
    r = CliRunner().invoke(mexport, ["--checkpoint", str(d / "ck"), "--out", str(d / "exp"),
                                     "--no-progress"])
    assert r.exit_code == 0, r.output
    return d


def test_a_model_trained_head_tail_exports_and_runs_head_tail(head_tail_export):
    d = head_tail_export
    model, _ = load_checkpoint(d / "ck")
    assert model.config.long_texts() == Reading("head-tail", 0.34)
    manifest = json.loads((d / "exp" / "manifest.json").read_text())
    assert (manifest["input"]["reading"], manifest["input"]["head_share"]) == ("head-tail", 0.34)
    rt = Runtime.open(d / "exp", device="cpu")
    raw = load_tokenizer((d / "exp" / manifest["tokenizer"]["file"]).read_bytes())
    long = " ".join(["good"] * 30 + ["bad"] * 30)
    got = encode(rt.tokenizer, [long])[0]
    assert len(got) == 12 and got.tolist() != encode(raw, [long])[0].tolist()
    raw.no_truncation()
    full, plain = raw.encode(long).ids, raw.encode(long, add_special_tokens=False).ids
    assert got.tolist() == head_tail(full, plain, 12, 0.34)
    # the runtime answers from those ids: text in, the same as the ids in
    ids = np.asarray([got])
    assert rt.predict([long]).labels.tolist() == rt.predict(ids).labels.tolist()


def test_a_bundle_reads_as_its_export_does(head_tail_export, tmp_path):
    from matryoshka.bundle import bundle
    from matryoshka.calibration import calibrate

    export = tmp_path / "exp"
    shutil.copytree(head_tail_export / "exp", export)
    calibrate(export, epsilon=0.1, delta=0.2, progress=False)
    out = bundle(export, tmp_path / "phone", variant="fp32", progress=False).folder
    rt = Runtime.open(out, device="cpu")
    assert rt.manifest["input"]["reading"] == "head-tail" and isinstance(rt.tokenizer, HeadTail)
    long = " ".join(["good"] * 30 + ["bad"] * 30)
    want = Runtime.open(head_tail_export / "exp", device="cpu").tokenizer
    assert encode(rt.tokenizer, [long])[0].tolist() == encode(want, [long])[0].tolist()


def test_continuing_from_a_head_tail_checkpoint_keeps_its_reading(head_tail_export, tmp_path):
    d = head_tail_export
    r = CliRunner().invoke(cli, ["train", "--data", str(d / "data.csv"), "--init-from",
                                 str(d / "ck"), "--epochs", "1", "--out", str(tmp_path / "ck"),
                                 "--no-progress"])
    assert r.exit_code == 0, r.output
    assert load_checkpoint(tmp_path / "ck")[0].config.long_texts() == Reading("head-tail", 0.34)


@pytest.mark.parametrize("args,fragment", [
    (["--head-share", "0.3"], "--head-share is the share of a long text's head"),
    (["--long", "head-tail", "--data", "demo"], "--data is not raw text"),
    (["--long", "head-tail", "--head-share", "1.5"], "--head-share"),
    (["--long", "middle"], "--long"),
])
def test_bad_reading_options_are_one_error_and_write_nothing(args, fragment, tmp_path):
    data = labelled_csv(tmp_path / "data.csv", n=60)
    out = tmp_path / "ck"
    r = CliRunner().invoke(cli, ["train", "--data", str(data), "--preset", "tiny-text",
                                 "--epochs", "1", "--out", str(out), "--no-progress", *args])
    assert r.exit_code == 2, r.output
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: ") and fragment in lines[0], lines
    assert not out.exists()
