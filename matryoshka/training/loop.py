"""The training loop: schedules, warmup + cosine, evaluation of every level, best checkpoint.

docs/design.md, "The objective" (schedules) and "Data flow" (checkpoint folder). Seeded, so two
runs with the same arguments give the same weights.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from matryoshka.data import Dataset
from matryoshka.errors import ConfigError, DataError, TrainingError
from matryoshka.io import atomic_dir
from matryoshka.model import (
    MatryoshkaConfig,
    MatryoshkaTransformer,
    Spec,
    count_params,
    extract_level,
    flops_per_sample,
)
from matryoshka.model.checkpoint import save_checkpoint
from matryoshka.model.config import random_spec
from matryoshka.training.distributed import Dist, all_reduce_sum, init_from_env, shutdown, wrap
from matryoshka.training.objective import LevelOutput, distillation, total_loss
from matryoshka.training.optim import make_optimizer

log = logging.getLogger(__name__)
SCHEDULES = ("joint", "progressive", "sampled", "mix")
TRAIN_PRECISIONS = ("fp32", "bf16")


@dataclass(frozen=True)
class TrainConfig:
    epochs: int = 40  # passes over the training split
    batch_size: int = 32  # samples per step
    lr: float = 1e-3  # eta0, the base learning rate of the largest level's shell
    weight_decay: float = 0.05  # AdamW decoupled decay, matrices only
    warmup: float = 0.05  # fraction of steps with a linear warmup, then cosine to 0
    schedule: str = "joint"  # joint | progressive | sampled | mix (joint + a random spec)
    alpha: tuple[float, ...] | None = None  # CE weight per level; None: 1 each
    beta: float = 0.0  # consistency weight L_reg
    gamma: float = 0.5  # distillation weight L_distill
    temperature: float = 2.0  # distillation temperature T
    distill_direction: str = "seed"  # "seed": KL(p_i||p_k) | "teacher": KL(p_k||p_i)
    reg_layers: tuple[int, ...] | None = None  # blocks where L_reg applies; None: all
    lr_scale: tuple[float, ...] | None = None  # lambda_i per level; None: 1 each
    augment: bool = True  # images only: random shifts of up to one pixel
    seed: int = 0
    precision: str = "fp32"  # the forward and backward: "fp32", or "bf16" under autocast
    teacher: str | None = None  # the frozen teacher checkpoint whose logits were cached
    train_rows: int | None = None  # a subset of the training split, when one was drawn

    def __post_init__(self) -> None:
        if self.schedule not in SCHEDULES:
            raise ConfigError(f"--schedule must be one of {', '.join(SCHEDULES)}; "
                              f"got {self.schedule!r}")
        if self.precision not in TRAIN_PRECISIONS:
            raise ConfigError(f"--precision must be one of {', '.join(TRAIN_PRECISIONS)}; "
                              f"got {self.precision!r}")
        if self.distill_direction not in ("seed", "teacher"):
            raise ConfigError("distill_direction must be 'seed' or 'teacher'")
        if self.epochs < 1 or self.batch_size < 1:
            raise ConfigError("--epochs and the batch size must be at least 1")
        numbers = {"--lr": self.lr, "--temperature": self.temperature, "--beta": self.beta,
                   "--gamma": self.gamma, "weight_decay": self.weight_decay,
                   "warmup": self.warmup, **{f"--alpha[{i}]": a
                                             for i, a in enumerate(self.alpha or ())},
                   **{f"--lr-scale[{i}]": v for i, v in enumerate(self.lr_scale or ())}}
        for name, v in numbers.items():
            if not math.isfinite(v):  # NaN passes every comparison below
                raise ConfigError(f"{name} must be a finite number; got {v}")
        if self.lr <= 0 or self.temperature <= 0:
            raise ConfigError("--lr and --temperature must be positive")
        if min(self.beta, self.gamma, self.weight_decay, self.warmup) < 0:
            raise ConfigError("--beta, --gamma, weight_decay and warmup must be non-negative")

    def alphas(self, levels: tuple[int, ...]) -> dict[int, float]:
        a = self.alpha if self.alpha is not None else (1.0,) * len(levels)
        if len(a) != len(levels):
            raise ConfigError(f"--alpha needs {len(levels)} values, one per level; got {len(a)}")
        return dict(zip(levels, a))


# The training recipe each model preset was tuned with; command-line flags override it.
RECIPES: dict[str, dict] = {
    # Measured on the demo digits (docs/results.md, "Demo results"): 60 epochs; the largest level,
    # which is also the distillation teacher, weighs 2; Hinton's KL(teacher || student).
    "demo": dict(epochs=60, alpha=(1.0, 1.0, 1.0, 2.0), distill_direction="teacher"),
    "tiny": dict(epochs=6, batch_size=64, lr=3e-3),
    # Measured on the text demo (docs/results.md, "Text demo"): 5 epochs at lr 3e-3 (1e-3 left the
    # levels 1-2 points apart after 5 epochs); the demo's recipe otherwise.
    "text": dict(epochs=5, batch_size=32, lr=3e-3, alpha=(1.0, 1.0, 1.0, 2.0),
                 distill_direction="teacher"),
    "tiny-text": dict(epochs=6, batch_size=32, lr=3e-3),
    # An imported pretrained encoder (train --pretrained): BERT's fine-tuning recipe, a small
    # learning rate for a few epochs (docs/pretrained.md).
    "pretrained": dict(epochs=2, batch_size=16, lr=5e-5, warmup=0.1, weight_decay=0.01),
}
# A fine-tuned encoder nested by heads (train --init-from X --nesting heads --levels ...):
# the pretrained recipe (2 epochs), taught by the frozen teacher (Hinton's KL), with the
# consistency term L_reg tying each level's hidden states to the next level's at every layer.
# beta 5e-4 weighs it about as much as the CE over an epoch of MiniLM (a sum over 384
# features of 6 layers and 3 pairs); on the spam demo it brought h3 within 1 point of h12 on
# two seeds (docs/pretrained.md).
RECIPES["nested"] = dict(RECIPES["pretrained"], distill_direction="teacher", beta=5e-4)
# Nested by its hidden width (the default): the same, at twice the learning rate. A quarter of
# the width loses far more than a quarter of the heads and must recover; on the spam demo
# lr 1e-4 beat 5e-5 on validation at every level (width 96: 0.9576 against 0.9492), and the
# second epoch is needed (docs/pretrained.md#nest-the-hidden-width).
RECIPES["nested_width"] = dict(RECIPES["nested"], lr=1e-4)


def check_data_fits(cfg: MatryoshkaConfig, data: Dataset) -> None:
    """Raise a DataError when the data set's shapes or labels cannot feed this model."""
    x, _ = data["train"]
    if cfg.input_kind == "image":
        want = (cfg.image_size, cfg.image_size)
        if x.shape[1:] != want:
            raise DataError(f"the model takes images of shape {want}; the data has "
                            f"{tuple(x.shape[1:])}")
    elif x.ndim != 2 or x.shape[1] > cfg.max_len:
        raise DataError(f"the model takes token ids [n, <= {cfg.max_len}]; the data has "
                        f"{tuple(x.shape)}")
    else:
        check_token_ids(data, cfg.vocab_size)
    top = max(int(y.max()) for _, y in data.values())
    if top >= cfg.n_classes:
        raise DataError(f"labels go up to {top} but the model has {cfg.n_classes} classes")


