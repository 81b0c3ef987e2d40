"""manifest.json: every field a reader relies on is checked, and the files it names are the
files that run (integrity proves what runs, not only agreement with the manifest)."""

import hashlib
import json
import shutil

import numpy as np
import pytest

from matryoshka.errors import ArtifactError
from matryoshka.runtime import Runtime
from matryoshka.runtime.manifest import GRAPH_FILE, free_name, level_file


@pytest.fixture
def export_copy(tiny_export_dir, tmp_path):
    out = tmp_path / "export"
    shutil.copytree(tiny_export_dir, out)
    return out


def _edit(folder, change) -> None:
    path = folder / "manifest.json"
    m = json.loads(path.read_text())
    change(m)
    path.write_text(json.dumps(m))


def _set(path, value):
    def change(m):
        *parents, last = path
        target = m
        for key in parents:
            target = target[key]
        target[last] = value
    return change


def _drop(path):
    def change(m):
        *parents, last = path
        target = m
        for key in parents:
            target = target[key]
        del target[last]
    return change


CALIBRATION = {"fp32": {"temperatures": [1.0, 1.0, 1.0], "thresholds": [0.9, 0.9]}}


@pytest.mark.parametrize("change,fragment", [
    (_drop(("levels", 0, "dim")), "levels[0].dim must be a positive integer"),
    (_drop(("levels", 1, "file")), "levels[1].file must be a bare file name"),
    (_drop(("levels", 2, "sha256")), "levels[2].sha256 must be 64 lower-case hex"),
    (_drop(("output",)), "the 'output' section is missing"),
    (_drop(("input", "shape")), "input.shape must be a list"),
    (_set(("levels",), {"16": "level-0016.onnx"}), "the 'levels' section is missing or not a list"),
    (_set(("input", "dtype"), "float16"), "input.dtype must be one of float32, int64"),
    (_set(("levels", 0, "file"), "../x"), "levels[0].file must be a bare file name"),
    (_set(("levels", 0, "file"), "/etc/passwd"), "levels[0].file must be a bare file name"),
    (_set(("levels", 0, "file"), ".."), "levels[0].file must be a bare file name"),
    (_set(("levels", 1, "dim"), 16), "levels[1] is named 32 but has dim 16"),
    (_set(("levels", 1, "flops_per_sample"), 1), "levels must be ordered by flops_per_sample"),
    (_set(("levels", 1, "name"), "a-b"), "levels[1].name must be a width or a letter"),
    (_set(("levels", 1, "spec"), {"dim": 32, "ffn": [48], "heads": [4, 4]}),
     "levels[1].spec must hold the level's dim and one ffn width and one head count per layer"),
    (_set(("schema_version",), 3), "this matryoshka reads versions 1, 2"),
    (_set(("calibration",), {"fp32": {"temperatures": [1.0] * 3, "thresholds": [0.5],
                                      "levels": ["64", "16"]}}),
     "calibration.fp32.levels must list levels of the export, in its order"),
    (_set(("calibration",), {"fp32": {"temperatures": [1.0] * 3, "thresholds": [0.5, 0.5],
                                      "levels": ["16", "64"]}}),
     "thresholds must be null or 1 numbers in [0, 1]"),
    (_set(("calibration",), {"fp32": {"temperatures": [1.0, 0.0, 1.0], "thresholds": None}}),
     "temperatures must be 3 finite numbers > 0"),
    (_set(("calibration",), {"fp32": {"temperatures": [1.0] * 3, "thresholds": [0.5, 1.5]}}),
     "thresholds must be null or 2 numbers in [0, 1]"),
    (_set(("calibration",), {"fp32": {"temperatures": [1.0] * 3, "thresholds": [0.5]}}),
     "thresholds must be null or 2 numbers in [0, 1]"),
])
def test_a_manifest_a_reader_cannot_trust_is_refused(export_copy, change, fragment):
    _edit(export_copy, change)
    with pytest.raises(ArtifactError) as e:
        Runtime.open(export_copy, device="cpu")
    assert fragment in str(e.value)


