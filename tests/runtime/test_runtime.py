"""Runtime on a real (tiny) export: levels, escalation, errors, threads."""

import json
import shutil
import threading

import numpy as np
import pytest

from matryoshka.errors import ArtifactError, ConfigError, MatryoshkaError
from matryoshka.runtime import DeviceError, InputError, Runtime
from matryoshka.runtime.inputs import check_input


@pytest.fixture(scope="module")
def rt(tiny_export_dir):
    return Runtime.open(tiny_export_dir, device="cpu", engine="levels")  # the graph engine:
    # tests/folder/test_cascade.py


@pytest.fixture(scope="module")
def x_test(demo_data):
    return demo_data["test"][0]


@pytest.fixture(scope="module")
def mid(rt, x_test):
    """Thresholds at the median confidence of each level, so rows split between levels."""
    return [float(np.median(rt.predict(x_test, level=d).confidence)) for d in rt.levels[:-1]]


def test_levels_and_active_providers(rt):
    assert rt.levels == ["16", "32", "64"]
    assert rt.providers == {d: ["CPUExecutionProvider"] for d in ("16", "32", "64")}


def test_threshold_zero_answers_at_the_first_level(rt, x_test):
    out = rt.predict(x_test, thresholds=[0, 0])
    assert (out.levels == "16").all()
    np.testing.assert_array_equal(out.labels, rt.predict(x_test, level=16).labels)


def test_threshold_one_answers_at_the_last_level(rt, x_test):
    out = rt.predict(x_test, thresholds=[1.0, 1.0])
    assert (out.levels == "64").all()
    np.testing.assert_array_equal(out.labels, rt.predict(x_test, level=64).labels)


def test_each_row_is_bit_identical_to_its_answering_level(rt, x_test, mid):
    out = rt.predict(x_test, thresholds=mid)
    assert len(set(out.levels.tolist())) >= 2, "the test needs rows at several levels"
    for d in rt.levels:
        rows = out.levels == d
        alone = rt.predict(x_test, level=d)
        np.testing.assert_array_equal(out.labels[rows], alone.labels[rows])
        np.testing.assert_array_equal(out.probs[rows], alone.probs[rows])


def test_next_session_receives_exactly_the_undecided_rows(tiny_export_dir, x_test, mid):
    rt = Runtime.open(tiny_export_dir, device="cpu", batch_size=len(x_test), engine="levels")
    seen = {}
    real = rt.run_level

    def spy(dim, rows):
        seen[dim] = rows.copy()
        return real(dim, rows)

    rt.run_level = spy
    out = rt.predict(x_test, thresholds=mid)
    first = rt.predict(x_test, level=16)
    undecided = first.confidence <= mid[0]
    assert 0 < undecided.sum() < len(x_test)
    np.testing.assert_array_equal(seen["32"], x_test[undecided].astype(np.float32))
    assert (out.levels[~undecided] == "16").all()


def test_default_without_calibration_uses_largest_level_and_warns_once(rt, x_test, caplog):
    fresh = Runtime.open(rt.folder, device="cpu")
    a = fresh.predict(x_test[:5])
    fresh.predict(x_test[:5])
    assert (a.levels == "64").all()
    assert caplog.text.count("has no calibration") == 1


def test_empty_batch(rt):
    out = rt.predict(np.zeros((0, 8, 8), np.float32), thresholds=[0.5, 0.5])
    assert out.labels.shape == (0,) and out.probs.shape == (0, 10)


def test_cuda_on_a_machine_without_cuda(tiny_export_dir):
    import onnxruntime as ort

    if "CUDAExecutionProvider" in ort.get_available_providers():
        pytest.skip("this machine has CUDA")
    with pytest.raises(DeviceError, match="CUDAExecutionProvider"):
        Runtime.open(tiny_export_dir, device="cuda")


@pytest.mark.parametrize("bad,fragment", [
    ([[1, 2], [3]], "input rows differ in shape ((2,), (1,))"),
    ([np.zeros((8, 8)), np.zeros((8, 7))], "input rows differ in shape ((8, 8), (8, 7))"),
    ([[1, 2], [3, [4]]], "input rows differ in shape ((2,), ragged list)"),
    (None, "input dtype object cannot be converted to float32"),
    ({"x": 1}, "input dtype object cannot be converted to float32"),
])
def test_inputs_numpy_cannot_make_one_array_get_our_error(rt, bad, fragment):
    """A ragged list is a traceback from numpy (ValueError) unless the runtime catches it."""
    with pytest.raises(InputError) as e:
        rt.predict(bad)
    assert fragment in str(e.value)


