"""A training run from start to checkpoint: what `matryoshka train` does, callable from Python.

docs/design.md, "Data flow" and "Starting from a pretrained encoder". A `TrainPlan` says what
is asked (one field per option of `matryoshka train`); `prepare` turns it into the model
configuration, the encoded data, the recipe and the teacher's logits, with the start each
plan names:

- from scratch: a preset resized, its tokenizer trained on the training split (raw text);
- `pretrained`: a Hugging Face BERT-family encoder imported exactly, with its own tokenizer
  and a new classifier head, nested at once when `levels` are given;
- `init_from`: a checkpoint fine-tuned (its config and weights), nested by width or heads
  when `levels` are given to one of an imported encoder, which then teaches every level.

Nesting first rewires the encoder by importance on the training split, so that every level's
prefix holds what the full model uses most. `run` trains and writes the checkpoint.

Example:

    >>> from matryoshka.training.setup import TrainPlan, run
    >>> metrics = run(TrainPlan(out="ck", data="spam.csv", levels=(96, 192, 384),  # doctest: +SKIP
    ...                         pretrained="artifacts/pretrained/all-MiniLM-L6-v2"))
    >>> metrics["test_accuracy"]["96"]  # doctest: +SKIP
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

from matryoshka.data.fit import check_data_fits, config_for_data, config_for_text
from matryoshka.data.text import is_text_source
from matryoshka.errors import ConfigError, DataError
from matryoshka.io import check_out_dir
from matryoshka.model import MatryoshkaConfig, parse_levels, preset, resize
from matryoshka.runtime.reading import Reading
from matryoshka.runtime.text import reader
from matryoshka.training.config import RECIPES, TrainConfig

log = logging.getLogger(__name__)
Say = Callable[[str], None]


@dataclass(frozen=True)
class TrainPlan:
    """One training run, as asked: the fields of `matryoshka train`'s options (see
    docs/cli.md); None takes the preset's or the recipe's value."""

    out: str | Path  # the checkpoint folder to write
    data: str = "demo"  # "demo", a .npz, or raw text (a .csv/.jsonl file or a folder)
    text_column: str = "text"
    label_column: str = "label"
    split_seed: int = 0  # the 80/10/10 split of raw text in one file
    preset: str | None = None  # demo, tiny, text, tiny-text [text for raw text, else demo]
    levels: tuple[int, ...] | str | None = None  # nested widths (or head counts, heads)
    d_model: int | None = None
    layers: int | None = None
    head_dim: int | None = None
    d_mid: int | None = None
    ffn_mult: float | None = None
    max_len: int | None = None
    reading: str | None = None  # truncate | head-tail [the starting model's, else truncate]
    head_share: float | None = None  # head-tail: the head's share [the starting model's, 0.25]
    vocab_size: int = 8000  # a tokenizer trained here
    tokenizer: str = "bpe"  # bpe | wordpiece
    lowercase: bool = True
    name: str | None = None  # the model's name in the graphs
    recipe: dict[str, Any] = field(default_factory=dict)  # TrainConfig fields over the recipe's
    schedule: str = "joint"
    seed: int = 0
    init_from: str | None = None  # a checkpoint to start from
    nesting: str = "width"  # width | heads, for an imported encoder with levels
    pretrained: str | None = None  # a Hugging Face encoder folder to start from
    rewire: bool = True  # reorder by importance before nesting
    teacher: str | None = None  # a frozen checkpoint that teaches, or "none"
    precision: str = "auto"  # auto | fp32 | bf16
    train_rows: int | None = None  # a seeded subset of the training split
    label_map: dict[str, str] | None = None  # data class -> an imported classifier's class
    force: bool = False  # replace an existing `out`
    progress: bool = True

    @property
    def nests(self) -> bool:
        """Nesting an imported encoder: one fine-tuned by `pretrained` (`init_from`, which
        then teaches), or the pretrained folder itself (its largest level teaches)."""
        return (self.init_from is not None or self.pretrained is not None) \
            and self.levels is not None

    def level_tuple(self) -> tuple[int, ...] | None:
        if self.levels is None or isinstance(self.levels, tuple):
            return self.levels
        return parse_levels(self.levels)


class Prepared(NamedTuple):
    """What `train` needs: the model's config, the encoded splits, the recipe, the weights to
    start from (None: a random draw), the data's record, the class names, the files that go
    into the checkpoint (tokenizer.json) and a frozen teacher's logits (or None)."""

    config: MatryoshkaConfig
    dataset: dict
    recipe: TrainConfig
    init: Any
    record: dict | str
    labels: list[str]
    files: dict[str, bytes] | None
    teacher_logits: np.ndarray | None