def test_a_valid_calibration_is_accepted(export_copy):
    _edit(export_copy, _set(("calibration",), CALIBRATION))
    assert Runtime.open(export_copy, device="cpu").calibration()["thresholds"] == [0.9, 0.9]


def test_a_graph_copied_over_another_level_is_refused(export_copy, demo_data):
    """Copy level 32's graph over level 16's and fix the sha256: the graph's own metadata
    still says 32, so level 16 must not answer with it."""
    shutil.copy(export_copy / "level-0032.onnx", export_copy / "level-0016.onnx")
    sha = hashlib.sha256((export_copy / "level-0016.onnx").read_bytes()).hexdigest()
    _edit(export_copy, _set(("levels", 0, "sha256"), sha))
    with pytest.raises(ArtifactError, match="listed as level 16 but the graph's own "
                                            "matryoshka.dim metadata says 32"):
        Runtime.open(export_copy, device="cpu", engine="levels")
    rt = Runtime.open(export_copy, device="cpu")  # the cascade graph holds its own copies:
    with pytest.raises(ArtifactError, match="listed as level 16"):  # checked at first use
        rt.predict(demo_data["test"][0][:2], level=16)


def test_a_wrong_input_name_is_refused(export_copy):
    _edit(export_copy, _set(("input", "name"), "pixels"))
    with pytest.raises(ArtifactError, match=r"takes the input\(s\) \['x'\] but manifest.json "
                                            r"says 'pixels'"):
        Runtime.open(export_copy, device="cpu")


def test_a_file_changed_after_a_lazy_open_is_refused_when_loaded(export_copy, demo_data):
    rt = Runtime.open(export_copy, device="cpu", preload=False)
    blob = bytearray((export_copy / "level-0064.onnx").read_bytes())
    blob[-1] ^= 0xFF
    (export_copy / "level-0064.onnx").write_bytes(bytes(blob))
    x = demo_data["test"][0][:3]
    rt.predict(x, level=16)  # untouched levels still load
    with pytest.raises(ArtifactError, match="level-0064.onnx does not match the sha256"):
        rt.predict(x, level=64)


def graph_name(dim, variant, sha, named):
    return free_name(level_file(dim, variant), sha, named)


def test_graph_names_never_reuse_a_committed_name_for_other_bytes():
    a, b = "a" * 64, "b" * 64
    assert graph_name(16, "fp32", a, {}) == "level-0016.onnx"
    assert graph_name(16, "fp32", a, {"level-0016.onnx": a}) == "level-0016.onnx"  # same bytes
    assert graph_name(16, "fp32", b, {"level-0016.onnx": a}) == "level-0016-bbbbbbbb.onnx"
    # the next generation returns to the plain name, which is free again
    assert graph_name(16, "fp32", a, {"level-0016-bbbbbbbb.onnx": b}) == "level-0016.onnx"
    assert graph_name(16, "int8", b, {"level-0016.int8.onnx": a}) == \
        "level-0016-bbbbbbbb.int8.onnx"
    for name in ("level-0016.onnx", "level-0016-bbbbbbbb.int8.onnx", level_file(512, "int8")):
        assert GRAPH_FILE.match(name)
    for name in ("notes.onnx", "level-16.onnx", "manifest.json", "level-0016.onnx.bak"):
        assert not GRAPH_FILE.match(name)


