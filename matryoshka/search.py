"""`matryoshka search`: score Mix'n'Match sub-models of a checkpoint on the validation split and
keep the accuracy-vs-FLOPs Pareto frontier, the mixes worth exporting between the levels.

docs/design.md, "Sub-models between the levels (Mix'n'Match)". The walks (`greedy_walk`,
`exhaustive_specs`), `pareto` and `pick_best` are pure; `search` loads, scores and writes
search.json, which `mexport --from-search` reads back through `load_picks`. The test split is
never read: it is kept for the report. The table and the plot are in matryoshka.search_report.
"""

from __future__ import annotations

import datetime as _dt
import itertools
import logging
import os
from collections.abc import Callable, Iterator, Sequence
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from matryoshka.data.fit import check_data_fits
from matryoshka.errors import ArtifactError, ConfigError, DataError, MissingArtifactError
from matryoshka.io import read_json_object, write_json_atomic
from matryoshka.model import MatryoshkaConfig, MatryoshkaTransformer, Spec, flops_per_sample
from matryoshka.model.config import random_spec
from matryoshka.search_report import plot_beside

log = logging.getLogger(__name__)
SCHEMA_VERSION = 1
SEARCH_METHODS = ("greedy", "exhaustive", "random")
MAX_CANDIDATES = 5000  # exhaustive refuses beyond this many specs
RANDOM_CANDIDATES = 24  # random draws this many specs unless told
SEARCH_JSON = "search.json"


# -- scoring -----------------------------------------------------------------------------------
@torch.no_grad()
def spec_accuracy(model: MatryoshkaTransformer, x: np.ndarray, y: np.ndarray, spec: Spec,
             batch: int = 512) -> float:
    """Accuracy of `model` run at `spec` on (x, y), in eval mode."""
    if len(y) == 0:
        raise DataError("cannot score a sub-model on an empty split")
    was = model.training
    model.eval()
    try:
        xt, yt = torch.as_tensor(x), torch.as_tensor(y, dtype=torch.long)
        correct = sum(int((model(xt[i:i + batch], level=spec).argmax(-1) == yt[i:i + batch])
                          .sum()) for i in range(0, len(yt), batch))
    finally:
        model.train(was)
    return correct / len(yt)


class Evaluations:
    """Accuracy by spec, each spec scored once; `accuracy` keeps the order of scoring."""

    def __init__(self, score: Callable[[Spec], float],
                 on_new: Callable[[Spec], None] | None = None):
        self.score, self.on_new = score, on_new
        self.accuracy: dict[Spec, float] = {}

    def __call__(self, spec: Spec) -> float:
        if spec not in self.accuracy:
            self.accuracy[spec] = float(self.score(spec))
            if self.on_new is not None:
                self.on_new(spec)
        return self.accuracy[spec]


def spec_params(model: MatryoshkaTransformer, spec: Spec) -> int:
    """Parameters of the standalone model of `spec`: count_params(extract_level(model, spec)),
    counted from the slices without copying them."""
    source = dict(model.named_parameters())
    return sum(source[src][sl].numel() for src, sl in model.view(spec).values())


# -- the walks (pure) --------------------------------------------------------------------------
def granularities(config: MatryoshkaConfig) -> tuple[list[int], list[int]]:
    """The trained FFN widths and head counts, smallest first: what a layer may use."""
    return config.ffn_widths(), config.head_counts()


def narrowings(config: MatryoshkaConfig, spec: Spec) -> list[Spec]:
    """Every spec one notch narrower than `spec`: one layer's FFN width or head count moved to
    the next smaller trained granularity (layer by layer, FFN before heads)."""
    widths, counts = granularities(config)
    out = []
    for i in range(config.n_layers):
        for key, steps in (("ffn", widths), ("heads", counts)):
            values = getattr(spec, key)
            k = steps.index(values[i])
            if k:
                out.append(replace(spec, **{key: values[:i] + (steps[k - 1],) + values[i + 1:]}))
    return out


