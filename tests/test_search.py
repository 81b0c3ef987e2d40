"""`matryoshka search`: the Pareto frontier, the greedy walk's rule, the val split alone,
search.json and its picks, the budget, and the command line. docs/design.md, "Sub-models between
the levels (Mix'n'Match)"."""

import json
import logging
import shutil
import sys
from collections import Counter

import click
import numpy as np
import pytest
import torch
from click.testing import CliRunner

from matryoshka.cli import cli
from matryoshka.cli.search import parse_flops
from matryoshka.errors import ArtifactError, ConfigError, MissingArtifactError
from matryoshka.model import Spec, count_params, extract_level, flops_per_sample, preset
from matryoshka.model.checkpoint import checkpoint_sha256, load_checkpoint
from matryoshka.search import (
    Evaluations,
    exhaustive_specs,
    greedy_walk,
    load_picks,
    pareto,
    pick_best,
    random_specs,
    run_method,
    search,
    spec_accuracy,
    spec_params,
)
from matryoshka.search_report import search_table
from tests.cli.test_errors import assert_one_error

TINY = preset("tiny")  # levels 16, 32, 64; FFN widths 24, 48, 96; heads 2, 4, 8; 2 layers
BUDGET = 300_000  # between the tiny levels 32 (123,648 FLOPs) and 64 (476,672)


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Tiny models on a shared 2-core machine: two torch threads only fight each other."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


class ValOnly(dict):
    """A data set whose test split fails the test when anything reads it."""

    def __getitem__(self, split):
        assert split != "test", "search read the test split"
        return super().__getitem__(split)

    def get(self, split, default=None):
        assert split != "test", "search read the test split"
        return super().get(split, default)

    def items(self):
        raise AssertionError("search iterated over every split, the test split included")

    values = items


@pytest.fixture(scope="module")
def searched(tiny_checkpoint, tmp_path_factory):
    """A greedy search with a budget on a copy of the tiny checkpoint, written to the default
    place, with the data's test split poisoned: (checkpoint copy, record)."""
    from matryoshka.data import source

    ck = tmp_path_factory.mktemp("search") / "checkpoint"
    shutil.copytree(tiny_checkpoint, ck)
    real = source.resolve

    def resolve(*args, **kw):
        dataset, record = real(*args, **kw)
        poisoned = {**dataset, "test": (np.full(dataset["test"][0].shape, np.nan),
                                        dataset["test"][1])}
        return ValOnly(poisoned), record

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(source, "resolve", resolve)
        record = search(ck, budget_flops=BUDGET, progress=False)
    return ck, record


def points(*pairs):
    return [{"flops_per_sample": f, "accuracy": a, "id": i} for i, (f, a) in enumerate(pairs)]


# -- pareto, pure ------------------------------------------------------------------------------
def test_pareto_keeps_exactly_the_undominated_points_in_flops_order():
    pts = points((4, .9), (2, .4), (2, .6), (1, .5), (3, .6), (4, .8), (5, .95), (0.5, .5))
    # (2, .4): (1, .5) has fewer FLOPs and more accuracy; (1, .5): (0.5, .5) is as accurate
    # for fewer; (3, .6): (2, .6) is as accurate for fewer; (4, .8): (4, .9) at equal FLOPs
    assert [p["id"] for p in pareto(pts)] == [7, 2, 0, 6]
    assert pareto([]) == []


def test_pareto_keeps_the_first_of_points_equal_in_both():
    pts = points((1, .5), (2, .7), (2, .7), (1, .5))
    assert [p["id"] for p in pareto(pts)] == [0, 1]
    assert [p["id"] for p in pareto(pts[::-1])] == [3, 2]


def test_pick_best_is_the_most_accurate_within_the_budget():
    front = pareto(points((1, .5), (3, .7), (6, .9)))
    assert pick_best(front, None) is None
    assert pick_best(front, 3)["id"] == 1  # a budget equal to an entry's FLOPs fits it
    assert pick_best(front, 5.9)["id"] == 1
    assert pick_best(front, 1e9)["id"] == 2
    with pytest.raises(ConfigError, match="nothing fits; the smallest sub-model takes 1 FLOPs"):
        pick_best(front, 0.5)


