"""scripts/text_report.py: the demo's side-by-side table of the baseline, each checkpoint's
levels and each export's calibrated cascade; a missing file is one error line, exit 2."""

import importlib.util
import json
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "text_report.py"


@pytest.fixture(scope="module")
def report():
    spec = importlib.util.spec_from_file_location("text_report", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _write(path: Path, record: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(record))


def _checkpoint(folder: Path, nesting: str | None) -> None:
    levels = [3, 12] if nesting else [64, 128]
    _write(folder / "config.json", {"nesting": nesting} if nesting else {})
    _write(folder / "metrics.json", {
        "levels": levels, "params": {str(k): 1_500_000 * (i + 1) for i, k in enumerate(levels)},
        "flops_per_sample": {str(k): 349_000_000 * (i + 1) for i, k in enumerate(levels)},
        "test_accuracy": {str(k): 0.95 + 0.01 * i for i, k in enumerate(levels)}})


def test_the_table_names_head_levels_and_the_cascades_cost(tmp_path, report, capsys):
    _write(tmp_path / "baseline.json", {"test_accuracy": 0.9763})
    _checkpoint(tmp_path / "scratch", None)
    _checkpoint(tmp_path / "nested", "heads")
    _write(tmp_path / "export" / "manifest.json", {"calibration": {"fp32": {
        "levels": ["h3", "h12"], "epsilon": 0.02,
        "test": {"accuracy": 0.9746, "relative_cost": 0.281}}}})
    rc = report.main(["--baseline", str(tmp_path / "baseline.json"),
                      "--model", f"scratch={tmp_path / 'scratch'}",
                      "--model", f"nested={tmp_path / 'nested'}",
                      "--cascade", f"nested={tmp_path / 'export'}"])
    assert rc == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split() == ["model", "level", "params", "MFLOPs", "test", "acc"]
    assert lines[1].startswith("TF-IDF + logistic regression") and lines[1].endswith("0.9763")
    assert lines[2].split()[:2] == ["scratch", "64"] and lines[3].split()[1] == "128"
    assert lines[4].split()[:5] == ["nested", "h3", "1.5", "M", "349"]
    assert lines[5].split()[1] == "h12" and lines[5].endswith("0.9600")
    assert "calibrated cascade (fp32, eps 0.02)" in lines[6] and "h3+h12" in lines[6]
    assert "0.281 of the largest" in lines[6] and lines[6].endswith("0.9746")


def test_a_missing_file_is_one_error_line(tmp_path, report, capsys):
    rc = report.main(["--model", f"x={tmp_path / 'nowhere'}"])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and err[0].startswith("error: cannot read ")
