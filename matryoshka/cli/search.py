"""`matryoshka search`: the Mix'n'Match sub-models worth exporting, scored on the val split."""

from __future__ import annotations

import math
import re

import click

from matryoshka.cli.core import DEMO_CHECKPOINT, check_destination, cli

SUFFIXES = {"": 1.0, "k": 1e3, "m": 1e6, "g": 1e9}
NUMBER = re.compile(r"^\s*([0-9.]+(?:e[+-]?[0-9]+)?)\s*([kmg]?)\s*$", re.IGNORECASE)


def parse_flops(text: str) -> float:
    """'3e6', '2.5M', '800k', '1G' into FLOPs (k, M, G: 1e3, 1e6, 1e9, in either case).

    >>> parse_flops("2.5M")
    2500000.0
    """
    m = NUMBER.match(str(text))
    try:
        value = float(m.group(1)) * SUFFIXES[m.group(2).lower()] if m else math.nan
    except ValueError:
        value = math.nan
    if not (0 < value < math.inf):
        raise click.BadParameter(f"needs a positive number of FLOPs such as 3e6 or 2.5M "
                                 f"(suffixes k, M, G); got {text!r}",
                                 param_hint="'--budget-flops'")
    return value


@cli.command("search")
@click.argument("checkpoint", default=DEMO_CHECKPOINT)
@click.option("--budget-flops", default=None,
              help="FLOPs per sample the deployment affords, e.g. 3e6 or 2.5M; the most "
              "accurate frontier entry within it is marked best.")
@click.option("--method", type=click.Choice(["greedy", "exhaustive", "random"]),
              default="greedy", show_default=True,
              help="greedy: walk down from every trained level; exhaustive: every spec "
              "(refused beyond --max-candidates); random: --max-candidates specs drawn "
              "uniformly, seeded (a bounded search for big models).")
@click.option("--max-candidates", type=click.IntRange(min=1), default=None,
              help="exhaustive: the most specs it may score [5000]; random: how many specs "
              "it draws [24].")
@click.option("--data", default=None,
              help="'demo', a .npz or a text file [the checkpoint's own data]; val split only.")
@click.option("--out", default=None,
              help="Where to write search.json [beside the checkpoint folder].")
@click.option("--no-plot", is_flag=True,
              help="Do not write search.png (without matplotlib it is skipped with a warning).")
@click.option("--no-progress", is_flag=True, help="Hide the progress bar.")
def search_cmd(checkpoint, budget_flops, method, max_candidates, data, out, no_plot,
               no_progress) -> None:
    """Score Mix'n'Match sub-models of CHECKPOINT (one residual width, an FFN width and a head
    count per layer, from the trained levels) on the val split, and write their
    accuracy-vs-FLOPs Pareto frontier to search.json (and search.png) for mexport
    --from-search. The test split is not read.

    Example: matryoshka search artifacts/demo/checkpoint --budget-flops 2.5M
    """
    from matryoshka.search import search, search_path
    from matryoshka.search_report import search_table

    budget = parse_flops(budget_flops) if budget_flops is not None else None
    check_destination("--out", out)
    path = search_path(checkpoint, out)
    record = search(checkpoint, budget_flops=budget, method=method, data=data, out=path,
                    plot=not no_plot, progress=not no_progress, max_candidates=max_candidates)
    click.echo(search_table(record))
    written = [str(path)] + ([str(path.with_name(record["plot"]))] if record["plot"] else [])
    click.echo("written: " + ", ".join(written))
    best = record["best"]
    pick = best.get("pick") if best else None
    click.echo(f"export with: mexport --from-search {path} --pick "
               + (f"{pick}" if pick else "K (a pick number above, or all)"))