def greedy_walk(config: MatryoshkaConfig, accuracy: Callable[[Spec], float]) -> list[Spec]:
    """Walk down from every trained level; return the specs walked through, in order.

    From a level's own spec (its residual width `dim` stays fixed), each step scores every
    one-notch narrowing (`narrowings`) with `accuracy` and moves to the one that loses the
    least accuracy per FLOP saved, (acc(now) - acc(next)) / (flops(now) - flops(next)); on a
    tie, the one saving more FLOPs, then the first. The walk ends when every layer's FFN width
    and head count is at the smallest trained granularity. Pass an `Evaluations` so that no
    spec is scored twice (the current spec is asked for again at every step).
    """
    path = []
    for dim in config.levels:
        spec = config.spec(dim)
        accuracy(spec)
        path.append(spec)
        while moves := narrowings(config, spec):
            now_acc, now_flops = accuracy(spec), flops_per_sample(config, spec)

            def cost(s: Spec, now_acc=now_acc, now_flops=now_flops) -> tuple[float, int]:
                saved = now_flops - flops_per_sample(config, s)
                return (now_acc - accuracy(s)) / saved, -saved

            spec = min(moves, key=cost)
            path.append(spec)
    return path


def exhaustive_count(config: MatryoshkaConfig) -> int:
    widths, counts = granularities(config)
    return len(config.dims()) * (len(widths) * len(counts)) ** config.n_layers


def exhaustive_specs(config: MatryoshkaConfig) -> Iterator[Spec]:
    """Every spec: each trained dim with every FFN width and head count in every layer."""
    widths, counts = granularities(config)
    n = config.n_layers
    for dim in config.dims():
        for ffn in itertools.product(widths, repeat=n):
            for heads in itertools.product(counts, repeat=n):
                yield Spec(dim, ffn, heads)


def random_specs(config: MatryoshkaConfig, count: int, seed: int = 0) -> list[Spec]:
    """`count` distinct specs drawn uniformly (as schedule mix draws them in training), none
    of them a trained level; all the others when the space holds fewer. Seeded: the same
    draws every run."""
    rng = np.random.default_rng(seed)
    levels = {config.spec(dim) for dim in config.levels}
    want = min(count, exhaustive_count(config) - len(levels))
    drawn: dict[Spec, None] = {}
    while len(drawn) < want:
        spec = random_spec(config, rng)
        if spec not in levels:
            drawn.setdefault(spec)
    return list(drawn)


def run_method(config: MatryoshkaConfig, accuracy: Callable[[Spec], float],
               method: str = "greedy", max_candidates: int | None = None) -> None:
    """Score the candidates of `method` with `accuracy` (an `Evaluations` records them), the
    trained levels always among them. random scores `max_candidates` draws
    [RANDOM_CANDIDATES]; exhaustive refuses more specs than `max_candidates`
    [MAX_CANDIDATES]."""
    _check_method(config, method, max_candidates)
    if method == "greedy":
        greedy_walk(config, accuracy)
        return
    for dim in config.levels:
        accuracy(config.spec(dim))
    specs = (random_specs(config, max_candidates or RANDOM_CANDIDATES) if method == "random"
             else exhaustive_specs(config))
    for spec in specs:
        accuracy(spec)


def _check_method(config: MatryoshkaConfig, method: str, max_candidates: int | None) -> None:
    if method not in SEARCH_METHODS:
        raise ConfigError(f"--method must be one of {', '.join(SEARCH_METHODS)}; got {method!r}")
    max_candidates = max_candidates or MAX_CANDIDATES
    if method == "exhaustive" and exhaustive_count(config) > max_candidates:
        widths, counts = granularities(config)
        raise ConfigError(
            f"an exhaustive search would score {exhaustive_count(config)} specs "
            f"({len(config.dims())} dims x ({len(widths)} FFN widths x {len(counts)} head "
            f"counts) ^ {config.n_layers} layers), more than the limit of {max_candidates}; "
            "use --method greedy or raise --max-candidates")


# -- the frontier (pure) -----------------------------------------------------------------------
def pareto(points: Sequence[dict]) -> list[dict]:
    """The accuracy-vs-FLOPs frontier of points {"flops_per_sample", "accuracy", ...}, ordered
    by FLOPs: a point is kept when no other has <= FLOPs and >= accuracy with one strict. Of
    points equal in both, the first alone is kept (pass trained levels first).

    >>> pts = [{"flops_per_sample": f, "accuracy": a} for f, a in [(1, .5), (2, .4), (3, .9)]]
    >>> [p["flops_per_sample"] for p in pareto(pts)]
    [1, 3]
    """
    order = sorted(range(len(points)), key=lambda i: (points[i]["flops_per_sample"],
                                                      -points[i]["accuracy"], i))
    front, best = [], -float("inf")
    for i in order:
        if points[i]["accuracy"] > best:
            front.append(points[i])
            best = points[i]["accuracy"]
    return front