def run(plan: TrainPlan, say: Say | None = None) -> dict:
    """Prepare and train; writes the checkpoint folder `plan.out` and returns its metrics.
    `say` receives the lines worth showing a user (default: this module's log, at INFO)."""
    from matryoshka.training.loop import train

    p = prepare(plan, say)
    return train(p.config, p.dataset, p.recipe, plan.out, force=plan.force,
                 progress=plan.progress, data_name=p.record, init=p.init, files=p.files,
                 labels=p.labels, teacher_logits=p.teacher_logits)


def prepare(plan: TrainPlan, say: Say | None = None) -> Prepared:
    """Check the plan, read and encode the data, start the model, compute the teacher's
    logits, rewire and nest; nothing is written.

    >>> p = prepare(TrainPlan(out="ck", preset="tiny", recipe={"epochs": 1}))
    >>> p.config.levels, p.recipe.epochs, p.labels[:3]
    ((16, 32, 64), 1, ['0', '1', '2'])
    """
    say = say or log.info
    check_out_dir(plan.out, plan.force)
    _check_nesting(plan)
    if plan.label_map and plan.pretrained is None and plan.init_from is None:
        raise ConfigError("--label-map pairs the data's classes with a fine-tuned classifier's: "
                          "give it with --pretrained or --init-from")
    levels = plan.level_tuple()
    text = is_text_source(plan.data)
    preset_name = plan.preset
    if plan.pretrained is not None:
        _check_pretrained_options(plan, text)
        preset_name = "pretrained"
        if plan.nests:  # bad levels: refused from config.json, before the texts are tokenized
            from matryoshka.model.pretrained import check_nesting

            check_nesting(plan.pretrained, plan.nesting, levels, plan.max_len)
    if (plan.reading is not None or plan.head_share is not None) and not text:
        raise ConfigError("--long and --head-share say how raw text longer than --max-len is "
                          "read; --data is not raw text")
    preset_name = preset_name or ("text" if text else "demo")
    # pretrained: the encoder's, once the classes are known
    init = cfg = init_metrics = init_tokenizer = None
    if plan.pretrained is None and plan.init_from is not None:
        from matryoshka.model.checkpoint import load_model

        init, init_metrics, init_tokenizer = load_model(plan.init_from, plan.max_len)
        cfg = init.config
        if plan.nests:
            init, cfg = _nest_config(init, plan.nesting, levels)
    elif plan.pretrained is None:
        cfg = resize(preset(preset_name), d_model=plan.d_model, levels=levels,
                     n_layers=plan.layers, head_dim=plan.head_dim, d_mid=plan.d_mid,
                     ffn_mult=plan.ffn_mult, max_len=plan.max_len)
    recipe = dict(RECIPES.get(preset_name, {})) if plan.init_from is None else {}
    if plan.nests:
        recipe = dict(RECIPES["nested" if plan.nesting == "heads" else "nested_width"])
    long = _long_texts(plan, cfg)
    if plan.pretrained is not None:
        dataset, record, labels, files, init = _pretrained_data(plan, long)
        cfg = init.config
        if plan.nests:
            init, cfg = _nest_config(init, plan.nesting, levels)
    if len(cfg.levels) != len(recipe.get("alpha", cfg.levels)):
        recipe.pop("alpha", None)  # the recipe's alpha was for the preset's own levels
    recipe.update({k: v for k, v in plan.recipe.items() if v is not None})
    tcfg = TrainConfig(schedule=plan.schedule, seed=plan.seed, **recipe)
    tcfg.alphas(cfg.levels)
    if tcfg.lr_scale is not None and len(tcfg.lr_scale) != len(cfg.levels):
        raise ConfigError(f"--lr-scale needs {len(cfg.levels)} values, one per level; got "
                          f"{len(tcfg.lr_scale)}")
    if plan.pretrained is None:  # the pretrained start read its data above, with the model
        dataset, record, labels, files, cfg = (
            _text_data(plan, cfg, init, long, init_metrics.get("labels") if init else None,
                       init_tokenizer) if text
            else _array_data(plan.data, cfg, init))
    precision = choose_precision(plan.precision, cfg, say)
    rows = draw_train_rows(dataset, plan.train_rows, plan.seed)
    teacher = plan.teacher
    if teacher is None and plan.nests:
        teacher = plan.init_from  # nesting: the fine-tuned encoder teaches every level
    taught = None
    if teacher is not None and teacher != "none" and tcfg.gamma > 0:  # gamma 0: no distilling
        taught = _teacher_logits(plan, teacher, text, dataset, rows, labels, precision, say)
    if plan.nests and plan.rewire:
        rewire(init, dataset, tcfg.batch_size, precision, say, plan.progress,
               channels=plan.nesting == "width")
    if plan.nests and plan.nesting == "width":
        from matryoshka.model.pretrained import nest_by_width

        init = nest_by_width(init, cfg.levels)
    tcfg = dataclasses.replace(tcfg, teacher=None if taught is None else teacher,
                               precision=precision,
                               train_rows=plan.train_rows and len(rows))
    if text:
        cfg = dataclasses.replace(cfg, reading=long.mode, head_share=long.head_share)
    if init is None:
        stem = "digits" if plan.data == "demo" else Path(plan.data).stem
        cfg = dataclasses.replace(cfg, name=plan.name or f"{stem}-{preset_name}")
    return Prepared(cfg, dataset, tcfg, init, record, labels, files, taught)