# -- the walks, pure ---------------------------------------------------------------------------
def test_greedy_takes_the_least_loss_per_flop_and_ties_to_the_larger_saving():
    # at dim 64: halving a layer's heads saves 67,584 FLOPs, halving its FFN 49,152
    def walk_from_64(acc):
        path = greedy_walk(TINY, Evaluations(acc))
        return path[path.index(TINY.spec(64)) + 1]

    # no move loses anything: the larger saving (heads), the first layer on a further tie
    assert walk_from_64(lambda s: 1.0) == Spec(64, (96, 96), (4, 8))
    # layer 0's heads lose accuracy: layer 1's heads lose nothing and save as much
    assert walk_from_64(lambda s: 1.0 - 0.1 * (s.heads[0] < 8)) == Spec(64, (96, 96), (8, 4))
    # heads lose 0.01 (1.5e-7 per FLOP), FFN 0.001 (2e-8): the smaller saving wins
    assert walk_from_64(lambda s: 1.0 - 0.01 * sum(h < 8 for h in s.heads)
                        - 0.001 * sum(m < 96 for m in s.ffn)) == Spec(64, (48, 96), (8, 8))
    # an accuracy gain beats any loss
    assert walk_from_64(lambda s: 1.0 - 0.01 * sum(h < 8 for h in s.heads)
                        + 0.001 * (s.ffn[1] < 96)) == Spec(64, (96, 48), (8, 8))


def test_greedy_walks_each_level_down_to_the_smallest_granularity_scoring_each_spec_once():
    calls = Counter()

    def acc(s):
        calls[s] += 1
        return (sum(s.ffn) + 7 * sum(s.heads) + s.dim) % 13 / 13  # arbitrary, deterministic

    evals = Evaluations(acc)
    path = greedy_walk(TINY, evals)
    smallest = [Spec(d, (24, 24), (2, 2)) for d in (16, 32, 64)]
    starts = [path.index(TINY.spec(d)) for d in (16, 32, 64)]
    assert starts == [0, 1, 6]  # 16 has nowhere to go; 32 takes 4 notches; 64 takes 8
    assert len(path) == 15 and [path[0], path[5], path[14]] == smallest
    for a, b in zip(path, path[1:]):
        if a.dim == b.dim:
            assert flops_per_sample(TINY, b) < flops_per_sample(TINY, a)
    assert max(calls.values()) == 1 and set(calls) == set(evals.accuracy)
    assert set(path) <= set(evals.accuracy)


def test_exhaustive_is_every_spec_and_refuses_past_the_limit():
    specs = list(exhaustive_specs(TINY))
    assert len(specs) == len(set(specs)) == 3 * (3 * 3) ** 2
    assert all(TINY.spec(s) == s for s in specs)
    evals = Evaluations(lambda s: 0.5)
    run_method(TINY, evals, "exhaustive", max_candidates=243)
    assert set(evals.accuracy) == set(specs)
    with pytest.raises(ConfigError, match="would score 243 specs .* more than the limit of 242"):
        run_method(TINY, Evaluations(lambda s: 0.5), "exhaustive", max_candidates=242)
    with pytest.raises(ConfigError, match="--method must be one of greedy, exhaustive, random"):
        run_method(TINY, Evaluations(lambda s: 0.5), "bayes")


def test_random_draws_distinct_specs_other_than_the_levels_seeded_and_bounded():
    levels = {TINY.spec(d) for d in TINY.levels}
    drawn = random_specs(TINY, 40)
    assert len(drawn) == len(set(drawn)) == 40 and not levels & set(drawn)
    assert all(TINY.spec(s) == s for s in drawn)  # each one a valid Mix'n'Match spec
    assert random_specs(TINY, 40) == drawn  # the same draws every run
    assert len({s.dim for s in drawn}) == 3 and len({s.heads for s in drawn}) > 3
    every = random_specs(TINY, 10_000)  # the space holds 243, three of them levels
    assert len(every) == 240 and set(every) | levels == set(exhaustive_specs(TINY))
    evals = Evaluations(lambda s: 0.5)
    run_method(TINY, evals, "random", max_candidates=5)
    assert len(evals.accuracy) == 8 and levels <= set(evals.accuracy)


@pytest.mark.parametrize("spec", [Spec(64, (24, 96), (4, 8)), Spec(16, (96, 48), (8, 2)),
                                  Spec(32, (48, 48), (4, 4))])
def test_spec_params_counts_the_cut_out_model(spec):
    torch.manual_seed(0)
    from matryoshka.model import MatryoshkaTransformer

    model = MatryoshkaTransformer(TINY)
    assert spec_params(model, spec) == count_params(extract_level(model, spec))