def frontier(levels: list[dict], candidates: list[dict]) -> list[dict]:
    """The Pareto frontier over the trained levels and the candidates, each entry marked
    "trained"; the mixes are numbered "pick" 1, 2, ... in FLOPs order and named mix<pick>."""
    trained = [lv["spec"] for lv in levels]
    mixes = [c for c in candidates if c["spec"] not in trained]
    out, k = [], 0
    for p in pareto(levels + mixes):
        if "name" in p:
            out.append({**p, "trained": True})
        else:
            k += 1
            out.append({"name": f"mix{k}", "pick": k, **p, "trained": False})
    return out


def between(levels: list[dict], candidates: list[dict]) -> list[dict]:
    """For each pair of consecutive trained levels (by FLOPs), the most accurate candidate
    strictly between their FLOPs (ties: the cheaper), named mid<lower>_<upper>. On a small
    validation split a level often ties a larger one, and the frontier then skips the gap;
    these are the sub-models a budget between the two levels would get.

    >>> lv = [{"name": "8", "flops_per_sample": 1, "accuracy": .9},
    ...       {"name": "16", "flops_per_sample": 4, "accuracy": .9}]
    >>> c = [{"flops_per_sample": f, "accuracy": a, "spec": f} for f, a in [(2, .9), (3, .8)]]
    >>> [(m["name"], m["flops_per_sample"]) for m in between(lv, c)]
    [('mid8_16', 2)]
    """
    trained = sorted(levels, key=lambda lv: lv["flops_per_sample"])
    specs = [lv["spec"] for lv in levels]
    out = []
    for lo, hi in zip(trained, trained[1:]):
        inside = [c for c in candidates if c["spec"] not in specs
                  and lo["flops_per_sample"] < c["flops_per_sample"] < hi["flops_per_sample"]]
        if inside:
            best = max(inside, key=lambda c: (c["accuracy"], -c["flops_per_sample"]))
            out.append({"name": f"mid{lo['name']}_{hi['name']}", "lower": lo["name"],
                        "upper": hi["name"], **best, "trained": False})
    return out


def pick_best(front: list[dict], budget_flops: float | None) -> dict | None:
    """The most accurate frontier entry whose FLOPs fit the budget; None without a budget."""
    if budget_flops is None:
        return None
    fits = [p for p in front if p["flops_per_sample"] <= budget_flops]
    if not fits:
        raise _too_small(budget_flops, min(p["flops_per_sample"] for p in front))
    return max(fits, key=lambda p: (p["accuracy"], -p["flops_per_sample"]))


# -- search: load, score, write ----------------------------------------------------------------
def search(checkpoint: str | Path, budget_flops: float | None = None, method: str = "greedy",
           data: str | None = None, out: str | Path | None = None, plot: bool = True,
           progress: bool = True, max_candidates: int | None = None) -> dict:
    """Score Mix'n'Match specs of a checkpoint on its validation split (method "greedy": see
    `greedy_walk`; "exhaustive": every spec, at most `max_candidates` [5000]; "random":
    `max_candidates` [24] specs drawn uniformly, `random_specs`), and write the record
    with its Pareto frontier to `out` [<checkpoint's folder>/../search.json], and search.png
    beside it when `plot` (a warning, not a failure, without matplotlib; the record's "plot"
    names the PNG, or is null). With a budget, the record's "best" is the most accurate
    frontier entry within `budget_flops` per sample.

    >>> record = search("artifacts/demo/checkpoint", budget_flops=2e6)  # doctest: +SKIP
    >>> record["best"]["name"], record["best"]["flops_per_sample"] <= 2e6  # doctest: +SKIP
    ('mix3', True)
    """
    from matryoshka.model.checkpoint import checkpoint_sha256, load_checkpoint

    budget_flops = _check_budget(budget_flops)
    path = search_path(checkpoint, out)
    model, metrics = load_checkpoint(checkpoint)
    sha, cfg = checkpoint_sha256(checkpoint), model.config
    _check_method(cfg, method, max_candidates)
    smallest = flops_per_sample(cfg, cfg.levels[0])  # the cheapest spec: fail before scoring
    if budget_flops is not None and budget_flops < smallest:
        raise _too_small(budget_flops, smallest)
    x, y, data_record = val_split(checkpoint, model, metrics, data)
    total = {"exhaustive": exhaustive_count(cfg),  # random: the levels, then its draws
             "random": min(exhaustive_count(cfg),
                           len(cfg.levels) + (max_candidates or RANDOM_CANDIDATES))}.get(method)
    with tqdm(total=total, desc="search", unit="spec", disable=None if progress else True,
              leave=False) as bar:
        evals = Evaluations(lambda s: spec_accuracy(model, x, y, s), on_new=lambda s: bar.update(1))
        run_method(cfg, evals, method, max_candidates)
    record = {
        "schema_version": SCHEMA_VERSION,
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "checkpoint": {"path": str(Path(checkpoint).resolve()), "sha256": sha},
        "data": data_record, "split": "val", "n": int(len(y)), "method": method,
        "budget_flops": budget_flops, **results(model, evals.accuracy, budget_flops),
    }
    record["plot"] = plot_beside(record, path) if plot else None
    write_json_atomic(path, record)
    return record


