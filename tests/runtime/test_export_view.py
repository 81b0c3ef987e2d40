"""matryoshka.runtime.export_view: an export's look-ups, read from its manifest alone (no
session is made)."""

import pytest

from matryoshka.errors import ArtifactError, ConfigError
from matryoshka.runtime.export_view import ExportView
from matryoshka.runtime.manifest import read_manifest


def test_levels_are_named_and_found_by_width_and_their_entries_by_variant(tiny_export_dir):
    manifest = read_manifest(tiny_export_dir)
    fp32, int8 = (ExportView(tiny_export_dir, manifest, v) for v in ("fp32", "int8"))
    assert fp32.levels == ["16", "32", "64"] and fp32.level(32) == "32" == fp32.level("32")
    assert fp32.dim("64") == 64 and fp32.n_classes == 10
    assert (fp32.precision(16), int8.precision(16)) == ("fp32", "int8")
    assert fp32.entry(16)["file"] != int8.entry(16)["file"]
    assert int8.file(16).name == int8.entry(16)["file"] and int8.file(16).exists()
    assert fp32.class_names == [str(i) for i in range(10)] and fp32.tokenizer is None
    assert fp32.temperatures() == [1.0, 1.0, 1.0] and fp32.cascade_levels() == fp32.levels


def test_a_missing_level_or_plan_is_refused_with_what_to_do(tiny_export_dir):
    view = ExportView(tiny_export_dir, read_manifest(tiny_export_dir), "auto")
    with pytest.raises(ConfigError, match="level 48 is not in this export"):
        view.level(48)
    with pytest.raises(ConfigError, match="level True"):
        view.level(True)
    with pytest.raises(ArtifactError, match="matryoshka tune"):
        view.precision(16)


def test_a_calibration_fitted_on_other_graphs_is_refused(tiny_export_dir):
    manifest = read_manifest(tiny_export_dir)
    manifest["calibration"] = {"fp32": {"temperatures": [1, 1, 1], "thresholds": [0.9, 0.9],
                                        "graphs": ["0" * 64] * 3}}
    with pytest.raises(ArtifactError, match="rerun: matryoshka calibrate"):
        ExportView(tiny_export_dir, manifest, "fp32").calibration()
