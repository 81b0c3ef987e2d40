"""The nested Matryoshka Transformer (torch). DESIGN.md, "The model, made precise"."""

from matryoshka.model.config import (
    PRESETS,
    MatryoshkaConfig,
    parse_levels,
    preset,
    resize,
    validate_levels,
)
from matryoshka.model.transformer import (
    MatryoshkaTransformer,
    count_params,
    extract_level,
    flops_per_sample,
    flops_terms,
)

__all__ = [
    "PRESETS",
    "MatryoshkaConfig",
    "MatryoshkaTransformer",
    "count_params",
    "extract_level",
    "flops_per_sample",
    "flops_terms",
    "parse_levels",
    "preset",
    "resize",
    "validate_levels",
]
