"""cascade.onnx: the contract of docs/design.md, "The cascade as one graph": bit-identical parity
with the levels engine at 26 threshold vectors (ties included) for fp32, dynamic and static
INT8, its rebuild by calibrate and tune through the folder protocol, its size, and its errors."""

import json
import shutil

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from click.testing import CliRunner

from matryoshka.calibration import calibrate
from matryoshka.cli import cli
from matryoshka.errors import ArtifactError, ConfigError
from matryoshka.folder.cascades import (
    CHECK_ROWS,
    MIN_CHECK_ROWS,
    check_cascade,
    check_row_count,
    wanted,
)
from matryoshka.runtime import InputError, Runtime
from matryoshka.runtime.manifest import read_manifest

OUTPUTS = ["labels", "probs", "confidence", "level", "level_index", "row_check"]


@pytest.fixture
def export(tiny_export_dir, tmp_path):
    out = tmp_path / "export"
    shutil.copytree(tiny_export_dir, out)
    return out


@pytest.fixture(scope="module")
def calibrated(tiny_export_dir, tmp_path_factory):
    """The tiny export, calibrated (fp32) with a loose epsilon so that rows exit early."""
    out = tmp_path_factory.mktemp("cascade") / "export"
    shutil.copytree(tiny_export_dir, out)
    calibrate(out, epsilon=0.1, delta=0.2, progress=False)
    return out


def _session(folder, variant="fp32"):
    entry = read_manifest(folder)["cascade"][variant]
    return ort.InferenceSession(str(folder / entry["file"]), providers=["CPUExecutionProvider"])


def test_export_writes_the_graph_of_the_design(export):
    m = read_manifest(export)
    assert set(m["cascade"]) == {"fp32", "int8"}
    entry = m["cascade"]["fp32"]
    assert entry["file"] == "cascade.onnx" and entry["levels"] == ["16", "32", "64"]
    assert entry["thresholds"] == [1.0, 1.0] and entry["temperatures"] == [1.0] * 3
    assert entry["graphs"] == [lv["sha256"] for lv in m["levels"]]
    model = onnx.load(str(export / "cascade.onnx"))
    onnx.checker.check_model(model, full_check=True)
    assert model.ir_version == 8 and [(o.domain, o.version) for o in model.opset_import] == [
        ("", 17)]
    assert [i.name for i in model.graph.input] == ["x", "thresholds", "temperatures"]
    assert [o.name for o in model.graph.output] == OUTPUTS
    defaults = {i.name: onnx.numpy_helper.to_array(i) for i in model.graph.initializer
                if i.name in ("thresholds", "temperatures")}
    assert defaults["thresholds"].dtype == np.float32 and defaults["thresholds"].shape == (2,)
    meta = {p.key: p.value for p in model.metadata_props}
    assert meta["matryoshka.levels"] == "16,32,64" and meta["matryoshka.widths"] == "16,32,64"
    assert json.loads(meta["matryoshka.input"]) == m["input"]
    assert json.loads(meta["matryoshka.classes"]) == m["output"]["labels"]
    assert meta["matryoshka.schema_version"] == "2"
    assert "uncalibrated" in meta["matryoshka.guarantee"]


def test_uncalibrated_defaults_send_every_row_to_the_largest_level(export, demo_data):
    x = demo_data["test"][0][:50].astype(np.float32)
    out = dict(zip(OUTPUTS, _session(export).run(None, {"x": x})))
    assert (out["level"] == 64).all() and (out["level_index"] == 2).all()
    largest = Runtime.open(export, device="cpu", engine="levels").predict(x)
    np.testing.assert_array_equal(out["probs"], largest.probs)
    np.testing.assert_array_equal(out["labels"], largest.labels)


