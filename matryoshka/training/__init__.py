"""Training (torch): the nested objective, per-level learning rates, schedules and the loop;
`setup` takes a run from its options to the checkpoint. docs/design.md, "The objective"."""

from matryoshka.data.fit import config_for_data, config_for_text
from matryoshka.training.config import RECIPES, TrainConfig
from matryoshka.training.loop import evaluate, train
from matryoshka.training.objective import LevelOutput, total_loss
from matryoshka.training.optim import ShellAdamW, make_optimizer, shell_index, shell_lr_scales

__all__ = [
    "RECIPES", "LevelOutput", "ShellAdamW", "TrainConfig", "config_for_data", "config_for_text",
    "evaluate", "make_optimizer", "shell_index", "shell_lr_scales", "total_loss", "train",
]
