"""Mix'n'Match sub-models exported as levels: named, ordered by FLOPs, validated like any level,
and used by the runtime, calibrate and select_level like any level."""

import json

import numpy as np
import onnx
import pytest
from click.testing import CliRunner

from matryoshka.cli import cli, mexport
from matryoshka.exporter import export
from matryoshka.exporter.validate import torch_logits
from matryoshka.model import Spec
from matryoshka.model.checkpoint import load_checkpoint
from matryoshka.runtime import Runtime
from matryoshka.runtime.records import new_record, store_record
from tests.exporter.test_export import _one_error  # exit 2, one `error:` line with fragment

# tiny: levels 16, 32, 64; FFN widths 24, 48, 96; heads 2, 4, 8 (head_dim 8); 2 layers
MIXES = [("wide", Spec(16, (96, 48), (4, 2))), ("narrow", Spec(64, (24, 24), (2, 4))),
         ("mid", Spec(32, (96, 96), (8, 8)))]


@pytest.fixture(scope="module")
def mix_export(tiny_checkpoint, tmp_path_factory):
    out = tmp_path_factory.mktemp("mix") / "export"
    manifest = export(tiny_checkpoint, out, mixes=MIXES, progress=False)
    return out, manifest


def test_mixes_are_levels_ordered_by_flops(mix_export, tiny_checkpoint):
    out, manifest = mix_export
    levels = manifest["levels"]
    flops = [lv["flops_per_sample"] for lv in levels]
    assert flops == sorted(flops)
    names = [lv["name"] for lv in levels]
    assert set(names) == {"16", "32", "64", "wide", "narrow", "mid"}
    model, _ = load_checkpoint(tiny_checkpoint)
    for lv in levels:
        spec = Spec.from_dict(lv["spec"])
        assert lv["dim"] == spec.dim and lv["trained"] == lv["name"].isdigit()
        assert lv["parity"]["max_abs"] <= 1e-4 and lv["parity"]["atol"] == 1e-4
        meta = {p.key: p.value for p in onnx.load(str(out / lv["file"])).metadata_props}
        assert meta["matryoshka.name"] == lv["name"] and meta["matryoshka.spec"] == str(spec)
        assert meta["matryoshka.levels"] == ",".join(names)
    assert {lv["name"]: lv["file"] for lv in levels}["wide"] == "level-wide.onnx"


def test_the_runtime_runs_a_mix_as_torch_does(mix_export, tiny_checkpoint, demo_data):
    out, _ = mix_export
    model, _ = load_checkpoint(tiny_checkpoint)
    rt = Runtime.open(out, device="cpu")
    x = demo_data["test"][0][:64].astype(np.float32)
    for name, spec in MIXES:
        got = rt.run_level(name, x)
        np.testing.assert_allclose(got, torch_logits(model, x, spec), atol=1e-4, rtol=1e-3)
        assert (rt.predict(x, level=name).levels == name).all()
    # the cascade runs every level, the mixes among them, in FLOPs order
    out = rt.predict(x, thresholds=[1.0] * (len(rt.levels) - 1))
    assert (out.levels == "64").all()
    first = rt.predict(x, thresholds=[0.0] * (len(rt.levels) - 1))
    assert (first.levels == rt.levels[0]).all()


def test_calibrate_by_default_keeps_the_cheaper_certified_level_set(mix_export, tmp_path):
    """Every level, or the trained levels alone: both certified at delta/2 (Bonferroni), the
    one with the lower expected cost on the calibration split kept and said."""
    import shutil

    folder = tmp_path / "export"
    shutil.copytree(mix_export[0], folder)
    r = CliRunner().invoke(cli, ["calibrate", str(folder), "--epsilon", "0.1",
                                 "--no-progress"])
    assert r.exit_code == 0, r.output
    rec = json.loads((folder / "manifest.json").read_text())["calibration"]["fp32"]
    assert len(rec["temperatures"]) == 6 and len(rec["graphs"]) == 6
    every, trained = rec["candidates"]
    assert trained["levels"] == ["16", "32", "64"] and len(every["levels"]) == 6
    assert every["delta"] == trained["delta"] == pytest.approx(rec["delta"] / 2)
    certified = [i for i, c in enumerate(rec["candidates"]) if c["thresholds"] is not None]
    assert rec["chosen"] == min(certified, key=lambda i: (
        rec["candidates"][i]["expected_relative_cost"], i))
    assert rec["levels"] == rec["candidates"][rec["chosen"]]["levels"]
    assert "Bonferroni" in rec["method"] and "<- chosen" in r.output
    # the calibrated cascade answers with names the runtime knows
    rt = Runtime.open(folder, device="cpu")
    assert set(rt.predict(np.zeros((4, 8, 8), np.float32)).levels) <= set(rt.levels)


def test_calibrate_a_cascade_of_chosen_levels(mix_export, tmp_path, demo_data):
    import shutil

    folder = tmp_path / "export"
    shutil.copytree(mix_export[0], folder)
    r = CliRunner().invoke(cli, ["calibrate", str(folder), "--epsilon", "0.1", "--cascade",
                                 "trained", "--no-progress"])
    assert r.exit_code == 0, r.output
    rec = json.loads((folder / "manifest.json").read_text())["calibration"]["fp32"]
    assert rec["levels"] == ["16", "32", "64"] and len(rec["temperatures"]) == 6
    assert rec["thresholds"] is None or len(rec["thresholds"]) == 2
    assert "candidates" not in rec  # one set asked for: nothing to choose
    rt = Runtime.open(folder, device="cpu")
    assert rt.cascade_levels() == ["16", "32", "64"]
    x = demo_data["test"][0][:100].astype(np.float32)
    assert set(rt.predict(x).levels) <= {"16", "32", "64"}
    # names, in any order, are put in the export's order
    r = CliRunner().invoke(cli, ["calibrate", str(folder), "--epsilon", "0.1", "--cascade",
                                 "64,wide", "--no-progress"])
    assert r.exit_code == 0, r.output
    rec = json.loads((folder / "manifest.json").read_text())["calibration"]["fp32"]
    assert rec["levels"] == ["wide", "64"]
    r = CliRunner().invoke(cli, ["calibrate", str(folder), "--cascade", "16,nope"])
    _one_error(r, "--cascade must be cheapest, all, trained or level names of the export")