def test_predict_in_chunks_equals_one_call(tiny_export_dir, demo_data):
    x = demo_data["test"][0]
    whole = Runtime.open(tiny_export_dir, device="cpu", batch_size=len(x))
    chunked = Runtime.open(tiny_export_dir, device="cpu", batch_size=7, engine="levels")
    biggest = []
    real = chunked.run_level

    def spy(dim, rows):
        biggest.append(len(rows))
        return real(dim, rows)

    chunked.run_level = spy
    mid = [float(np.median(whole.predict(x, level=d).confidence)) for d in whole.levels[:-1]]
    a, b = whole.predict(x, thresholds=mid), chunked.predict(x, thresholds=mid)
    assert max(biggest) == 7 and len(biggest) > len(x) // 7
    np.testing.assert_array_equal(a.labels, b.labels)
    np.testing.assert_array_equal(a.levels, b.levels)
    np.testing.assert_allclose(a.probs, b.probs, rtol=0, atol=1e-6)


def test_a_reader_racing_a_commit_reads_the_new_manifest(export_copy, monkeypatch):
    """open() read a manifest, then a writer committed a new one and deleted the old graphs:
    the reader tries the new manifest instead of failing."""
    import os

    import matryoshka.runtime.runtime as runtime

    real = runtime.read_manifest
    calls = []

    def stale_then_fresh(folder):
        calls.append(1)
        m = real(folder)
        if len(calls) == 1:  # the manifest as it was before the commit below
            m = json.loads(json.dumps(m))
            m["levels"][0]["file"] = "level-0016-00000000.onnx"  # deleted by the commit
            fresh = export_copy / "manifest.json"
            (export_copy / "m.tmp").write_bytes(fresh.read_bytes())
            os.replace(export_copy / "m.tmp", fresh)  # the commit: a new file renamed in
        return m

    monkeypatch.setattr(runtime, "read_manifest", stale_then_fresh)
    rt = Runtime.open(export_copy, device="cpu")
    assert len(calls) == 2 and rt.file(16).name == "level-0016.onnx"


def test_a_reader_of_a_corrupt_folder_fails_at_once(export_copy, monkeypatch):
    import matryoshka.runtime.runtime as runtime

    (export_copy / "level-0032.onnx").write_bytes(b"not a graph")
    calls = []
    real = runtime.read_manifest
    monkeypatch.setattr(runtime, "read_manifest", lambda f: calls.append(1) or real(f))
    with pytest.raises(ArtifactError, match="level-0032.onnx does not match the sha256"):
        Runtime.open(export_copy, device="cpu")
    assert len(calls) == 1  # the committed manifest did not change: no second attempt


def _as_schema_1(m):
    """What mexport wrote before levels had names (schema 1)."""
    m["schema_version"] = 1
    for lv in m["levels"]:
        del lv["name"], lv["spec"]


def test_a_schema_1_manifest_still_opens_with_levels_named_by_width(export_copy, demo_data):
    x = demo_data["test"][0][:50]
    before = Runtime.open(export_copy, device="cpu").predict(x, level=32)
    _edit(export_copy, _as_schema_1)
    rt = Runtime.open(export_copy, device="cpu")
    assert rt.levels == ["16", "32", "64"] and rt.dim("32") == 32
    after = rt.predict(x, level=32)
    np.testing.assert_array_equal(after.probs, before.probs)
    assert (after.levels == "32").all()


def test_a_schema_1_manifest_keeps_its_own_rules(export_copy):
    _edit(export_copy, lambda m: (_as_schema_1(m), _set(("levels", 1, "dim"), 16)(m)))
    with pytest.raises(ArtifactError, match="level dims must be strictly increasing"):
        Runtime.open(export_copy, device="cpu")


def test_mix_file_names_are_graph_files():
    assert level_file("mid") == "level-mid.onnx"
    assert level_file("mid", "int8", "1a2b3c4d") == "level-mid-1a2b3c4d.int8.onnx"
    assert level_file("64") == level_file(64) == "level-0064.onnx"
    for name in ("level-mid.onnx", "level-mid-1a2b3c4d.int8.onnx", "level-a_1.int8.onnx"):
        assert GRAPH_FILE.match(name)
    assert not GRAPH_FILE.match("level-.onnx") and not GRAPH_FILE.match("level-_x.onnx")