def check_token_ids(data: Dataset, vocab_size: int | None = None) -> None:
    """Token ids must be integers, non-negative (and below vocab_size, when one is given), in
    sequences of at least one token, in every split."""
    for split, (x, _) in data.items():
        if not np.issubdtype(x.dtype, np.integer):
            raise DataError(f"{split}: token ids must be integers, got dtype {x.dtype}")
        if x.shape[1] == 0:
            raise DataError(f"{split}: token sequences must hold at least one token")
        lo, hi = int(x.min()), int(x.max())
        if lo < 0:
            raise DataError(f"{split}: token ids must be non-negative; got {lo}")
        if vocab_size is not None and hi >= vocab_size:
            raise DataError(f"{split}: token ids must be below the vocabulary size "
                            f"{vocab_size}; got {hi}")


def config_for_data(cfg: MatryoshkaConfig, data: Dataset) -> MatryoshkaConfig:
    """The preset adapted to the data: image size or vocabulary, classes, pixel scale."""
    x = data["train"][0]
    n_classes = max(int(y.max()) for _, y in data.values()) + 1
    if np.issubdtype(x.dtype, np.integer) and x.ndim == 2:
        check_token_ids(data)
        vocab = max(int(v[0].max()) for v in data.values()) + 1
        return dataclasses.replace(cfg, input_kind="tokens", vocab_size=vocab,
                                   max_len=x.shape[1], n_classes=n_classes)
    if x.ndim == 3 and x.shape[1] == x.shape[2]:
        scale = float(max(float(np.abs(v[0]).max()) for v in data.values())) or 1.0
        return dataclasses.replace(cfg, input_kind="image", image_size=x.shape[1],
                                   pixel_scale=scale, n_classes=n_classes)
    raise DataError(f"cannot tell the input kind of samples shaped {tuple(x.shape[1:])}: "
                    "images must be [n, side, side], token ids [n, length] integers")