def test_auto_on_a_cpu_only_install_is_quiet(tiny_export_dir, caplog):
    import onnxruntime as ort

    if "CUDAExecutionProvider" in ort.get_available_providers():
        pytest.skip("this onnxruntime has the CUDA provider: not a CPU-only install")
    with caplog.at_level("WARNING"):
        rt = Runtime.open(tiny_export_dir)  # device='auto', the default
        rt.predict(np.zeros((2, 8, 8), np.float32), thresholds=[0.5, 0.5])
    assert "CUDA" not in caplog.text and rt.active_providers() == ["CPUExecutionProvider"]


def test_auto_with_the_gpu_package_but_no_gpu_warns_once(tiny_export_dir, caplog,
                                                          monkeypatch):
    """onnxruntime-gpu lists CUDA as available; on a machine whose CUDA libraries are missing
    the session falls back to the CPU, which the user should hear about, once."""
    import matryoshka.runtime.providers as providers

    available = ["CUDAExecutionProvider", "CPUExecutionProvider"]
    monkeypatch.setattr(providers.ort, "get_available_providers", lambda: available)
    with caplog.at_level("WARNING"):
        rt = Runtime.open(tiny_export_dir)
        rt.predict(np.zeros((2, 8, 8), np.float32), thresholds=[0.5, 0.5])
    assert caplog.text.count("onnxruntime-gpu is installed but CUDA did not start") == 1
    assert rt.active_providers()[0] == "CPUExecutionProvider"


@pytest.mark.parametrize("bad,fragment", [
    (np.zeros((3, 8, 7)), "axis 2 must be 8"),
    (np.zeros((8, 8)), "add a batch axis"),
    (np.zeros((2, 8, 8), np.complex64), "cannot be converted"),
    (np.array([["a"] * 8] * 8)[None], "cannot be converted"),
])
def test_bad_inputs(rt, bad, fragment):
    with pytest.raises(InputError, match=fragment):
        rt.predict(bad)


def test_nan_input(rt, x_test):
    x = x_test[:4].astype(np.float32)
    x[2, 3, 3] = np.nan
    with pytest.raises(InputError, match="NaN or inf in 1 row"):
        rt.predict(x)


def test_finite_float64_that_overflows_float32_is_refused(rt, x_test):
    """1e300 is finite in float64 but inf after the cast: the check runs on what runs."""
    x = x_test[:4].astype(np.float64)
    x[1, 0, 0] = 1e300
    with pytest.raises(InputError, match=r"NaN or inf in 1 row\(s\) \(after the conversion to "
                                         "float32"):
        rt.predict(x)


def test_empty_token_sequences_are_refused():
    spec = {"name": "x", "dtype": "int64", "shape": ["batch", "seq"], "kind": "tokens",
            "vocab_size": 10, "max_len": 6}
    with pytest.raises(InputError, match="sequences must hold at least one token"):
        check_input(np.zeros((3, 0), np.int64), spec)


def test_token_ids_are_checked():
    spec = {"name": "x", "dtype": "int64", "shape": ["batch", "seq"], "vocab_size": 10,
            "max_len": 6}
    assert check_input(np.array([[1, 2, 9]], np.int32), spec).dtype == np.int64
    with pytest.raises(InputError, match=r"token ids must be in \[0, 10\)"):
        check_input(np.array([[1, 10]]), spec)
    with pytest.raises(InputError, match="must be integers"):
        check_input(np.array([[1.0, 2.0]]), spec)
    with pytest.raises(InputError, match="exceeds max_len 6"):
        check_input(np.zeros((1, 7), np.int64), spec)


def test_bad_plan_arguments(rt, x_test):
    with pytest.raises(ConfigError, match="need 2 thresholds"):
        rt.predict(x_test, thresholds=[0.5])
    with pytest.raises(ConfigError, match="not in this export"):
        rt.predict(x_test, level=24)
    with pytest.raises(ConfigError, match="either level or thresholds"):
        rt.predict(x_test, level=16, thresholds=[0.5, 0.5])
    with pytest.raises(ConfigError, match="not in this export"):
        rt.predict(x_test, level=[16])


@pytest.mark.parametrize("bad", [["a", 0.5], 0.5, "0.5,0.5", [[0.1], [0.2, 0.3]],
                                 [float("nan"), 0.5]])
def test_bad_thresholds_are_config_errors(rt, x_test, bad):
    with pytest.raises(ConfigError, match="thresholds must"):
        rt.predict(x_test[:3], thresholds=bad)


@pytest.mark.parametrize("kwargs,fragment", [
    ({"threads": 0}, "threads must be a positive integer"),
    ({"threads": 1.5}, "threads must be a positive integer"),
    ({"batch_size": 0}, "batch_size must be a positive integer"),
])
def test_bad_open_arguments_are_config_errors(tiny_export_dir, kwargs, fragment):
    with pytest.raises(ConfigError, match=fragment):
        Runtime.open(tiny_export_dir, device="cpu", **kwargs)


