"""The nested Matryoshka Transformer (torch). docs/design.md, "The model"."""

from matryoshka.model.config import (
    PRESETS,
    MatryoshkaConfig,
    parse_levels,
    preset,
    resize,
    validate_levels,
)
from matryoshka.model.spec import Spec, check_mix_name, parse_mix, parse_spec
from matryoshka.model.transformer import (
    Level,
    MatryoshkaTransformer,
    count_params,
    extract_level,
    flops_per_sample,
    flops_terms,
)

__all__ = [
    "PRESETS",
    "Level",
    "MatryoshkaConfig",
    "MatryoshkaTransformer",
    "count_params",
    "extract_level",
    "flops_per_sample",
    "flops_terms",
    "parse_levels",
    "preset",
    "Spec",
    "check_mix_name",
    "parse_mix",
    "parse_spec",
    "resize",
    "validate_levels",
]