# -- search on a trained checkpoint ------------------------------------------------------------
def test_search_scores_on_val_alone(searched, demo_data):
    ck, record = searched  # the test split was poisoned: any read of it failed the fixture
    model, _ = load_checkpoint(ck)
    x, y = demo_data["val"]
    assert record["split"] == "val" and record["n"] == len(y) == 360
    assert record["method"] == "greedy" and record["schema_version"] == 1
    assert record["checkpoint"]["sha256"] == checkpoint_sha256(ck)
    assert record["data"]["kind"] == "demo"
    for lv in record["levels"]:
        want = spec_accuracy(model, x.astype(np.float32), y, Spec.from_dict(lv["spec"]))
        assert lv["accuracy"] == want
    assert [lv["name"] for lv in record["levels"]] == ["16", "32", "64"]


def test_candidates_carry_their_own_flops_and_params(searched):
    ck, record = searched
    model, _ = load_checkpoint(ck)
    cfg = model.config
    specs = [Spec.from_dict(c["spec"]) for c in record["candidates"]]
    assert len(specs) == len(set(specs))  # no spec scored twice
    # exactly the specs the greedy walk asks for, in its order, given the recorded scores
    again = Evaluations(dict(zip(specs, [c["accuracy"] for c in record["candidates"]])).get)
    greedy_walk(cfg, again)
    assert list(again.accuracy) == specs
    for c, spec in zip(record["candidates"], specs):
        assert c["flops_per_sample"] == flops_per_sample(cfg, spec)
        assert set(c) == {"spec", "flops_per_sample", "params", "accuracy"}
    for c, spec in list(zip(record["candidates"], specs))[::8]:
        assert c["params"] == count_params(extract_level(model, spec))
    assert {TINY.spec(d) for d in TINY.levels} <= set(specs)


def test_frontier_is_the_pareto_set_of_levels_and_candidates(searched):
    _, record = searched
    everything = {json.dumps(p["spec"]): p for p in record["levels"] + record["candidates"]}

    def dominated(p):
        return any(q["flops_per_sample"] <= p["flops_per_sample"] and q["accuracy"]
                   >= p["accuracy"] and (q["flops_per_sample"], q["accuracy"])
                   != (p["flops_per_sample"], p["accuracy"]) for q in everything.values())

    def at(p):
        return p["flops_per_sample"], p["accuracy"]

    front = record["frontier"]
    undominated = {at(p) for p in everything.values() if not dominated(p)}
    assert sorted(map(at, front)) == sorted(undominated)  # one entry for each point
    for p in front:  # of specs equal in both, the first scored (a trained level first)
        assert p["spec"] == next(q["spec"] for q in everything.values() if at(q) == at(p))
    flops = [p["flops_per_sample"] for p in front]
    acc = [p["accuracy"] for p in front]
    assert flops == sorted(flops) and all(a < b for a, b in zip(acc, acc[1:]))
    trained = {lv["name"]: lv for lv in record["levels"]}
    for name, lv in trained.items():
        on = [p for p in front if p["spec"] == lv["spec"]]
        assert len(on) == (0 if dominated(lv) else 1)
        assert all(p["trained"] and p["name"] == name and "pick" not in p for p in on)
    mixes = [p for p in front if not p["trained"]]
    assert mixes, "a tiny checkpoint has mixes between its levels"
    assert [(p["pick"], p["name"]) for p in mixes] == [(k, f"mix{k}")
                                                      for k in range(1, len(mixes) + 1)]
    lo = min(lv["flops_per_sample"] for lv in trained.values())
    hi = max(lv["flops_per_sample"] for lv in trained.values())
    for c in record["candidates"]:
        if c["spec"] not in [lv["spec"] for lv in trained.values()]:
            assert lo < c["flops_per_sample"] < hi


def test_budget_picks_the_most_accurate_frontier_entry_that_fits(searched):
    _, record = searched
    assert record["budget_flops"] == BUDGET
    fits = [p for p in record["frontier"] if p["flops_per_sample"] <= BUDGET]
    assert record["best"] == max(fits, key=lambda p: p["accuracy"])
    assert record["best"]["flops_per_sample"] <= BUDGET
    assert not any(p["accuracy"] > record["best"]["accuracy"] for p in fits)


