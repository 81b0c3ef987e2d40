"""The graph engine: the whole cascade in one onnxruntime session over cascade.onnx.

docs/design.md, "The cascade as one graph". One `session.run` per call: level 0, the softmax with
temperatures, the strictly-greater test and every escalation of the undecided rows run inside
the graph. Its answers are bit-identical to the levels engine (runtime/cascade.py). numpy and
onnxruntime only.
"""

from __future__ import annotations

import json

import numpy as np
import onnxruntime as ort

from matryoshka.errors import ArtifactError
from matryoshka.runtime.cascade import Prediction
from matryoshka.runtime.providers import check_active

INPUTS = ["temperatures", "thresholds"]  # after the model's own input; both have defaults
FETCH = ["labels", "probs", "confidence", "level_index"]
ROW_CHECK = "row_check"  # float inputs: NaN exactly in the rows that hold NaN or inf


class CascadeGraph:
    """A loaded cascade.onnx: `run(x)` at its default (calibrated) thresholds and
    temperatures, or at given ones."""

    def __init__(self, data: bytes, entry: dict, input_name: str, options: ort.SessionOptions,
                 providers: list[str], device: str, variant: str):
        name = entry["file"]
        options.log_severity_level = 3  # the defaults are initializers that are also inputs
        try:
            self.session = ort.InferenceSession(data, options, providers=providers)
        except Exception as e:  # onnxruntime raises its own untyped errors
            raise ArtifactError(f"onnxruntime cannot load {name}: {e}") from None
        self.active = check_active(self.session, device, name)
        self.levels: list[str] = list(entry["levels"])
        self._names = np.asarray(self.levels)
        self._input = input_name
        self._check(name, variant)
        outputs = [o.name for o in self.session.get_outputs()]
        self._fetch = FETCH + ([ROW_CHECK] if ROW_CHECK in outputs else [])

    def _check(self, name: str, variant: str) -> None:
        """The graph must say it is this variant's cascade over these levels, and take the
        manifest's input and the two overridable vectors."""
        meta = self.session.get_modelmeta().custom_metadata_map
        expected = {"matryoshka.graph": "cascade", "matryoshka.variant": variant,
                    "matryoshka.levels": ",".join(self.levels)}
        for key, want in expected.items():
            if meta.get(key) != want:
                raise ArtifactError(f"{name} is listed as the {variant} cascade over levels "
                                    f"{', '.join(self.levels)} but the graph's own {key} "
                                    f"metadata says {meta.get(key)}; the folder was changed "
                                    "by hand")
        # onnxruntime lists an input with a default (an initializer) as overridable
        inputs = [i.name for i in self.session.get_inputs()] + sorted(
            i.name for i in self.session.get_overridable_initializers())
        if inputs[:1] != [self._input]:
            raise ArtifactError(f"{name} takes the input(s) {inputs[:1]} but manifest.json says "
                                f"{self._input!r}")
        if inputs[1:] != INPUTS:
            raise ArtifactError(f"{name} takes the inputs {inputs}; a cascade graph takes "
                                f"{[self._input, *INPUTS]}")

    @property
    def defaults(self) -> dict:
        """The thresholds and temperatures stored in the graph (its metadata's copy)."""
        meta = self.session.get_modelmeta().custom_metadata_map
        return {k: json.loads(meta[f"matryoshka.{k}"]) for k in ("thresholds", "temperatures")}

    def run(self, x: np.ndarray, thresholds=None, temperatures=None) -> tuple[Prediction, int]:
        """The cascade on x (already checked, but for NaN and inf), and how many rows hold NaN
        or inf (the caller raises `inputs.nonfinite_error` for them, after its last chunk)."""
        feed = {self._input: x}
        if thresholds is not None:
            feed["thresholds"] = np.asarray(thresholds, np.float32)
            feed["temperatures"] = np.asarray(temperatures, np.float32)
        out = self.session.run(self._fetch, feed)
        # row_check is 0 or NaN per row: one sum tells whether any row holds NaN or inf
        bad = int(np.isnan(out[4]).sum()) if len(out) > len(FETCH) and np.isnan(
            out[4].sum()) else 0
        return Prediction(out[0], out[1], out[2], self._names[out[3]]), bad