def results(model: MatryoshkaTransformer, accuracy: dict[Spec, float],
            budget_flops: float | None) -> dict:
    """The record's levels, candidates, frontier and best, from the scored specs."""
    cfg = model.config

    def entry(spec: Spec) -> dict:
        return {"spec": spec.to_dict(), "flops_per_sample": flops_per_sample(cfg, spec),
                "params": spec_params(model, spec), "accuracy": accuracy[spec]}

    levels = [{"name": cfg.level_name(d), **entry(cfg.spec(d))} for d in cfg.levels]
    candidates = [entry(s) for s in accuracy]
    front = frontier(levels, candidates)
    return {"levels": levels, "candidates": candidates, "frontier": front,
            "between": between(levels, candidates), "best": pick_best(front, budget_flops)}


def search_path(checkpoint: str | Path, out: str | Path | None = None) -> Path:
    """Where search.json goes: `out`, else beside the checkpoint folder; checked before the
    search runs."""
    path = Path(out) if out is not None else (
        Path(os.path.normpath(checkpoint)).parent / SEARCH_JSON)
    if path.is_dir():
        raise ConfigError(f"--out {path} is a folder; name a file (e.g. {path / SEARCH_JSON})")
    if not path.parent.is_dir():
        raise ConfigError(f"--out {path}: the folder {path.parent} does not exist")
    return path


def val_split(checkpoint: str | Path, model: MatryoshkaTransformer, metrics: dict,
              data: str | None) -> tuple[np.ndarray, np.ndarray, dict]:
    """The validation split as the model takes it, and the data's record (--data, else the
    checkpoint's own data). Only "val" is read from the data set."""
    from matryoshka.data.source import as_input, resolve
    from matryoshka.model.checkpoint import checkpoint_tokenizer

    cfg = model.config
    tokenizer_json, tokenizer = checkpoint_tokenizer(checkpoint, cfg), None
    if tokenizer_json is not None:
        from matryoshka.runtime.text import load_tokenizer

        tokenizer = load_tokenizer(tokenizer_json, cfg.long_texts())
    dataset, record = resolve(data, metrics.get("data") or "demo", tokenizer, cfg.pad_id)
    x, y = dataset["val"]
    _check_fits(cfg, x, y)
    return as_input(x, cfg.input_kind), y, record


def _check_fits(cfg: MatryoshkaConfig, x: np.ndarray, y: np.ndarray) -> None:
    """The validation split must feed this model: shapes, token ids and labels."""
    check_data_fits(cfg, {"train": (x, y)})  # checks the shapes of "train": here, val


def _check_budget(budget_flops: float | None) -> float | int | None:
    if budget_flops is None:
        return None
    try:
        b = float(budget_flops)
    except (TypeError, ValueError):
        raise ConfigError(f"--budget-flops must be a number; got {budget_flops!r}") from None
    if not (0 < b < float("inf")):  # NaN fails this too
        raise ConfigError(f"--budget-flops must be a positive number of FLOPs; got {b:g}")
    return int(b) if b.is_integer() else b