def test_select_level_can_return_a_mix(mix_export, tmp_path):
    import shutil

    folder = tmp_path / "export"
    shutil.copytree(mix_export[0], folder)
    rt = Runtime.open(folder, device="cpu")
    # synthetic latency that grows with FLOPs: a budget between two trained levels gets the
    # largest mix that fits
    flops = {lv["name"]: lv["flops_per_sample"] for lv in rt.manifest["levels"]}
    rows = [{"level": name, "batch": 1, "p50_ms": f / 1e6, "p90_ms": f / 1e6,
             "p99_ms": f / 1e6, "throughput": 1e6 / f, "gflops": 1.0, "roofline": 0.1,
             "load_ms": 1.0, "rss_mb": 1.0, "bytes": 1024} for name, f in flops.items()]
    store_record(folder, {**new_record("CPUExecutionProvider", None, 1.0), "results": rows})
    trained = sorted((f, n) for n, f in flops.items() if n.isdigit())
    mixes_between = sorted((f, n) for n, f in flops.items()
                           if not n.isdigit() and trained[1][0] < f < trained[2][0])
    assert mixes_between, "the test needs a mix between levels 32 and 64"
    budget = (mixes_between[-1][0] + 1) / 1e6
    assert rt.select_level(budget, batch=1, percentile="p50") == mixes_between[-1][1]


@pytest.mark.parametrize("mix,fragment", [
    ("a=32:ffn=48,50", "layer 1: FFN width 50 is not a trained granularity (24, 48, 96)"),
    ("a=40", "the residual width 40 is not a trained level (16, 32, 64)"),
    ("a=32:ffn=48,48,48", "ffn lists 3 layers; the model has 2"),
    ("a=32:heads=4,4,4", "heads lists 3 layers; the model has 2"),
    ("a=32:heads=4,3", "layer 1: 3 heads is not a trained head count (2, 4, 8, at head_dim 8)"),
    ("a=32:attn=32,12", "layer 1: attention width 12 is not a whole number of heads "
                        "(head_dim 8 does not divide it)"),
    ("16=32:ffn=96", "mix name '16' collides with level 16"),
    ("a=32:ffn=48,48", "mix 'a' (32:ffn=48,48:heads=4,4) is trained level 32 itself"),
    ("32:ffn=96", "write NAME=SPEC"),
])
def test_bad_mixes_get_one_error_line(tiny_checkpoint, tmp_path, mix, fragment):
    r = CliRunner().invoke(mexport, ["--checkpoint", str(tiny_checkpoint), "--out",
                                     str(tmp_path / "e"), "--mix", mix])
    _one_error(r, fragment)
    assert not (tmp_path / "e").exists()


def test_two_mixes_with_one_name_or_one_spec(tiny_checkpoint, tmp_path):
    base = ["--checkpoint", str(tiny_checkpoint), "--out", str(tmp_path / "e")]
    r = CliRunner().invoke(mexport, base + ["--mix", "a=32:ffn=96", "--mix", "a=64:ffn=24"])
    _one_error(r, "mix name 'a' collides with mix 'a'")
    r = CliRunner().invoke(mexport, base + ["--mix", "a=32:ffn=96", "--mix", "b=32:ffn=96,96"])
    _one_error(r, "mixes 'a' and 'b' have the same spec 32:ffn=96,96:heads=4,4")


def test_from_search_exports_the_picks(tiny_checkpoint, tmp_path):
    search = tmp_path / "search.json"
    r = CliRunner().invoke(cli, ["search", str(tiny_checkpoint), "--out", str(search),
                                 "--no-plot", "--no-progress"])
    assert r.exit_code == 0, r.output
    record = json.loads(search.read_text())
    picked = {p["name"]: p["spec"] for p in record["between"]}
    r = CliRunner().invoke(mexport, ["--checkpoint", str(tiny_checkpoint), "--out",
                                     str(tmp_path / "e"), "--from-search", str(search),
                                     "--pick", "between", "--no-progress"])
    assert r.exit_code == 0, r.output
    levels = json.loads((tmp_path / "e" / "manifest.json").read_text())["levels"]
    got = {lv["name"]: lv["spec"] for lv in levels if not lv["trained"]}
    assert got == picked and len(got) == 2  # one inside each gap: 16-32 and 32-64
    r = CliRunner().invoke(mexport, ["--checkpoint", str(tiny_checkpoint), "--out",
                                     str(tmp_path / "e2"), "--from-search", str(search),
                                     "--pick", "99"])
    _one_error(r, "--pick '99' is not a pick of")


def test_predict_cli_runs_a_mix_by_name(mix_export, tmp_path, demo_data):
    x = demo_data["test"][0][:5].astype(np.float32)
    np.save(tmp_path / "x.npy", x)
    r = CliRunner().invoke(cli, ["predict", str(mix_export[0]), str(tmp_path / "x.npy"),
                                 "--level", "narrow", "--device", "cpu", "--json"])
    assert r.exit_code == 0, r.output
    out = json.loads(r.stdout)
    assert out["levels"] == ["narrow"] * 5
    rt = Runtime.open(mix_export[0], device="cpu")
    assert out["labels"] == rt.predict(x, level="narrow").labels.tolist()
