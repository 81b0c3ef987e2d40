"""What a training run is told: `TrainConfig` (the objective's weights, the optimiser, the
schedule) and the recipe each model preset was measured with.

docs/design.md, "The objective". No torch: a Python caller builds a config before importing the
loop.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from matryoshka.errors import ConfigError

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
    mu: float = 0.0  # hidden-state distillation weight L_hidden
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
                   "--gamma": self.gamma, "--mu": self.mu, "weight_decay": self.weight_decay,
                   "warmup": self.warmup, **{f"--alpha[{i}]": a
                                             for i, a in enumerate(self.alpha or ())},
                   **{f"--lr-scale[{i}]": v for i, v in enumerate(self.lr_scale or ())}}
        for name, v in numbers.items():
            if not math.isfinite(v):  # NaN passes every comparison below
                raise ConfigError(f"{name} must be a finite number; got {v}")
        if self.lr <= 0 or self.temperature <= 0:
            raise ConfigError("--lr and --temperature must be positive")
        if min(self.beta, self.gamma, self.mu, self.weight_decay, self.warmup) < 0:
            raise ConfigError("--beta, --gamma, --mu, weight_decay and warmup must be "
                              "non-negative")

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
# two seeds (docs/pretrained-log.md#nested-by-heads).
RECIPES["nested"] = dict(RECIPES["pretrained"], distill_direction="teacher", beta=5e-4)
# Nested by its hidden width (the default): the same, at twice the learning rate. A quarter of
# the width loses far more than a quarter of the heads and must recover; on the spam demo
# lr 1e-4 beat 5e-5 on validation at every level (width 96: 0.9576 against 0.9492), and the
# second epoch is needed (docs/pretrained-log.md#nest-the-hidden-width).
RECIPES["nested_width"] = dict(RECIPES["nested"], lr=1e-4)