# -- the start --------------------------------------------------------------------------------
def _check_nesting(plan: TrainPlan) -> None:
    if plan.nesting == "heads" and (
            (plan.init_from is None and plan.pretrained is None) or plan.levels is None):
        raise ConfigError("--nesting heads nests an imported encoder: give it with "
                          "--init-from A_CHECKPOINT_OF_--pretrained or --pretrained FOLDER, "
                          "and --levels (numbers of heads)")


def _check_pretrained_options(plan: TrainPlan, text: bool) -> None:
    if not text:
        raise ConfigError("--pretrained imports a text encoder: --data must be raw text (a "
                          ".csv or .jsonl file, or a folder of them)")
    if plan.init_from is not None:
        raise ConfigError("give --pretrained or --init-from, not both")
    if plan.preset is not None:
        raise ConfigError("--preset has no meaning with --pretrained: the architecture is "
                          "the pretrained model's")


def _nest_config(model, nesting: str, levels: tuple[int, ...]):
    """(model, config) of a full-width imported encoder nested at `levels`: by heads and FFN
    neurons (DynaBERT) at once; by the hidden width, the config only (the model is nested
    after the rewiring)."""
    if nesting == "heads":
        from matryoshka.model.pretrained import nest_by_heads

        model = nest_by_heads(model, levels)
        return model, model.config
    from matryoshka.model.pretrained import width_config

    return model, width_config(model.config, levels)


def choose_precision(choice: str, cfg: MatryoshkaConfig, say: Say) -> str:
    """auto: bf16 for an imported encoder (post-LN BERT, ModernBERT) where the CPU has bf16;
    measured there, a MiniLM step ran 2.2x faster; elsewhere it says it falls back to fp32.
    The from-scratch presets keep their fp32 recipes."""
    from matryoshka.training.teacher import native_bf16

    if choice != "auto":
        return choice
    if cfg.block == "pre_ln":  # this project's own presets (an imported encoder is not)
        return "fp32"
    if native_bf16():
        return "bf16"
    say("precision: fp32 (this CPU has no native bf16, AVX512-BF16 or AMX; training takes "
        "about twice as long as where it has)")
    return "fp32"