def test_a_budget_below_the_smallest_level_fails_before_scoring(searched, monkeypatch):
    import matryoshka.search as s

    ck, _ = searched
    monkeypatch.setattr(s, "spec_accuracy", lambda *a, **k: pytest.fail("scored"))
    with pytest.raises(ConfigError, match="nothing fits; the smallest sub-model takes 33152"):
        search(ck, budget_flops=33151, out=ck.parent / "never.json", plot=False,
               progress=False)
    assert not (ck.parent / "never.json").exists()


def test_search_json_is_written_beside_the_checkpoint_with_its_plot(searched):
    ck, record = searched
    assert json.loads((ck.parent / "search.json").read_text()) == record
    assert record["plot"] == "search.png"
    assert (ck.parent / "search.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_without_matplotlib_the_plot_is_a_warning(searched, monkeypatch, caplog, tmp_path):
    from matryoshka.search_report import plot_beside

    _, record = searched
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    monkeypatch.setitem(sys.modules, "matplotlib.pyplot", None)
    monkeypatch.setattr(logging.getLogger("matryoshka"), "propagate", True)
    with caplog.at_level(logging.WARNING, logger="matryoshka.search_report"):
        assert plot_beside(record, tmp_path / "search.json") is None
    assert "pip install matryoshka[plot]" in caplog.text
    assert not (tmp_path / "search.png").exists()


def test_table_lists_the_frontier_with_marks(searched):
    _, record = searched
    lines = search_table(record).splitlines()
    n = len(record["frontier"])
    assert len(lines) == 2 + n + 1 + len(record["between"])
    assert lines[2 + n].startswith("between the trained levels")
    best = [ln for ln in lines if ln.endswith("best under budget")]
    assert len(best) == 1 and f" {record['best']['name']} " in best[0]
    assert sum(ln.endswith("trained") for ln in lines[2:]) == sum(p["trained"]
                                                                 for p in record["frontier"])
    assert str(Spec.from_dict(record["frontier"][-1]["spec"])) in lines[1 + n]
    for p, line in zip(record["between"], lines[3 + n:]):
        assert f" {p['name']} " in line and str(Spec.from_dict(p["spec"])) in line


def test_between_holds_the_best_inside_each_gap(searched):
    _, record = searched
    levels = sorted(record["levels"], key=lambda lv: lv["flops_per_sample"])
    assert [p["name"] for p in record["between"]] == [
        f"mid{a['name']}_{b['name']}" for a, b in zip(levels, levels[1:])]
    for p, lo, hi in zip(record["between"], levels, levels[1:]):
        inside = [c for c in record["candidates"]
                  if lo["flops_per_sample"] < c["flops_per_sample"] < hi["flops_per_sample"]]
        assert p["accuracy"] == max(c["accuracy"] for c in inside)
        assert p["flops_per_sample"] == min(c["flops_per_sample"] for c in inside
                                            if c["accuracy"] == p["accuracy"])


# -- load_picks --------------------------------------------------------------------------------
def test_picks_round_trip_through_search_json(searched, tmp_path):
    ck, record = searched
    path, sha = ck.parent / "search.json", checkpoint_sha256(ck)
    mixes = [p for p in record["frontier"] if not p["trained"]]
    want = [(p["name"], Spec.from_dict(p["spec"])) for p in mixes]
    assert load_picks(path, "all", sha) == want
    assert load_picks(path, "1", sha) == want[:1]
    assert load_picks(path, f"{len(mixes)},1,1", sha) == [want[-1], want[0]]
    trained = next(p for p in record["frontier"] if p["trained"])  # 16: always there
    for best, picked in ((mixes[-1], want[-1:]), (trained, [])):
        (tmp_path / "b.json").write_text(json.dumps({**record, "best": best}))
        assert load_picks(tmp_path / "b.json", "best", sha) == picked
        # a trained best is a level of the export, not a mix: it adds nothing
        both = list(dict.fromkeys(want[:1] + picked))
        assert load_picks(tmp_path / "b.json", "1,best", sha) == both


def test_bad_picks_and_files_say_what_is_wrong(searched, tmp_path):
    ck, record = searched
    path, sha = ck.parent / "search.json", checkpoint_sha256(ck)
    n = sum(not p["trained"] for p in record["frontier"])
    valid = ", ".join(map(str, range(1, n + 1)))
    for bad in (str(n + 1), "0", "mix1", ""):
        with pytest.raises(ConfigError, match=f"valid picks: {valid} \\(or all, between, best\\)"):
            load_picks(path, bad, sha)
    with pytest.raises(ConfigError, match="made for another checkpoint .* rerun matryoshka "
                                          "search"):
        load_picks(path, "1", "0" * 64)
    with pytest.raises(MissingArtifactError, match="search record not found"):
        load_picks(tmp_path / "none.json", "1", sha)
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(ArtifactError, match="cannot be read as JSON"):
        load_picks(tmp_path / "bad.json", "1", sha)
    (tmp_path / "other.json").write_text(json.dumps({"levels": []}))
    with pytest.raises(ArtifactError, match="is not a record of matryoshka search"):
        load_picks(tmp_path / "other.json", "1", sha)
    no_budget = {**record, "best": None, "budget_flops": None}
    (tmp_path / "nb.json").write_text(json.dumps(no_budget))
    with pytest.raises(ConfigError, match="made without --budget-flops"):
        load_picks(tmp_path / "nb.json", "best", sha)


# -- the command line --------------------------------------------------------------------------
@pytest.mark.parametrize("text,flops", [("3e6", 3e6), ("2.5M", 2.5e6), ("800k", 8e5),
                                        ("1G", 1e9), ("1.5e3k", 1.5e6), ("300000", 3e5)])
def test_parse_flops(text, flops):
    assert parse_flops(text) == flops


@pytest.mark.parametrize("text", ["abc", "2.5X", "-1", "0", "nan", "inf", "1e999", "M", ""])
def test_parse_flops_refuses(text):
    with pytest.raises(click.BadParameter, match="positive number of FLOPs"):
        parse_flops(text)


def test_cli_writes_the_record_and_prints_the_frontier(searched, tmp_path):
    ck, _ = searched
    out = tmp_path / "s.json"
    r = CliRunner().invoke(cli, ["search", str(ck), "--budget-flops", "2.5M", "--out",
                                 str(out), "--no-plot", "--no-progress"])
    assert r.exit_code == 0, r.output
    record = json.loads(out.read_text())
    assert record["budget_flops"] == 2_500_000 and record["plot"] is None
    assert record["best"] == record["frontier"][-1]  # everything fits 2.5 MFLOPs
    assert not (tmp_path / "s.png").exists()
    assert search_table(record) in r.stdout
    assert f"export with: mexport --from-search {out} --pick" in r.stdout


@pytest.mark.parametrize("args,fragment", [
    (["--budget-flops", "abc"], "--budget-flops"),
    (["--budget-flops", "1k"], "nothing fits"),
    (["--method", "exhaustive", "--max-candidates", "10"], "would score 243 specs"),
])
def test_cli_errors_are_one_line(searched, tmp_path, args, fragment):
    ck, _ = searched
    r = CliRunner().invoke(cli, ["search", str(ck), "--out", str(tmp_path / "s.json"),
                                 "--no-progress", *args])
    assert_one_error(r, 2, fragment)
    assert not (tmp_path / "s.json").exists()


def test_a_text_checkpoint_is_scored_on_its_tokenized_val_split(tmp_path):
    from matryoshka.data.source import resolve
    from matryoshka.model.checkpoint import checkpoint_tokenizer
    from matryoshka.runtime.text import load_tokenizer
    from tests.test_text_pipeline import pets_csv

    data, ck = pets_csv(tmp_path / "pets.csv", n=300), tmp_path / "ck"
    r = CliRunner().invoke(cli, ["train", "--data", str(data), "--text-column", "body",
                                 "--label-column", "animal", "--preset", "tiny-text",
                                 "--vocab-size", "120", "--max-len", "24", "--epochs", "1",
                                 "--out", str(ck), "--no-progress"])
    assert r.exit_code == 0, r.output
    record = search(ck, plot=False, progress=False)
    model, metrics = load_checkpoint(ck)
    tokenizer = load_tokenizer(checkpoint_tokenizer(ck, model.config))
    x, y = resolve(None, metrics["data"], tokenizer)[0]["val"]
    assert record["n"] == len(y) and record["data"]["kind"] == "text"
    for lv in record["levels"]:
        assert lv["accuracy"] == spec_accuracy(model, x.astype(np.int64), y,
                                          Spec.from_dict(lv["spec"]))
    assert (tmp_path / "search.json").is_file()