def test_flipped_byte_is_named(tiny_export_dir, tmp_path):
    bad = tmp_path / "export"
    shutil.copytree(tiny_export_dir, bad)
    data = bytearray((bad / "level-0032.onnx").read_bytes())
    data[len(data) // 2] ^= 0x01
    (bad / "level-0032.onnx").write_bytes(bytes(data))
    with pytest.raises(ArtifactError, match="level-0032.onnx does not match the sha256"):
        Runtime.open(bad, device="cpu")


def test_schema_version_is_checked(tiny_export_dir, tmp_path):
    bad = tmp_path / "export"
    shutil.copytree(tiny_export_dir, bad)
    m = json.loads((bad / "manifest.json").read_text())
    m["schema_version"] = 99
    (bad / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(ArtifactError, match="schema_version 99"):
        Runtime.open(bad)


def test_int8_variant(tiny_export_dir, x_test):
    rt8 = Runtime.open(tiny_export_dir, device="cpu", variant="int8")
    fp = Runtime.open(tiny_export_dir, device="cpu")
    a, b = rt8.predict(x_test, level=64), fp.predict(x_test, level=64)
    assert not np.array_equal(a.probs, b.probs), "int8 must be a different graph"
    assert (a.labels == b.labels).mean() > 0.9


@pytest.mark.parametrize("engine", ["levels", "graph"])
def test_threads_give_single_threaded_results(tiny_export_dir, x_test, mid, engine):
    rt = Runtime.open(tiny_export_dir, device="cpu", preload=False, engine=engine)
    rng = np.random.default_rng(0)
    jobs = [[(int(s), int(n)) for s, n in zip(rng.integers(0, 300, 25), rng.integers(1, 60, 25))]
            for _ in range(8)]
    results = [[None] * 25 for _ in range(8)]
    errors = []

    def work(t):
        try:
            for j, (s, n) in enumerate(jobs[t]):
                results[t][j] = rt.predict(x_test[s:s + n], thresholds=mid)
        except Exception as e:  # surfaced below
            errors.append(e)

    threads = [threading.Thread(target=work, args=(t,)) for t in range(8)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    assert not errors
    single = Runtime.open(tiny_export_dir, device="cpu", engine="levels")
    for t in range(8):
        for j, (s, n) in enumerate(jobs[t]):
            ref = single.predict(x_test[s:s + n], thresholds=mid)
            np.testing.assert_array_equal(results[t][j].labels, ref.labels)
            np.testing.assert_array_equal(results[t][j].levels, ref.levels)
            np.testing.assert_array_equal(results[t][j].probs, ref.probs)
    assert len(rt._sessions) == (3 if engine == "levels" else 0)  # the graph holds the levels


def test_missing_export_folder(tmp_path):
    with pytest.raises(MatryoshkaError, match="export folder not found"):
        Runtime.open(tmp_path / "nope")


def test_predict_cli_json_and_errors(tiny_export_dir, tmp_path, x_test):
    from click.testing import CliRunner

    from matryoshka.cli import cli

    np.save(tmp_path / "x.npy", x_test[:6])
    r = CliRunner().invoke(cli, ["predict", str(tiny_export_dir), str(tmp_path / "x.npy"),
                                 "--level", "32", "--device", "cpu", "--json"])
    assert r.exit_code == 0, r.output
    out = json.loads(r.stdout)
    rt = Runtime.open(tiny_export_dir, device="cpu")
    assert out["labels"] == rt.predict(x_test[:6], level=32).labels.tolist()
    assert out["levels"] == ["32"] * 6
    np.save(tmp_path / "bad.npy", x_test[:2, :, :5])
    r = CliRunner().invoke(cli, ["predict", str(tiny_export_dir), str(tmp_path / "bad.npy"),
                                 "--device", "cpu"])
    assert r.exit_code == 2 and r.stderr.startswith("error: input axis 2 must be 8")
    r = CliRunner().invoke(cli, ["predict", str(tiny_export_dir), str(tmp_path / "x.npy"),
                                 "--thresholds", "0.5", "--device", "cpu"])
    assert r.exit_code == 2 and "need 2 thresholds" in r.stderr


def test_a_level_run_in_chunks_gives_the_logits_of_one_run(tiny_export_dir, demo_data):
    rt = Runtime.open(tiny_export_dir, device="cpu")
    x = check_input(demo_data["test"][0][:50], rt.input_spec)
    for level in rt.levels:
        whole = rt.run_level(level, x)
        chunked = rt.run_level_in_chunks(level, x, rows=7)
        assert chunked.shape == whole.shape
        np.testing.assert_allclose(chunked, whole, rtol=0, atol=1e-5)