# -- the data ---------------------------------------------------------------------------------
def _long_texts(plan: TrainPlan, cfg: MatryoshkaConfig | None) -> Reading:
    """--long and --head-share over the starting model's reading (`cfg`: an --init-from
    checkpoint's; None or a new model's: truncate)."""
    base = cfg.long_texts() if cfg is not None else Reading()
    mode = plan.reading or base.mode
    if plan.head_share is not None and mode != "head-tail":
        raise ConfigError("--head-share is the share of a long text's head that head-tail "
                          f"reads; this model reads long texts by {mode}: add --long head-tail")
    return Reading(mode, base.head_share if plan.head_share is None else plan.head_share)


def _pretrained_data(plan: TrainPlan, long: Reading):
    """Read the texts, import the encoder with its own tokenizer, encode every split as
    `long` reads long texts. A fine-tuned classifier keeps its head: the data's classes are
    put in its order."""
    from matryoshka.data.source import load_text_record
    from matryoshka.data.text import load_text, match_classes, with_classes
    from matryoshka.data.tokenizer import encode_dataset
    from matryoshka.model.pretrained import import_encoder

    text = load_text(plan.data, text_column=plan.text_column, label_column=plan.label_column,
                     seed=plan.split_seed)
    model, tokenizer, classes = import_encoder(
        plan.pretrained, n_classes=len(text.labels), max_len=plan.max_len,
        name=plan.name or f"{Path(plan.data).stem}-{Path(plan.pretrained).name}",
        seed=plan.seed)
    if classes is not None:
        text = with_classes(text, match_classes(text.labels, classes, plan.pretrained,
                                                plan.label_map))
    elif plan.label_map:
        raise ConfigError(f"--label-map pairs the data's classes with a fine-tuned "
                          f"classifier's; {plan.pretrained} is a base encoder, whose new head "
                          "takes the data's classes as they are")
    files = {"tokenizer.json": tokenizer.to_str().encode()}
    return (encode_dataset(reader(tokenizer, long), text, model.config.pad_id),
            load_text_record(text), text.labels, files, model)


def _array_data(data: str, cfg: MatryoshkaConfig, init):
    from matryoshka.data import load_dataset
    from matryoshka.data.source import describe

    dataset = load_dataset(data)
    if init is None:
        cfg = config_for_data(cfg, dataset)
    labels = [str(i) for i in range(cfg.n_classes)]
    return dataset, describe(data), labels, None, cfg


def _text_data(plan: TrainPlan, cfg: MatryoshkaConfig, init, long: Reading, init_labels=None,
               init_tokenizer: bytes | None = None):
    """Read the texts, take the starting model's tokenizer (`init_tokenizer`) and class order
    (`init_labels`) or train one on the training split, encode every split as `long` reads
    long texts."""
    from matryoshka.data.source import load_text_record
    from matryoshka.data.text import load_text, match_classes, with_classes
    from matryoshka.data.tokenizer import encode_dataset, train_tokenizer
    from matryoshka.runtime.text import load_tokenizer

    text = load_text(plan.data, text_column=plan.text_column, label_column=plan.label_column,
                     seed=plan.split_seed)
    if init is not None:
        if init.config.input_kind != "text":
            raise ConfigError("--init-from names a model that does not take text")
        if init_tokenizer is None:
            raise ConfigError(f"--init-from {plan.init_from} is a text model without "
                              "tokenizer.json")
        tokenizer = load_tokenizer(init_tokenizer)
        if init_labels:
            text = with_classes(text, match_classes(text.labels, list(init_labels),
                                                    f"--init-from {plan.init_from}",
                                                    plan.label_map))
    else:
        max_len = cfg.max_len if cfg.input_kind in ("tokens", "text") else 128
        tokenizer = train_tokenizer(text.splits["train"][0], vocab_size=plan.vocab_size,
                                    model=plan.tokenizer, lowercase=plan.lowercase,
                                    max_len=max_len)
        cfg = config_for_text(cfg, tokenizer, len(text.labels))
    files = {"tokenizer.json": tokenizer.to_str().encode()}
    return (encode_dataset(reader(tokenizer, long), text, cfg.pad_id), load_text_record(text),
            text.labels, files, cfg)


