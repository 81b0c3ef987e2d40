"""The prefix property: a cut-out level is exactly the nested forward at that width."""

import itertools

import pytest
import torch

from matryoshka.model import MatryoshkaTransformer, count_params, extract_level, preset

VARIANTS = list(itertools.product(("fixed", "proportional"), ("per_level", "shared"),
                                  ("sinusoidal_per_level", "learned")))


def _model(ffn, norm, pe, **kw):
    torch.manual_seed(0)
    return MatryoshkaTransformer(preset("tiny", ffn_nesting=ffn, norm=norm, pos_encoding=pe,
                                        **kw)).eval()


def _inputs(cfg, n=7):
    g = torch.Generator().manual_seed(1)
    if cfg.input_kind == "image":
        return torch.rand(n, 8, 8, generator=g) * 16
    return torch.randint(0, cfg.vocab_size, (n, cfg.max_len), generator=g)


@pytest.mark.parametrize("ffn,norm,pe", VARIANTS)
def test_extracted_level_equals_nested_forward(ffn, norm, pe):
    m = _model(ffn, norm, pe)
    x = _inputs(m.config)
    for d in m.config.levels:
        small = extract_level(m, d).eval()
        torch.testing.assert_close(small(x), m(x, level=d), atol=1e-6, rtol=0)
        full = m.config.d_model
        if d < full:
            for name, p in small.named_parameters():
                assert full not in p.shape, f"{name} {tuple(p.shape)} keeps a d_model axis"


def test_token_input_prefix_property():
    m = _model("proportional", "per_level", "sinusoidal_per_level", input_kind="tokens",
               vocab_size=50, max_len=12)
    x = _inputs(m.config)
    for d in m.config.levels:
        torch.testing.assert_close(extract_level(m, d)(x), m(x, level=d), atol=1e-6, rtol=0)
    # a shorter sequence is fine: the sequence axis is dynamic
    torch.testing.assert_close(extract_level(m, 16)(x[:, :5]), m(x[:, :5], level=16),
                               atol=1e-6, rtol=0)


def _scramble_outside(model, dim):
    """Overwrite every element outside width dim's prefix with random values.

    The prefix is derived here from shapes alone, independently of the model's own view():
    an axis of size d_model keeps its first dim entries, an FFN axis its first m(dim), and a
    per-level norm other than dim's own is scrambled whole.
    """
    cfg = model.config
    d, m_full, m_dim = cfg.d_model, cfg.ffn_width(cfg.d_model), cfg.ffn_width(dim)
    own = cfg.levels.index(dim)
    g = torch.Generator().manual_seed(7)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if ".weight." in name or ".bias." in name:  # per-level / shared norm lists
                idx = int(name.rsplit(".", 1)[1])
                if cfg.norm == "per_level" and idx != own:
                    p.copy_(torch.randn(p.shape, generator=g))
                    continue
            keep = []
            for size in p.shape:
                if size == d:
                    keep.append(slice(0, dim))
                elif size == m_full and cfg.ffn_nesting == "proportional" and m_full != d:
                    keep.append(slice(0, m_dim))
                else:
                    keep.append(slice(None))
            saved = p[tuple(keep)].clone()
            p.copy_(torch.randn(p.shape, generator=g) * 5)
            p[tuple(keep)] = saved


@pytest.mark.parametrize("ffn,norm,pe", VARIANTS)
def test_level_reads_only_its_prefix(ffn, norm, pe):
    m = _model(ffn, norm, pe)
    x = _inputs(m.config)
    for d in m.config.levels[:-1]:
        before = m(x, level=d)
        scrambled = _model(ffn, norm, pe)
        scrambled.load_state_dict(m.state_dict())
        _scramble_outside(scrambled, d)
        assert not torch.equal(scrambled(x), m(x)), "the scramble must change the full level"
        torch.testing.assert_close(scrambled(x, level=d), before, atol=0, rtol=0)


def test_param_count_matches_slices():
    m = _model("proportional", "per_level", "sinusoidal_per_level")
    c = m.config
    small = extract_level(m, 16)
    # by hand: patch embed, per block 4 attn projections + FFN + 2 norms, final norm, head
    d, mid, p2, n_cls = 16, c.ffn_width(16), c.patch_size**2, c.n_classes
    block = 4 * d * d + 3 * d + (d * mid + mid) + (mid * d + d) + 2 * 2 * d  # k has no bias
    expected = (p2 * d + d) + c.n_layers * block + 2 * d + (d * n_cls + n_cls)
    assert count_params(small) == expected


def test_bad_level_is_rejected():
    m = _model("fixed", "shared", "learned")
    with pytest.raises(ValueError, match="not a multiple of head_dim"):
        m(torch.zeros(1, 8, 8), level=12)
    with pytest.raises(ValueError, match="larger than d_model"):
        extract_level(m, 128)
