"""The look-ups of one export folder in one variant: its levels by name or width, each
level's precision, manifest entry and graph, the tokenizer, the class names and the
calibration fitted on exactly these graphs.

docs/design.md, "The export folder". No sessions: `Runtime` adds them, and predicts.
"""

from __future__ import annotations

from pathlib import Path

from matryoshka.errors import ArtifactError, ConfigError
from matryoshka.runtime.manifest import level_name, read_named
from matryoshka.runtime.providers import folds_dequantize
from matryoshka.runtime.reading import Reading
from matryoshka.runtime.text import load_tokenizer


class ExportView:
    """An export folder's manifest, read as a runtime in `variant` (fp32, int8 or auto)
    runs it."""

    def __init__(self, folder: Path, manifest: dict, variant: str):
        self.folder, self.manifest, self.variant = folder, manifest, variant
        self._entries = {level_name(lv): lv for lv in manifest["levels"]}
        self.levels: list[str] = list(self._entries)  # names, in order of FLOPs
        self.input_spec: dict = manifest["input"]
        self.n_classes: int = manifest["output"]["shape"][-1]
        self._tokenizer = None
        self._checked = None  # the calibration record last found to match the graphs

    def level(self, level: str | int) -> str:
        """The name of a level of this export, given its name or (a trained level) its width."""
        name = str(level) if not isinstance(level, bool) else None
        if name not in self._entries:
            raise ConfigError(f"level {level} is not in this export (levels: "
                              f"{', '.join(self.levels)})")
        return name

    def dim(self, level: str | int) -> int:
        """The residual width of a level."""
        return int(self._entries[self.level(level)]["dim"])

    def precision(self, level: str | int) -> str:
        """fp32 or int8: the precision this runtime runs a level at. A bundle's levels
        (`matryoshka bundle`) say it: its one graph set is the default one, in either."""
        if self.variant == "fp32":
            return self._entries[self.level(level)].get("precision", "fp32")
        if self.variant != "auto":
            return self.variant
        plan = self.manifest.get("plan")
        if plan is None:
            raise ArtifactError(f"{self.folder} has no precision plan for variant 'auto'; "
                                f"make one with: matryoshka tune {self.folder}")
        return plan["precisions"][self.levels.index(self.level(level))]

    def entry(self, level: str | int) -> dict:
        """The manifest entry (file, sha256) of a level in this runtime's variant."""
        name = self.level(level)
        entry = self._entries[name]
        if self.variant == "fp32" or self.precision(name) == "fp32":
            return entry
        if "int8" not in entry:
            raise ArtifactError(f"{self.folder} has no int8 graph for level {name}; make one with "
                                "mexport --quantize dynamic or matryoshka calibrate --int8 "
                                "static")
        return entry["int8"]

    def fold_dequantize(self, level: str | int) -> bool:
        """Whether this level's graph in this runtime's variant is loaded with its
        DequantizeLinear of constants folded (a weight8 graph: providers.folds_dequantize)."""
        return self._folds(self.entry(level))

    def cascade_folds_dequantize(self, levels: list[str]) -> bool:
        """Whether a cascade graph over these levels is loaded with its DequantizeLinear of
        constants folded: where any of its levels' graphs is (one session holds them all)."""
        return any(self.fold_dequantize(level) for level in levels)

    def _folds(self, entry: dict) -> bool:
        """Whether the graph of this manifest entry (a level's, or a cascade graph's: its
        levels' method) wants its DequantizeLinear of constants folded at load."""
        if "method" not in entry and "levels" in entry:  # a cascade graph of this variant
            return self.cascade_folds_dequantize(entry["levels"])
        return folds_dequantize(entry.get("method") or entry.get("int8_method"))  # a bundle's

    def file(self, level: str | int) -> Path:
        return self.folder / self.entry(level)["file"]

    def graph_bytes(self, level: str | int) -> bytes:
        """The graph of a level, read once and checked against the manifest's sha256."""
        return read_named(self.folder, self.entry(level))

    @property
    def tokenizer(self):
        """The export's tokenizer (text exports; needs matryoshka[text]), loaded on first use
        from bytes checked against the manifest's sha256; None for other exports."""
        if self._tokenizer is None and self.manifest.get("tokenizer"):
            self._tokenizer = load_tokenizer(read_named(self.folder, self.manifest["tokenizer"]),
                                             Reading.of(self.manifest["input"]))
        return self._tokenizer

    @property
    def class_names(self) -> list[str]:
        """The name of each class (the data's labels), '0' .. 'n-1' where none were given."""
        return list(self.manifest["output"].get("labels")
                    or [str(i) for i in range(self.n_classes)])

    # -- calibration ---------------------------------------------------------------------------
    def calibration(self) -> dict | None:
        """The calibration record of this variant, or None. It must have been fitted on
        exactly the graphs this runtime runs (its `graphs` list of sha256), or the guarantee
        would not hold for what runs: anything else is refused."""
        cal = (self.manifest.get("calibration") or {}).get(self.variant)
        if cal is self._checked:  # predict asks on every call; the manifest does not change
            return cal
        if cal is not None and "graphs" in cal:  # records written before the list are kept
            running = [self.entry(d)["sha256"] for d in self.levels]
            if cal["graphs"] != running:
                changed = [d for d, a, b in zip(self.levels, cal["graphs"], running) if a != b]
                changed = changed or ["the list of levels"]
                raise ArtifactError(
                    f"the {self.variant} calibration of {self.folder} was fitted on other "
                    f"graphs than the ones it would run (level(s) "
                    f"{', '.join(map(str, changed))} changed); rerun: matryoshka calibrate "
                    f"{self.folder} --variant {self.variant}")
        self._checked = cal
        return cal

    def cascade_levels(self) -> list[str]:
        """The levels of the calibrated cascade, in order: those `calibrate --cascade` chose
        (by default every level)."""
        cal = self.calibration()
        return list(cal.get("levels", self.levels)) if cal else list(self.levels)

    def temperatures(self) -> list[float]:
        cal = self.calibration()
        return list(cal["temperatures"]) if cal else [1.0] * len(self.levels)