@pytest.mark.parametrize("variant", ["fp32", "int8"])
def test_parity_is_bit_for_bit_at_27_threshold_vectors(calibrated, demo_data, variant):
    """The defaults, all 0, all 1, 20 random vectors and 4 ties (the last sends only the least
    confident row on: a single row through each level), on the whole test split."""
    m = read_manifest(calibrated)
    rt = Runtime.from_manifest(calibrated, m, device="cpu", variant=variant)
    data = (calibrated / m["cascade"][variant]["file"]).read_bytes()
    x = demo_data["test"][0].astype(np.float32)
    assert check_cascade(data, rt, wanted(m, variant), x, "cascade", rows=len(x),
                         random=20) == 27


def test_the_check_takes_fewer_rows_only_for_a_costly_largest_level():
    assert check_row_count(33.7e6) == CHECK_ROWS  # the digits demo's largest level
    assert check_row_count(0) == CHECK_ROWS  # a manifest without FLOPs
    assert check_row_count(2.869e9) == 69  # MiniLM at 128 tokens: 2e11 FLOPs of it
    assert check_row_count(1e13) == MIN_CHECK_ROWS


def test_static_int8_cascade_is_rebuilt_and_bit_identical(export, demo_data):
    before = read_manifest(export)["cascade"]["int8"]
    calibrate(export, epsilon=0.1, delta=0.2, int8="static", variant="int8", progress=False)
    m = read_manifest(export)
    entry = m["cascade"]["int8"]
    assert entry["sha256"] != before["sha256"]
    # the plain name again (a second commit after the tagged one), holding the new bytes
    assert entry["file"] == "cascade.int8.onnx" and not any(
        p.name.startswith("cascade-") for p in export.iterdir())
    assert entry["graphs"] == [lv["int8"]["sha256"] for lv in m["levels"]]
    assert entry["thresholds"] == m["calibration"]["int8"]["thresholds"]
    rt = Runtime.from_manifest(export, m, device="cpu", variant="int8")
    x = demo_data["test"][0].astype(np.float32)
    assert check_cascade((export / entry["file"]).read_bytes(), rt, entry, x, "cascade",
                         rows=len(x), random=20) == 27


def test_calibrate_rebuilds_only_the_calibrated_variant(tiny_export_dir, calibrated):
    old, new = read_manifest(tiny_export_dir), read_manifest(calibrated)
    cal = new["calibration"]["fp32"]
    assert cal["thresholds"] is not None, "the test needs certified thresholds"
    fp32 = new["cascade"]["fp32"]
    assert fp32["thresholds"] == cal["thresholds"]
    assert fp32["temperatures"] == [cal["temperatures"][i] for i in range(3)]
    assert fp32["sha256"] != old["cascade"]["fp32"]["sha256"]
    assert new["cascade"]["int8"] == old["cascade"]["int8"]  # untouched: same entry, same file
    files = {p.name for p in calibrated.iterdir()}
    assert {e["file"] for e in new["cascade"].values()} <= files
    assert sum(n.startswith("cascade") for n in files) == 2  # the old fp32 graph is gone


def test_both_engines_give_identical_predictions(calibrated, demo_data):
    x = demo_data["test"][0]
    graph = Runtime.open(calibrated, device="cpu", batch_size=100)
    levels = Runtime.open(calibrated, device="cpu", engine="levels")
    assert graph.engine == "graph" and levels.engine == "levels"
    for thr in (None, [0.5, 0.9], [0.0, 0.0], [1.0, 1.0]):
        a, b = graph.predict(x, thresholds=thr), levels.predict(x, thresholds=thr)
        for field in ("labels", "probs", "confidence", "levels"):
            np.testing.assert_array_equal(getattr(a, field), getattr(b, field))
    out = graph.predict(x)
    assert len(set(out.levels.tolist())) >= 2, "the test needs rows answered at several levels"
    np.testing.assert_array_equal(graph.predict(x, level=16).probs,
                                  levels.predict(x, level=16).probs)