def draw_train_rows(dataset: dict, n: int | None, seed: int) -> np.ndarray:
    """Keep n rows of the training split (all when n is None or not smaller), drawn by the
    seed and kept in split order, in place; returns their indices into the split."""
    x, y = dataset["train"]
    if n is None or n >= len(x):
        return np.arange(len(x))
    keep = np.sort(np.random.default_rng(seed).permutation(len(x))[:n])
    dataset["train"] = (x[keep], y[keep])
    return keep


# -- the teacher and the rewiring -------------------------------------------------------------
def _teacher_logits(plan: TrainPlan, folder: str, text: bool, dataset: dict,
                    rows: np.ndarray, labels: list[str], precision: str,
                    say: Say) -> np.ndarray:
    """The frozen teacher's logits on the training rows kept (`rows`, indices into the split),
    row for row, under the training precision; text is tokenized with the teacher's own
    tokenizer."""
    from matryoshka.data.text import match_classes
    from matryoshka.model.checkpoint import load_model
    from matryoshka.training.teacher import teacher_logits

    model, metrics, tokenizer_json = load_model(folder, plan.max_len)
    theirs = list(metrics.get("labels") or [])
    try:  # the same classes in the same order, names matched as the import matches them
        same = match_classes(list(labels), theirs, folder, plan.label_map) == list(labels)
    except DataError:
        same = False
    if not same:
        raise ConfigError(f"--teacher {folder} was trained on the classes {theirs}; this "
                          f"data has {list(labels)}, in this order")
    x, y = dataset["train"]
    if model.config.input_kind == "text":
        from matryoshka.data.text import load_text
        from matryoshka.runtime.text import encode, load_tokenizer, pad

        if not text:
            raise ConfigError(f"--teacher {folder} takes raw text; --data is not raw text")
        tokenizer = load_tokenizer(tokenizer_json, model.config.long_texts())
        texts = load_text(plan.data, text_column=plan.text_column,
                          label_column=plan.label_column,
                          seed=plan.split_seed).splits["train"][0]
        x = pad(encode(tokenizer, [texts[i] for i in rows]), pad_id=model.config.pad_id)
    check_data_fits(model.config, {"train": (x, y)})
    top = str(model.config.levels[-1])
    acc = metrics.get("test_accuracy", {}).get(top)
    say(f"teacher: {folder}" + (f" (test accuracy {acc:.4f})" if acc else "")
        + f"; computing its logits on the {len(x)} training rows once")
    return teacher_logits(model, x, bf16=precision == "bf16", progress=plan.progress)


def rewire(model, dataset: dict, batch_size: int, precision: str, say: Say,
           progress: bool = True, rows: int = 2048, channels: bool = False) -> None:
    """Reorder the heads and FFN neurons (and with `channels`, first the residual channels)
    by importance on (up to `rows` of) the training split, in place: scored by the full model
    (under the training precision), so the smallest prefixes keep what it uses most."""
    import torch

    from matryoshka.model.importance import rewire as rewire_units

    x, y = dataset["train"]
    keep = np.random.default_rng(0).permutation(len(x))[:rows]
    x, y = torch.as_tensor(x[keep]), torch.as_tensor(y[keep], dtype=torch.long)
    batches = [(model.trim(x[i:i + batch_size]), y[i:i + batch_size])
               for i in range(0, len(x), batch_size)]
    what = "residual channels, heads and FFN neurons" if channels else "heads and FFN neurons"
    if progress:
        say(f"rewiring: scoring {what} on {len(x)} training rows")
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16"):
        if channels:
            from matryoshka.model.channels import rewire_channels

            order = rewire_channels(model, [b for b, _ in batches])["channel_order"]
            say(f"rewired the residual channels by importance; the first 8: {order[:8]}")
        info = rewire_units(model, batches)
    say("rewired by importance; heads of layer 0, most important first: "
        f"{info['head_order'][0]}")