def config_for_text(cfg: MatryoshkaConfig, tokenizer, n_classes: int) -> MatryoshkaConfig:
    """The preset adapted to raw text: the tokenizer's vocabulary and truncation length."""
    from matryoshka.runtime.text import PAD_ID

    return dataclasses.replace(cfg, input_kind="text", vocab_size=tokenizer.get_vocab_size(),
                               max_len=int(tokenizer.truncation["max_length"]),
                               n_classes=n_classes, pad_id=PAD_ID)


def levels_for_step(schedule: str, levels: tuple[int, ...], epoch: int, epochs: int,
                    rng: np.random.Generator) -> list[int]:
    """Which levels a step trains. progressive: stage s of k trains levels 1..s; mix trains
    every level, and `random_spec` adds a sub-model."""
    if schedule in ("joint", "mix"):
        return list(levels)
    if schedule == "sampled":
        return [levels[int(rng.integers(len(levels)))]]
    stage = min(len(levels) - 1, epoch * len(levels) // epochs)
    return list(levels[: stage + 1])


def lr_at(step: int, total: int, base: float, warmup: float) -> float:
    """Linear warmup over the first `warmup` fraction, then cosine decay to zero."""
    w = max(1, int(total * warmup))
    if step < w:
        return base * (step + 1) / w
    return base * 0.5 * (1 + math.cos(math.pi * (step - w) / max(1, total - w)))


def shift_images(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """Shift each image by -1, 0 or +1 pixels on each axis, filling with zeros."""
    b, h, w = x.shape
    padded = torch.nn.functional.pad(x, (1, 1, 1, 1))
    dy = torch.randint(0, 3, (b,), generator=gen)
    dx = torch.randint(0, 3, (b,), generator=gen)
    rows = (dy[:, None] + torch.arange(h)[None, :])[:, :, None].expand(b, h, w)
    cols = (dx[:, None] + torch.arange(w)[None, :])[:, None, :].expand(b, h, w)
    return padded[torch.arange(b)[:, None, None], rows, cols]


@torch.no_grad()
def evaluate(model: MatryoshkaTransformer, x: np.ndarray, y: np.ndarray,
             levels: tuple[int, ...] | None = None, batch: int = 512,
             dist: Dist = Dist()) -> dict[int, dict]:
    """Accuracy and mean cross-entropy of every level on (x, y).

    Distributed, each rank evaluates every world-th row and the sums are reduced, so every
    rank gets the same numbers.
    """
    was = model.training
    model.eval()
    out = {}
    xt = torch.as_tensor(x[dist.rank::dist.world])
    yt = torch.as_tensor(y[dist.rank::dist.world], dtype=torch.long)
    for dim in levels or model.config.levels:
        logits = torch.cat([model(xt[i:i + batch], level=dim)
                            for i in range(0, len(xt), batch)])
        correct = float((logits.argmax(-1) == yt).sum())
        loss = float(torch.nn.functional.cross_entropy(logits, yt, reduction="sum"))
        correct, loss, n = all_reduce_sum([correct, loss, float(len(yt))], dist)
        out[dim] = {"accuracy": correct / n, "loss": loss / n}
    model.train(was)
    return out


def check_finite_loss(epoch_loss: float, epoch: int, tcfg: TrainConfig, dist: Dist) -> None:
    """Stop when the loss went NaN or inf during the epoch. Its sum is reduced over the ranks
    first, so every rank stops at the same epoch and none waits on a collective forever."""
    (total,) = all_reduce_sum([epoch_loss], dist)
    if not math.isfinite(total):
        raise TrainingError(f"the training loss became {total} in epoch {epoch + 1}; no "
                            f"checkpoint was written (try a lower --lr than {tcfg.lr:g})")


def train_step(wrapped: torch.nn.Module, opt: torch.optim.Optimizer, xb: torch.Tensor,
               yb: torch.Tensor, active: list, tcfg: TrainConfig,
               alphas: dict[int, float], lr: float,
               teacher: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
    """One optimisation step: one forward over the active levels (and the sub-model Spec
    among them, schedule mix), one backward, one update. `teacher`: a frozen model's logits
    for this batch, which then teach every level (else the largest level teaches)."""
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=tcfg.precision == "bf16"):
        terms = _step_loss(wrapped, xb, yb, active, tcfg, alphas, teacher)
    for g in opt.param_groups:
        g["lr"] = lr
    opt.zero_grad(set_to_none=True)
    terms["total"].backward()
    opt.step()
    return terms


def _step_loss(wrapped, xb, yb, active, tcfg: TrainConfig, alphas, teacher):
    outs, mixes = [], []
    for level, logits, hidden in wrapped(xb, active):
        if isinstance(level, Spec):
            mixes.append(LevelOutput(level.dim, logits, hidden))
        else:
            outs.append(LevelOutput(level, logits, hidden))
    layers = list(tcfg.reg_layers) if tcfg.reg_layers is not None else None
    terms = total_loss(outs, yb, alphas=alphas, beta=tcfg.beta, gamma=tcfg.gamma,
                       temperature=tcfg.temperature, reg_layers=layers,
                       direction=tcfg.distill_direction, teacher=teacher)
    for mix in mixes:  # weighted as an average level, and taught like one
        weight = sum(alphas.values()) / len(alphas)
        terms["ce"] = terms["ce"] + weight * F.cross_entropy(mix.logits, yb)
        if teacher is not None:
            terms["distill"] = terms["distill"] + distillation(
                [mix], tcfg.gamma, tcfg.temperature, tcfg.distill_direction, teacher)
        elif outs and outs[-1].dim == max(alphas):  # the largest level teaches, when it ran
            terms["distill"] = terms["distill"] + distillation(
                [mix, outs[-1]], tcfg.gamma, tcfg.temperature, tcfg.distill_direction)
        terms["total"] = terms["ce"] + terms["reg"] + terms["distill"]
    return terms
def epoch_order(n: int, epoch: int, rng: np.random.Generator, sampler) -> torch.Tensor:
    """This rank's sample order for one epoch: a seeded permutation, or the
    DistributedSampler's shard (set_epoch reshuffles it the same way on every rank)."""
    if sampler is None:
        return torch.as_tensor(rng.permutation(n))
    sampler.set_epoch(epoch)
    return torch.as_tensor(list(sampler))


def train(cfg: MatryoshkaConfig, data: Dataset, tcfg: TrainConfig, out: str | Path,
          force: bool = False, progress: bool = True, data_name: str | dict = "",
          init: MatryoshkaTransformer | None = None, files: dict[str, bytes] | None = None,
          labels: list[str] | None = None, teacher_logits: np.ndarray | None = None) -> dict:
    """Train a model and write its checkpoint folder to `out` atomically; returns metrics.

    `data_name` is the data's record (matryoshka.data.source), kept in metrics.json so that
    export, calibrate and bench find the same data; `labels` are the class names; `files`
    are written into the checkpoint too (tokenizer.json for text).
    `init` starts from another model's weights (same config) instead of a random draw.
    `teacher_logits` [n_train, n_classes], a frozen teacher's logits on the training split
    (row for row), teach every level in place of the largest one.
    Under torchrun the data is sharded over the ranks, gradients are all-reduced by DDP,
    metrics are reduced, and rank 0 alone writes the checkpoint.
    """
    check_data_fits(cfg, data)
    alphas = tcfg.alphas(cfg.levels)
    n_train = len(data["train"][0])
    if teacher_logits is not None and teacher_logits.shape != (n_train, cfg.n_classes):
        raise ConfigError(f"the teacher's logits are shaped {teacher_logits.shape}; the "
                          f"training split needs ({n_train}, {cfg.n_classes})")
    dist = init_from_env()
    try:
        if dist.main:
            with atomic_dir(out, force) as tmp:
                metrics, model = _fit(cfg, data, tcfg, tmp, progress, data_name, init, dist,
                                      alphas, teacher_logits)
                metrics["labels"] = list(labels or [str(i) for i in range(cfg.n_classes)])
                save_checkpoint(tmp, model, metrics, files)
        else:
            metrics, _ = _fit(cfg, data, tcfg, None, False, data_name, init, dist, alphas,
                              teacher_logits)
    finally:
        shutdown(dist)
    return metrics


def _fit(cfg, data, tcfg, tmp: Path | None, progress, data_name, init, dist: Dist, alphas,
         teacher_logits):
    torch.manual_seed(tcfg.seed)
    rng = np.random.default_rng(tcfg.seed)  # the same draws on every rank (sampled levels)
    gen = torch.Generator().manual_seed(tcfg.seed + dist.rank)
    model = MatryoshkaTransformer(cfg)
    if init is not None:
        model.load_state_dict(init.state_dict())
    wrapped = wrap(model, dist, tcfg.schedule)
    opt = make_optimizer(model, tcfg.lr, tcfg.weight_decay, tcfg.lr_scale)
    x = torch.as_tensor(data["train"][0]).to(torch.float32 if cfg.input_kind == "image"
                                             else torch.long)
    y = torch.as_tensor(data["train"][1], dtype=torch.long)
    taught = None if teacher_logits is None else torch.as_tensor(teacher_logits,
                                                                  dtype=torch.float32)
    sampler = None
    if dist.enabled:
        from torch.utils.data import DistributedSampler

        sampler = DistributedSampler(range(len(x)), num_replicas=dist.world, rank=dist.rank,
                                     shuffle=True, seed=tcfg.seed)
    per_rank = len(sampler) if sampler is not None else len(x)
    steps_per_epoch = math.ceil(per_rank / tcfg.batch_size)
    total = steps_per_epoch * tcfg.epochs
    best, best_key, best_epoch, best_val = None, None, 0, {}
    start, step = time.perf_counter(), 0
    # disable=None: tqdm hides itself when stderr is not a terminal (CI logs, pipes)
    bar = tqdm(total=total, desc="train", unit="step", disable=None if progress else True,
               leave=False)
    logf = open(tmp / "metrics.jsonl", "w") if tmp is not None else None
    try:
        for epoch in range(tcfg.epochs):
            model.train()
            order = epoch_order(len(x), epoch, rng, sampler)
            sums = {"ce": 0.0, "reg": 0.0, "distill": 0.0, "total": 0.0}
            for b in range(steps_per_epoch):
                idx = order[b * tcfg.batch_size:(b + 1) * tcfg.batch_size]
                xb, yb = x[idx], y[idx]
                if tcfg.augment and cfg.input_kind == "image":
                    xb = shift_images(xb, gen)
                active = levels_for_step(tcfg.schedule, cfg.levels, epoch, tcfg.epochs, rng)
                if tcfg.schedule == "mix":
                    active.append(random_spec(cfg, rng))
                lr = lr_at(step, total, tcfg.lr, tcfg.warmup)
                terms = train_step(wrapped, opt, xb, yb, active, tcfg, alphas, lr,
                                   None if taught is None else taught[idx])
                for k in sums:
                    sums[k] += float(terms[k].detach()) / steps_per_epoch
                step += 1
                bar.update(1)
                if b % 10 == 9 or b == steps_per_epoch - 1:  # the epoch's mean loss so far
                    mean = sums["total"] * steps_per_epoch / (b + 1)
                    bar.set_postfix(epoch=epoch + 1, loss=f"{mean:.4f}", refresh=False)
            check_finite_loss(sums["total"], epoch, tcfg, dist)
            val = evaluate(model, *data["val"], dist=dist)
            mean_acc = float(np.mean([v["accuracy"] for v in val.values()]))
            mean_loss = float(np.mean([v["loss"] for v in val.values()]))
            key = (mean_acc, -mean_loss)
            if best_key is None or key > best_key:
                best_key, best_epoch, best_val = key, epoch, val
                best = {k: v.clone() for k, v in model.state_dict().items()}
            rec = {"epoch": epoch, "lr": lr, "seconds": time.perf_counter() - start,
                   "train": sums, "val_accuracy": {str(k): v["accuracy"] for k, v in val.items()},
                   "val_loss": {str(k): v["loss"] for k, v in val.items()}}
            if logf is not None:
                logf.write(json.dumps(rec) + "\n")
                logf.flush()
            bar.set_postfix(epoch=epoch + 1, loss=f"{sums['total']:.4f}",
                            val_acc=f"{mean_acc:.3f}")
    finally:
        bar.close()
        if logf is not None:
            logf.close()
    train_seconds = time.perf_counter() - start
    model.load_state_dict(best)
    model.eval()
    test, val = evaluate(model, *data["test"], dist=dist), best_val  # val: as scored at its epoch
    metrics = {
        "model": cfg.name,
        "data": data_name,
        "levels": list(cfg.levels),
        "test_accuracy": {str(k): v["accuracy"] for k, v in test.items()},
        "val_accuracy": {str(k): v["accuracy"] for k, v in val.items()},
        "params": {str(k): count_params(extract_level(model, k)) for k in cfg.levels},
        "flops_per_sample": {str(k): flops_per_sample(cfg, k) for k in cfg.levels},
        "best_epoch": best_epoch,
        "train_seconds": round(train_seconds, 2),
        "world_size": dist.world,
        "train_config": dataclasses.asdict(tcfg),
        "torch_version": torch.__version__,
    }
    return metrics, model
