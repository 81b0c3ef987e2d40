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
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from matryoshka.data import Dataset
from matryoshka.data.fit import check_data_fits
from matryoshka.errors import ConfigError, TrainingError
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
from matryoshka.training.config import TrainConfig
from matryoshka.training.distributed import Dist, all_reduce_sum, init_from_env, shutdown, wrap
from matryoshka.training.objective import LevelOutput, total_loss
from matryoshka.training.optim import make_optimizer

log = logging.getLogger(__name__)


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
        logits = torch.cat([model(model.trim(xt[i:i + batch]), level=dim)
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
               teacher: torch.Tensor | None = None,
               mask: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
    """One optimisation step: one forward over the active levels (and the sub-model Spec
    among them, schedule mix), one backward, one update. `teacher`: a frozen model's logits
    for this batch, which then teach every level (else the largest level teaches). `mask`:
    the real tokens of a text batch, over which L_reg and L_hidden average."""
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=tcfg.precision == "bf16"):
        terms = _step_loss(wrapped, xb, yb, active, tcfg, alphas, teacher, mask)
    for g in opt.param_groups:
        g["lr"] = lr
    opt.zero_grad(set_to_none=True)
    terms["total"].backward()
    opt.step()
    return terms


def _step_loss(wrapped, xb, yb, active, tcfg: TrainConfig, alphas, teacher, mask):
    outs, submodels = [], []
    for level, logits, hidden in wrapped(xb, active):
        group = submodels if isinstance(level, Spec) else outs
        group.append(LevelOutput(level.dim if isinstance(level, Spec) else level, logits, hidden))
    layers = list(tcfg.reg_layers) if tcfg.reg_layers is not None else None
    return total_loss(outs, yb, alphas=alphas, beta=tcfg.beta, gamma=tcfg.gamma,
                      temperature=tcfg.temperature, reg_layers=layers,
                      direction=tcfg.distill_direction, teacher=teacher, submodels=submodels,
                      mu=tcfg.mu, mask=mask)


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
                metrics, model = _train_rank(cfg, data, tcfg, tmp, progress, data_name, init, dist,
                                      alphas, teacher_logits)
                metrics["labels"] = list(labels or [str(i) for i in range(cfg.n_classes)])
                save_checkpoint(tmp, model, metrics, files)
        else:
            metrics, _ = _train_rank(cfg, data, tcfg, None, False, data_name, init, dist, alphas,
                              teacher_logits)
    finally:
        shutdown(dist)
    return metrics


def _train_rank(cfg, data, tcfg, tmp: Path | None, progress, data_name, init, dist: Dist, alphas,
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
            sums = {"ce": 0.0, "reg": 0.0, "distill": 0.0, "hidden": 0.0, "total": 0.0}
            for b in range(steps_per_epoch):
                idx = order[b * tcfg.batch_size:(b + 1) * tcfg.batch_size]
                xb, yb = model.trim(x[idx]), y[idx]
                if tcfg.augment and cfg.input_kind == "image":
                    xb = shift_images(xb, gen)
                active = levels_for_step(tcfg.schedule, cfg.levels, epoch, tcfg.epochs, rng)
                if tcfg.schedule == "mix":
                    active.append(random_spec(cfg, rng))
                lr = lr_at(step, total, tcfg.lr, tcfg.warmup)
                terms = train_step(wrapped, opt, xb, yb, active, tcfg, alphas, lr,
                                   None if taught is None else taught[idx], model.mask(xb))
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
