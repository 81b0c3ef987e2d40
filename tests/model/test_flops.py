"""FLOPs per level as a polynomial in the length, checked against torch's own FLOP counter."""

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from matryoshka.model import MatryoshkaTransformer, extract_level, flops_per_sample, flops_terms
from matryoshka.model.config import preset
from matryoshka.runtime.manifest import level_flops


def _counted(model, x) -> int:
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        model(x)
    return counter.get_total_flops()


@pytest.mark.parametrize("name,length", [("tiny", None), ("tiny-text", 32), ("tiny-text", 7)])
def test_the_polynomial_counts_every_matrix_product(name, length):
    torch.manual_seed(0)
    cfg = preset(name)
    model = MatryoshkaTransformer(cfg).eval()
    n = length or cfg.n_tokens
    x = (torch.randint(2, cfg.vocab_size, (1, n)) if cfg.input_kind == "text"
         else torch.rand(1, cfg.image_size, cfg.image_size))
    for dim in cfg.levels:
        terms = flops_terms(cfg, dim)
        entry = {"flops_per_sample": flops_per_sample(cfg, dim), "flops": terms}
        # torch counts the matrix products (projections, FFN, q.k, p.v, the head, the patch
        # embedding); the polynomial adds the pooling sum, dim per token
        assert level_flops(entry, n) - n * dim == _counted(extract_level(model, dim), x)
    assert level_flops(entry) == flops_per_sample(cfg, cfg.levels[-1])


def test_attention_grows_with_the_square_of_the_length():
    cfg = preset("tiny-text")
    entry = {"flops_per_sample": 1, "flops": flops_terms(cfg, cfg.levels[-1])}
    f = [level_flops(entry, n) for n in (8, 16, 24)]
    second_difference = f[2] - 2 * f[1] + f[0]  # only the n**2 term survives
    assert second_difference == entry["flops"]["per_pair"] * (24**2 - 2 * 16**2 + 8**2)
    assert entry["flops"]["per_pair"] == 2 * cfg.n_layers * 2 * cfg.levels[-1]


def test_demo_full_length_counts_are_pinned():
    cfg = preset("demo")
    assert [flops_per_sample(cfg, d) for d in cfg.levels] == [
        542_208, 2_132_992, 8_460_288, 33_697_792]