def test_the_graph_reports_nan_and_inf_rows_with_the_same_error(calibrated, demo_data):
    x = demo_data["test"][0].astype(np.float64)
    x[3, 0, 0], x[200, 4, 4], x[201, 1, 1] = np.nan, np.inf, 1e300  # 1e300 is inf in float32
    messages = []
    for engine in ("graph", "levels"):
        rt = Runtime.open(calibrated, device="cpu", engine=engine, batch_size=128)
        with pytest.raises(InputError, match=r"NaN or inf in 3 row\(s\)") as e:
            rt.predict(x)
        messages.append(str(e.value))
    assert messages[0] == messages[1]


def test_a_flipped_byte_fails_at_open_and_names_the_file(export):
    blob = bytearray((export / "cascade.onnx").read_bytes())
    blob[len(blob) // 2] ^= 1
    (export / "cascade.onnx").write_bytes(bytes(blob))
    for engine in ("auto", "graph"):
        with pytest.raises(ArtifactError, match="cascade.onnx does not match the sha256"):
            Runtime.open(export, device="cpu", engine=engine)
    assert Runtime.open(export, device="cpu", engine="levels").engine == "levels"


def test_an_export_without_the_graph_opens_with_levels_and_graph_names_the_command(export):
    m = json.loads((export / "manifest.json").read_text())
    del m["cascade"]
    (export / "manifest.json").write_text(json.dumps(m))
    assert Runtime.open(export, device="cpu").engine == "levels"
    with pytest.raises(ArtifactError, match=r"no fp32 cascade graph .* matryoshka calibrate"):
        Runtime.open(export, device="cpu", engine="graph")
    with pytest.raises(ConfigError, match="engine must be one of"):
        Runtime.open(export, device="cpu", engine="fast")
    calibrate(export, epsilon=0.1, delta=0.2, progress=False)  # adds the graph
    assert Runtime.open(export, device="cpu", engine="graph").engine == "graph"


def test_a_hand_edited_calibration_falls_back_to_levels_unless_graph_is_asked(calibrated,
                                                                              tmp_path):
    out = tmp_path / "export"
    shutil.copytree(calibrated, out)
    m = json.loads((out / "manifest.json").read_text())
    m["calibration"]["fp32"]["thresholds"] = [0.5, 0.5]
    (out / "manifest.json").write_text(json.dumps(m))
    assert Runtime.open(out, device="cpu").engine == "levels"
    with pytest.raises(ArtifactError, match="does not hold the fp32 calibration"):
        Runtime.open(out, device="cpu", engine="graph")


def test_smaller_levels_slice_the_largest_levels_weights(export):
    """A smaller level's weight that is a corner of the largest's is stored once: the graph's
    weights weigh little more than the largest level's."""
    m = read_manifest(export)

    def weights(g):
        own = sum(i.ByteSize() for i in g.initializer)
        return own + sum(weights(a.g) for n in g.node for a in n.attribute
                         if a.type == onnx.AttributeProto.GRAPH)

    cascade = weights(onnx.load(str(export / "cascade.onnx")).graph)
    largest = weights(onnx.load(str(export / m["levels"][-1]["file"])).graph)
    all_levels = sum(weights(onnx.load(str(export / lv["file"])).graph) for lv in m["levels"])
    assert cascade <= 1.1 * largest < all_levels


def _graphs(g):
    """g and every graph nested in it (If branches), depth first."""
    yield g
    for n in g.node:
        for a in n.attribute:
            if a.type == onnx.AttributeProto.GRAPH:
                yield from _graphs(a.g)


def _tensors(g):
    """Every tensor a graph holds, at every depth: initializers and Constant nodes' values."""
    return [t for sub in _graphs(g) for t in [*sub.initializer, *(
        a.t for n in sub.node if n.op_type == "Constant" for a in n.attribute
        if a.type == onnx.AttributeProto.TENSOR)]]


def _nodes(g):
    return [n for sub in _graphs(g) for n in sub.node]


def test_a_repeated_level_adds_no_weights_and_values_keep_their_weights_names(
        export, demo_data):
    """A level equal to another (as a Mix'n'Match sub-model of the same residual width shares
    its position table) stores nothing again: its weights and Constant tables are Slices of
    the store. Weights keep their parameters' names."""
    from matryoshka.folder.cascade import SHARE_MIN, LevelGraph, build_cascade

    m = read_manifest(export)
    graphs = [LevelGraph(str(lv["dim"]), lv["dim"], onnx.load(str(export / lv["file"])))
              for lv in m["levels"]]
    twin = LevelGraph("twin", graphs[0].dim, graphs[0].model)
    k = len(graphs)
    plain = build_cascade(graphs, [0.5] * (k - 1), [1.0] * k, {})
    doubled = build_cascade([graphs[0], twin, *graphs[1:]], [0.5] * k, [1.0] * (k + 1), {})
    large = [t for t in _tensors(doubled.graph) if np.prod(t.dims) >= SHARE_MIN]
    assert large == [t for t in _tensors(doubled.graph) if t.name.startswith("stored/")
                     and np.prod(t.dims) >= SHARE_MIN]  # only the store holds large tensors
    assert len(large) == len([t for t in _tensors(plain.graph)
                              if np.prod(t.dims) >= SHARE_MIN])
    first = next(i.name for i in graphs[0].model.graph.initializer
                 if np.prod(i.dims) >= SHARE_MIN)
    assert any(f"twin/{first}" in n.output for n in _nodes(doubled.graph))
    sess = ort.InferenceSession(doubled.SerializeToString(), providers=["CPUExecutionProvider"])
    x = demo_data["test"][0][:50].astype(np.float32)
    base = ort.InferenceSession(plain.SerializeToString(), providers=["CPUExecutionProvider"])
    zeros = {"thresholds": np.zeros(k, np.float32)}
    out = sess.run(["probs"], {"x": x, **zeros})[0]
    assert np.array_equal(out, base.run(["probs"], {"x": x, "thresholds": zeros[
        "thresholds"][:k - 1]})[0])


def test_predict_and_bench_take_the_engine(calibrated, tmp_path, demo_data):
    out = tmp_path / "export"
    shutil.copytree(calibrated, out)
    np.save(tmp_path / "x.npy", demo_data["test"][0][:20])
    runs = {}
    for engine in ("graph", "levels"):
        r = CliRunner().invoke(cli, ["predict", str(out), str(tmp_path / "x.npy"), "--json",
                                     "--device", "cpu", "--engine", engine])
        assert r.exit_code == 0, r.output
        runs[engine] = json.loads(r.stdout)
    assert runs["graph"]["engine"] == "graph" and runs["levels"]["engine"] == "levels"
    assert runs["graph"]["labels"] == runs["levels"]["labels"]
    assert runs["graph"]["levels"] == runs["levels"]["levels"]
    r = CliRunner().invoke(cli, ["bench", str(out), "--batch", "4", "--iters", "2", "--warmup",
                                 "1", "--no-progress"])
    assert r.exit_code == 0, r.output
    rec = json.loads((out / "bench.json").read_text())["records"][-1]
    assert [c["engine"] for c in rec["cascade"]] == ["graph", "levels"]
    assert rec["cascade"][0]["accuracy"] == rec["cascade"][1]["accuracy"]
    assert "cascade (graph) batch   4" in r.stdout


def test_mexport_ort_writes_the_mobile_format_and_calibrate_keeps_it(tiny_checkpoint, tmp_path,
                                                                     demo_data):
    from matryoshka.exporter import export as run_export

    out = tmp_path / "export"
    run_export(tiny_checkpoint, out, progress=False, ort=True)
    first = read_manifest(out)["cascade"]["fp32"]
    assert first["ort"]["file"] == "cascade.ort"
    config = (out / first["ort_config"]["file"]).read_text()
    assert first["ort_config"]["file"] == "cascade.required_operators.config"
    assert "ai.onnx;16;" in config and "If" in config and "ScatterND" in config
    assert "/tmp" not in config  # names the converted file, not a temporary path
    calibrate(out, epsilon=0.1, delta=0.2, progress=False)
    entry = read_manifest(out)["cascade"]["fp32"]
    assert entry["ort"]["sha256"] != first["ort"]["sha256"]  # rebuilt with the new defaults
    assert sorted(p.name for p in out.iterdir() if p.name.startswith("cascade")) == [
        "cascade.onnx", "cascade.ort", "cascade.required_operators.config"]
    # The branches' shared weights stay shared, not folded into a copy per level: the file is
    # no larger than the graph in the ORT format with every optimization off (the format's
    # own overhead, which on a graph this small is a third of it; 0.4% on the MiniLM export).
    plain = ort.SessionOptions()
    plain.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    plain.optimized_model_filepath = str(tmp_path / "unoptimized.ort")
    plain.add_session_config_entry("session.save_model_format", "ORT")
    plain.log_severity_level = 3
    ort.InferenceSession(str(out / "cascade.onnx"), plain, providers=["CPUExecutionProvider"])
    ratio = (out / "cascade.ort").stat().st_size / (tmp_path / "unoptimized.ort").stat().st_size
    assert ratio <= 1.02, ratio
    x = demo_data["test"][0].astype(np.float32)
    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    mobile = ort.InferenceSession(str(out / "cascade.ort"), opts,
                                  providers=["CPUExecutionProvider"])
    got = dict(zip(OUTPUTS, mobile.run(None, {"x": x})))
    ref = Runtime.open(out, device="cpu", engine="levels").predict(x)
    np.testing.assert_array_equal(got["labels"], ref.labels)
    np.testing.assert_array_equal(np.asarray(entry["levels"])[got["level_index"]], ref.levels)


def test_bare_onnxruntime_opens_the_graph_with_only_the_documented_warnings(calibrated):
    """An app that opens cascade.onnx at onnxruntime's default log level sees two warnings,
    one per overridable default (docs/cascade.md says why and how to silence them), and not
    the dozen 'Implicit input name ... cannot be safely updated' lines that a graph reading
    both a mask and its int64 cast inside an If branch made."""
    import subprocess
    import sys

    for variant in ("fp32", "int8"):
        name = json.loads((calibrated / "manifest.json").read_text())["cascade"][variant]["file"]
        r = subprocess.run([sys.executable, "-c", "import onnxruntime as ort, sys; "
                            "ort.InferenceSession(sys.argv[1])", str(calibrated / name)],
                           capture_output=True, text=True)
        assert r.returncode == 0, r.stderr
        lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
        assert len(lines) == 2, r.stderr
        assert all("appears in graph inputs" in ln for ln in lines), r.stderr
        assert {ln.split("Initializer ")[1].split()[0] for ln in lines} == {"thresholds",
                                                                            "temperatures"}


def test_bench_times_fewer_cascade_passes_only_when_they_are_slow(calibrated, demo_data,
                                                                    monkeypatch):
    from matryoshka.runtime import bench

    rt = Runtime.open(calibrated, device="cpu")
    x, y = demo_data["test"][0][:40].astype(np.float32), demo_data["test"][1][:40]
    flops = {d: float(i + 1) for i, d in enumerate(rt.levels)}
    fast = bench.cascade_row(rt, x, y, 8, flops, repeats=5)
    assert fast["timed_passes"] == 5  # a pass of 40 tiny rows is far under the budget
    monkeypatch.setattr(bench, "CASCADE_PASSES_S", 0.0)
    slow = bench.cascade_row(rt, x, y, 8, flops, repeats=5)
    assert slow["timed_passes"] == 2  # never fewer than two
    assert slow["accuracy"] == fast["accuracy"] and slow["exit_fractions"] == fast[
        "exit_fractions"]
