"""Training (torch): the nested objective, per-level learning rates, schedules and the loop.
docs/design.md, "The objective"."""

from matryoshka.training.loop import (
    RECIPES,
    TrainConfig,
    config_for_data,
    config_for_text,
    evaluate,
    train,
)
from matryoshka.training.objective import LevelOutput, total_loss
from matryoshka.training.optim import ShellAdamW, make_optimizer, shell_index, shell_lr_scales

__all__ = [
    "RECIPES", "LevelOutput", "ShellAdamW", "TrainConfig", "config_for_data", "config_for_text",
    "evaluate",
    "make_optimizer", "shell_index", "shell_lr_scales", "total_loss", "train",
]