def _too_small(budget_flops: float, smallest: int) -> ConfigError:
    return ConfigError(f"--budget-flops {budget_flops:g}: nothing fits; the smallest sub-model "
                       f"takes {smallest} FLOPs per sample ({smallest / 1e6:.4f} MFLOPs)")


# -- reading it back ---------------------------------------------------------------------------
def read_search(path: str | Path) -> dict:
    """A search.json, checked for form."""
    path = Path(path)
    if not path.is_file():
        raise MissingArtifactError(f"search record not found: {path}; make one with: "
                                   "matryoshka search CHECKPOINT")
    record = read_json_object(path)
    front = record.get("frontier")
    if (record.get("schema_version") != SCHEMA_VERSION or not isinstance(front, list)
            or not all(isinstance(p, dict) and "spec" in p and "name" in p for p in front)
            or not isinstance(record.get("checkpoint"), dict)):
        raise ArtifactError(f"{path} is not a record of matryoshka search (schema version "
                            f"{SCHEMA_VERSION}); rerun matryoshka search")
    return record


def load_picks(path: str | Path, picks: str, checkpoint_sha256: str) -> list[tuple[str, Spec]]:
    """(name, spec) of each pick of a search.json made for the checkpoint of that sha256.

    `picks`: comma-separated pick numbers ("1,3", the frontier's mixes), "all" (every mix on
    the frontier), "between" (the most accurate mix inside each gap between trained levels)
    or "best" (the budget's best), in any mix ("best,1"); each spec once, under the name it
    is first picked by. Only
    mixes are returned: a best that is a trained level adds nothing (a warning says so),
    since the export has it as a level. The specs are checked for form only; the model
    checks them against its granularities.

    >>> load_picks("artifacts/demo/search.json", "1,3", sha)  # doctest: +SKIP
    [('mix1', Spec(dim=128, ...)), ('mix3', Spec(dim=256, ...))]
    """
    record = read_search(path)
    sha = record["checkpoint"].get("sha256")
    if sha != checkpoint_sha256:
        raise ConfigError(f"{path} was made for another checkpoint (sha {str(sha)[:12]}, this "
                          f"one {checkpoint_sha256[:12]}); rerun matryoshka search")
    by_pick = {p["pick"]: p for p in record["frontier"] if p.get("pick") is not None}
    chosen: dict[Spec, str] = {}
    for word in [w.strip() for w in str(picks).split(",") if w.strip()] or [""]:
        for p in _resolve_pick(path, record, by_pick, word):
            chosen.setdefault(Spec.from_dict(p["spec"]), str(p["name"]))
    return [(name, spec) for spec, name in chosen.items()]


def _resolve_pick(path, record: dict, by_pick: dict, word: str) -> list[dict]:
    valid = ", ".join(map(str, sorted(by_pick))) or "none: the frontier holds trained levels only"
    if word == "all":
        if not by_pick:
            raise ConfigError(f"{path}: no mix is on the frontier (only trained levels); "
                              "nothing to pick")
        return [by_pick[k] for k in sorted(by_pick)]
    if word == "between":
        if not record.get("between"):
            raise ConfigError(f"{path}: no scored spec lies between two trained levels")
        return list(record["between"])
    if word == "best":
        if record.get("best") is None:
            raise ConfigError(f"{path} was made without --budget-flops, so it has no best; "
                              f"pick by number ({valid}) or rerun matryoshka search with "
                              "--budget-flops")
        best = record["best"]
        if best.get("trained"):  # already a level of the export: nothing to add as a mix
            log.warning("the best under the budget in %s is trained level %s; it is exported "
                        "as a level (--levels), not as a mix", path, best.get("name"))
            return []
        return [best]
    try:
        return [by_pick[int(word)]]
    except (ValueError, KeyError):
        raise ConfigError(f"--pick {word!r} is not a pick of {path}; valid picks: {valid} "
                          "(or all, between, best)") from None


__all__ = ["Evaluations", "between", "exhaustive_count", "exhaustive_specs", "frontier",
           "granularities", "greedy_walk", "load_picks", "narrowings", "pareto", "pick_best",
           "read_search", "results", "run_method", "search", "search_path",
           "spec_accuracy", "spec_params", "val_split"]
