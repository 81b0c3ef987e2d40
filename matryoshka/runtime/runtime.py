"""Runtime: open an export folder, load each level's graph on the asked-for provider, predict.

docs/design.md, "Data flow" and "Escalation and calibration". numpy and onnxruntime only:
applications install it with `pip install matryoshka[cpu]` (or `[gpu]`), never torch.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterable, Iterator
from pathlib import Path

import numpy as np
import onnxruntime as ort

from matryoshka.errors import ArtifactError, ConfigError
from matryoshka.runtime.cascade import Prediction, concat, empty, run_cascade
from matryoshka.runtime.export_view import ExportView
from matryoshka.runtime.graph import CascadeGraph
from matryoshka.runtime.inputs import check_input, nonfinite_error
from matryoshka.runtime.manifest import MANIFEST, VARIANTS, read_manifest, read_named
from matryoshka.runtime.providers import (
    CUDA,
    check_active,
    check_threads,
    requested_providers,
    session_options,
)
from matryoshka.runtime.records import select_level
from matryoshka.runtime.text import check_texts, predict_window, windows

log = logging.getLogger(__name__)
DEFAULT_BATCH = 256  # rows per session.run in predict: bounds the activations' memory
CHUNK_ROWS = 64  # rows per run where a whole split is scored (calibrate, tune, the graph check)
# How the cascade runs: "graph", one session over cascade.onnx (one session.run per call);
# "levels", one session per level driven from Python; "auto", the graph where the export has
# one for this variant (measured faster at every batch size), else the levels.
ENGINES = ("auto", "graph", "levels")


def _is_texts(x) -> bool:
    """A list (or tuple) whose items are meant as strings: the text path of predict."""
    if isinstance(x, str):
        return True  # refused there with a clear message: predict([text])
    return isinstance(x, (list, tuple)) and len(x) > 0 and any(isinstance(t, str) for t in x)


def _commit_id(folder: Path) -> tuple[int, int] | None:
    """Which manifest.json is committed now: every commit renames a new file into place."""
    try:
        st = (folder / MANIFEST).stat()
    except OSError:
        return None
    return st.st_ino, st.st_mtime_ns


class Runtime(ExportView):
    """The graphs of one export folder, ready to predict.

    >>> rt = Runtime.open("artifacts/demo/export", device="cpu")  # doctest: +SKIP
    >>> out = rt.predict(x, level=128)                            # doctest: +SKIP
    >>> out.labels, out.levels                                    # doctest: +SKIP

    Levels are named: a trained level by its width ('64'), a Mix'n'Match sub-model by the name
    it was exported under; `levels` lists them in order of FLOPs, and a width is accepted
    wherever a level is asked for.
    """

    def __init__(self, folder: Path, manifest: dict, device: str, providers: list[str],
                 threads: int | None, variant: str, batch_size: int = DEFAULT_BATCH):
        super().__init__(folder, manifest, variant)
        self.device = device
        self.engine = "levels"  # from_manifest sets "graph" once cascade.onnx is loaded
        self._requested = "levels"
        self._graph: CascadeGraph | None = None
        self._providers, self._threads = providers, threads
        self.batch_size = batch_size
        self._sessions: dict[str, ort.InferenceSession] = {}
        self._active: dict[str, list[str]] = {}
        self._lock = threading.Lock()
        self._warned = False

    @classmethod
    def open(cls, folder: str | Path, device: str = "auto", threads: int | None = None,
             preload: bool = True, variant: str = "fp32",
             batch_size: int = DEFAULT_BATCH, engine: str = "auto") -> Runtime:
        """Open an export folder: check its manifest and every graph's sha256, then load.

        device: "cpu", "cuda" (CUDA must really be active, or MatryoshkaError) or "auto"
        (CUDA when it is really active, else the CPU with one warning).
        preload=False creates each level's session on first use (checking its sha256 again,
        on the very bytes it loads). batch_size: rows per session.run in predict.
        engine: "graph" runs the cascade through cascade.onnx, one session.run per call;
        "levels" through one session per level; "auto" (the default) the graph where the
        export has one for this variant. Both give bit-identical predictions.

        >>> rt = Runtime.open("artifacts/demo/export", device="cpu")  # doctest: +SKIP
        >>> rt.levels                                                 # doctest: +SKIP
        ['64', '128', '256', '512']
        """
        folder = Path(folder)
        seen = _commit_id(folder)  # before the read: a commit after it shows as a change
        manifest = read_manifest(folder)
        try:
            rt = cls.from_manifest(folder, manifest, device, threads, preload, variant,
                                   batch_size, engine)
            rt.calibration()  # a calibration fitted on other graphs fails the open
            return rt
        except ArtifactError:
            # A writer may have committed a new manifest (a new file: os.replace) and deleted
            # the files of the one we read: then read the new one before blaming the folder.
            if _commit_id(folder) == seen:
                raise
            return cls.from_manifest(folder, read_manifest(folder), device, threads, preload,
                                     variant, batch_size, engine)

    @classmethod
    def from_manifest(cls, folder: Path, manifest: dict, device: str = "auto",
                      threads: int | None = None, preload: bool = True,
                      variant: str = "fp32", batch_size: int = DEFAULT_BATCH,
                      engine: str = "levels") -> Runtime:
        """A runtime over a manifest already read and checked (a writer's uncommitted one)."""
        if variant not in VARIANTS:
            raise ConfigError(f"variant must be one of {', '.join(VARIANTS)}; got {variant!r}")
        if engine not in ENGINES:
            raise ConfigError(f"engine must be one of {', '.join(ENGINES)}; got {engine!r}")
        check_threads(threads)
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise ConfigError(f"batch_size must be a positive integer; got {batch_size!r}")
        providers = requested_providers(device)
        rt = cls(Path(folder), manifest, device, providers, threads, variant, batch_size)
        rt._requested = engine
        entry = (manifest.get("cascade") or {}).get(variant)
        if engine == "graph" and entry is None:
            raise ArtifactError(
                f"{rt.folder} has no {variant} cascade graph (exports made before cascade.onnx "
                f"have none); add it with: matryoshka calibrate {rt.folder} --variant "
                f"{variant} (or mexport --force), or open it with engine='levels'")
        if engine != "levels" and entry is not None:
            rt._load_graph(entry)
        for name in rt.levels:
            if preload and rt._graph is None:
                rt._session(name)
            else:
                rt.graph_bytes(name)
        if manifest.get("tokenizer"):
            read_named(rt.folder, manifest["tokenizer"])  # a wrong tokenizer fails the open
        if device == "auto" and CUDA in providers:
            # onnxruntime-gpu is installed, so the user expects the GPU: say when it did not
            # start (a CPU-only onnxruntime has no CUDA provider, and auto is then quiet)
            active = rt.active_providers()
            if not active or active[0] != CUDA:
                log.warning("device='auto': onnxruntime-gpu is installed but CUDA did not "
                            "start (active: %s), so this runs on the CPU; the CUDA or cuDNN "
                            "libraries are probably missing", ", ".join(active))
        return rt

    # -- files and sessions -------------------------------------------------------------------
    def _load_graph(self, entry: dict) -> None:
        """Load cascade.onnx from bytes checked against the manifest's sha256."""
        device = "cuda" if self.device == "cuda" else "cpu"
        graph = CascadeGraph(read_named(self.folder, entry), entry, self.input_spec["name"],
                             session_options(self._threads, self._folds(entry)),
                             self._providers, device,
                             self.variant)
        cal = (self.manifest.get("calibration") or {}).get(self.variant) or {}
        names = list(self._entries)
        if cal.get("thresholds") is not None and (
                entry["levels"] != list(cal.get("levels", names))
                or entry["thresholds"] != list(cal["thresholds"])):
            why = (f"{entry['file']} does not hold the {self.variant} calibration of "
                   f"manifest.json; rebuild it with: matryoshka calibrate {self.folder} "
                   f"--variant {self.variant}")
            if self._requested == "graph":
                raise ArtifactError(why)
            log.warning("%s; running one session per level meanwhile", why)
            return
        self._graph = graph
        self.engine = "graph"

    def _session(self, level: str | int) -> ort.InferenceSession:
        session = self._sessions.get(level)
        if session is not None:
            return session
        level = self.level(level)
        with self._lock:  # one creation per level, however many threads ask at once
            session = self._sessions.get(level)
            if session is None:
                name = self.entry(level)["file"]
                data = self.graph_bytes(level)  # the bytes hashed are the bytes loaded
                options = session_options(self._threads, self._folds(self.entry(level)))
                try:
                    session = ort.InferenceSession(data, options, providers=self._providers)
                except Exception as e:  # onnxruntime raises its own untyped errors
                    raise ArtifactError(f"onnxruntime cannot load {name}: {e}") from None
                self._check_graph(session, level, name)
                device = "cuda" if self.device == "cuda" else "cpu"
                self._active[level] = check_active(session, device, name)
                self._sessions[level] = session
        return session

    def _check_graph(self, session: ort.InferenceSession, level: str, name: str) -> None:
        """The graph must say it is this level (its width, and its name where it records one)
        and take the manifest's input."""
        meta = session.get_modelmeta().custom_metadata_map
        expected = {"matryoshka.dim": str(self.dim(level))}
        if "matryoshka.name" in meta:  # graphs of schema 1 exports carry no name
            expected["matryoshka.name"] = level
        for key, want in expected.items():
            if meta.get(key) != want:
                raise ArtifactError(f"{name} is listed as level {level} but the graph's own "
                                    f"{key} metadata says {meta.get(key)}; the folder was "
                                    "changed by hand")
        inputs = [i.name for i in session.get_inputs()]
        if inputs != [self.input_spec["name"]]:
            raise ArtifactError(f"{name} takes the input(s) {inputs} but manifest.json says "
                                f"{self.input_spec['name']!r}")

    @property
    def providers(self) -> dict[str, list[str]]:
        """The providers each level's session really runs on (loads every level)."""
        for level in self.levels:
            self._session(level)
        return dict(self._active)

    def active_providers(self) -> list[str]:
        """The providers the cascade really runs on: cascade.onnx's session under the graph
        engine, else the largest level's."""
        if self._graph is not None:
            return list(self._graph.active)
        return self.providers[self.levels[-1]]

    def run_level(self, level: str | int, x: np.ndarray) -> np.ndarray:
        """Raw logits of a level on an already checked input."""
        session = self._session(level)
        name = self.input_spec["name"]
        if self._active[str(level)][0] == CUDA:
            # io-binding: ORT copies the input to the device once and writes the output
            # straight into host memory it owns, instead of staging both through run().
            binding = session.io_binding()
            binding.bind_cpu_input(name, x)
            binding.bind_output(session.get_outputs()[0].name, "cpu")
            session.run_with_iobinding(binding)
            return binding.copy_outputs_to_cpu()[0]
        return session.run(None, {name: x})[0]

    def run_level_in_chunks(self, level: str | int, x: np.ndarray,
                            rows: int = CHUNK_ROWS) -> np.ndarray:
        """Raw logits of a level on an already checked input, `rows` rows per run: the same
        numbers as one run, with the activations' memory (which onnxruntime's arena keeps at
        its peak) bounded by the chunk, whatever the number of rows."""
        if len(x) <= rows:
            return self.run_level(level, x)
        return np.concatenate([self.run_level(level, x[i:i + rows])
                               for i in range(0, len(x), rows)])

    def select_level(self, budget_ms: float, batch: int = 1, percentile: str = "p90") -> str:
        """The largest level (by FLOPs: a trained level or a mix) whose latency measured by
        `matryoshka bench` on this device and provider fits budget_ms.

        >>> rt.select_level(5.0, batch=1, percentile="p90")  # doctest: +SKIP
        '256'
        """
        return select_level(self.folder, self.levels, self.providers[self.levels[-1]][0],
                            budget_ms, batch, percentile, self.variant, self._threads)

    # -- prediction ---------------------------------------------------------------------------
    def predict(self, x, level: str | int | None = None,
                thresholds: list[float] | None = None) -> Prediction:
        """Predict a batch, in chunks of `batch_size` rows (the same answers as one call,
        with memory bounded by the chunk and not by the batch).

        - level=name (or a trained level's width): run that one level.
        - thresholds=[t_1..t_{k-1}]: the cascade with these thresholds.
        - neither: the calibrated cascade (over the levels calibrate chose) when the manifest
          has one, else the largest level.

        x is an array as the graphs take it, or, for an export with a tokenizer, a list of
        strings: they are tokenized exactly as in training, a window of text.TEXT_WINDOW texts at a
        time (`predict_texts` streams any iterable the same way), sorted by length into
        batches of `batch_size` (a short text never pays for the longest one), and answered
        in input order.

        >>> out = rt.predict(x, thresholds=[0.9, 0.9, 0.9])  # doctest: +SKIP
        >>> out.labels, out.probs, out.confidence, out.levels  # doctest: +SKIP
        >>> rt.predict(["free money now!!!", "lunch at noon?"]).labels  # doctest: +SKIP
        """
        if level is not None and thresholds is not None:
            raise ConfigError("give either level or thresholds, not both")
        if _is_texts(x) or (self.manifest.get("tokenizer") and isinstance(x, (list, tuple))
                            and len(x) == 0):
            return self._predict_texts(x, level, thresholds)
        if self._graph is not None and level is None and self._runs_on_graph(thresholds):
            # the graph reports NaN and inf rows itself: no pass over x here
            return self._predict_graph(check_input(x, self.input_spec, finite=False),
                                       thresholds)
        x = check_input(x, self.input_spec)
        temps = self.temperatures()
        if level is not None:
            level = self.level(level)
            dims, thr, temps = [level], [], [temps[self.levels.index(level)]]
        elif thresholds is not None:
            dims, thr = self.levels, self._check_thresholds(thresholds)
        else:
            dims, thr, temps = self._default_plan(temps)
        if len(x) == 0:
            return empty(self.n_classes, self.levels)
        b = self.batch_size
        return concat([run_cascade(x[i:i + b], dims, thr, temps, self.run_level)
                       for i in range(0, len(x), b)])

    def _runs_on_graph(self, thresholds) -> bool:
        """Whether cascade.onnx answers this call: at its defaults when calibrated thresholds
        exist (uncalibrated, the largest level alone is cheaper than a graph that escalates
        every row to it, unless engine='graph' was asked for), or at given thresholds when
        the graph runs every level."""
        if thresholds is not None:
            return self._graph.levels == self.levels
        cal = self.calibration()
        return self._requested == "graph" or bool(cal and cal.get("thresholds") is not None)

    def _predict_graph(self, x: np.ndarray, thresholds) -> Prediction:
        thr = temps = None
        if thresholds is not None:
            thr, temps = self._check_thresholds(thresholds), self.temperatures()
        else:
            self._default_plan(self.temperatures())  # its warning, when uncalibrated
        if len(x) == 0:
            return empty(self.n_classes, self.levels)
        b, parts, bad = self.batch_size, [], 0
        for i in range(0, len(x), b):
            part, n_bad = self._graph.run(x[i:i + b], thr, temps)
            parts.append(part)
            bad += n_bad
        if bad:
            raise nonfinite_error(bad)
        return concat(parts)

    def _predict_texts(self, texts, level, thresholds) -> Prediction:
        self._need_tokenizer()
        texts = check_texts(texts)  # a string or a non-list is refused before any work
        parts = list(self.predict_texts(texts, level, thresholds))
        return concat(parts) if parts else empty(self.n_classes, self.levels)

    def predict_texts(self, texts: Iterable[str], level: str | int | None = None,
                      thresholds: list[float] | None = None,
                      window: int | None = None) -> Iterator[Prediction]:
        """Predict a stream of texts (any iterable: a list, a generator over a file's lines),
        yielding one Prediction per `window` texts [text.TEXT_WINDOW], in input order. Only
        one window is tokenized and held at a time (text.windows), so memory stays flat in
        the number of texts; inside a window, texts are sorted by length into batches of
        `batch_size` (text.predict_window). The answers are those of `predict` on the whole
        list.

        >>> with open("mails.txt") as f:                                    # doctest: +SKIP
        ...     for out in rt.predict_texts(line for line in f if line.strip()):
        ...         print(out.labels)
        """
        self._need_tokenizer()
        for start, chunk in windows(texts, window):
            yield predict_window(self.predict, self.tokenizer, chunk, start, self.batch_size,
                                 self.n_classes, self.levels, level, thresholds,
                                 pad_id=self.input_spec.get("pad_id", 0))

    def _need_tokenizer(self) -> None:
        if not self.manifest.get("tokenizer"):
            raise ConfigError(f"{self.folder} has no tokenizer.json, so it takes token ids, "
                              "not strings; export a model trained on raw text")

    def _check_thresholds(self, thresholds) -> list[float]:
        if isinstance(thresholds, (str, bytes)) or not hasattr(thresholds, "__len__"):
            raise ConfigError(f"thresholds must be a list of numbers; got {thresholds!r}")
        try:
            thr = [float(t) for t in thresholds]
        except (TypeError, ValueError):
            raise ConfigError(f"thresholds must be a list of numbers; got {thresholds!r}"
                              ) from None
        if len(thr) != len(self.levels) - 1:
            raise ConfigError(f"need {len(self.levels) - 1} thresholds, one per level but the "
                              f"last; got {len(thr)}")
        if any(not 0.0 <= t <= 1.0 for t in thr):  # NaN fails this too
            raise ConfigError(f"thresholds must lie in [0, 1]; got {thr}")
        return thr

    def _default_plan(self, temps: list[float]) -> tuple[list[str], list[float], list[float]]:
        cal = self.calibration()
        if cal and cal.get("thresholds") is not None:
            levels = self.cascade_levels()
            return levels, list(cal["thresholds"]), [temps[self.levels.index(n)]
                                                     for n in levels]
        if not self._warned:
            with self._lock:
                if not self._warned:
                    self._warned = True
                    why = ("its calibration certified no thresholds" if cal else
                           "it has no calibration (run `matryoshka calibrate`)")
                    log.warning("%s: %s; predicting with the largest level %s", self.folder,
                                why, self.levels[-1])
        return [self.levels[-1]], [], [temps[-1]]
