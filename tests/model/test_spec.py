"""Mix'n'Match specs: parsing, the checks that name the bad layer, the prefix property, FLOPs."""

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from matryoshka.errors import ConfigError
from matryoshka.model import (
    MatryoshkaConfig,
    MatryoshkaTransformer,
    Spec,
    count_params,
    extract_level,
    flops_terms,
    parse_mix,
    parse_spec,
    preset,
)

# tiny: levels 16, 32, 64; head_dim 8 (heads 2, 4, 8); FFN widths 24, 48, 96; 2 layers
MIXES = [Spec(32, (96, 24), (8, 2)), Spec(16, (48, 48), (2, 4)), Spec(64, (24, 96), (4, 8))]


def _model(name="tiny", **kw):
    torch.manual_seed(0)
    return MatryoshkaTransformer(preset(name, **kw)).eval()


def _inputs(cfg, n=5):
    g = torch.Generator().manual_seed(1)
    if cfg.input_kind == "image":
        return torch.rand(n, 8, 8, generator=g) * 16
    x = torch.randint(1, cfg.vocab_size, (n, cfg.max_len), generator=g)
    x[0, 9:] = cfg.pad_id  # a padded row
    return x


def test_parse_fills_every_layer_and_round_trips():
    cfg = preset("tiny")
    assert parse_spec("32:ffn=96", 2, 8) == Spec(32, (96, 96), ())
    assert cfg.spec(parse_spec("32:ffn=96", 2, 8)) == Spec(32, (96, 96), (4, 4))
    assert cfg.spec(parse_spec("32:attn=64,16", 2, 8)) == Spec(32, (48, 48), (8, 2))
    spec = cfg.spec(parse_spec("64:ffn=24,96:heads=4,8", 2, 8))
    assert parse_spec(str(spec), 2, 8) == spec
    assert Spec.from_dict(spec.to_dict()) == spec
    assert parse_mix("mid=32:ffn=96,24", 2, 8) == ("mid", Spec(32, (96, 24), ()))
    # a trained level is the spec of its own widths
    assert cfg.spec(16) == Spec(16, (24, 24), (2, 2))


@pytest.mark.parametrize("text,message", [
    ("48:ffn=96", "residual width 48 is not a trained level (16, 32, 64)"),
    ("32:ffn=96,100", "layer 1: FFN width 100 is not a trained granularity (24, 48, 96)"),
    ("32:ffn=96,48,24", "ffn lists 3 layers; the model has 2"),
    ("32:heads=4,3", "layer 1: 3 heads is not a trained head count (2, 4, 8, at head_dim 8)"),
    ("32:attn=32,20", "layer 1: attention width 20 is not a whole number of heads (head_dim 8 "
                      "does not divide it)"),
    ("32:ffn=0", "layer 0 ffn must be positive"),
    ("32:width=3", "must be ffn=W,..., heads=H,... or attn=A,..."),
])
def test_bad_specs_name_the_bad_layer(text, message):
    cfg = preset("tiny")
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")):
        cfg.spec(parse_spec(text, cfg.n_layers, cfg.head_dim))


def test_mix_names():
    with pytest.raises(ConfigError, match="write NAME=SPEC"):
        parse_mix("32:ffn=96", 2, 8)
    with pytest.raises(ConfigError, match="must start with a letter"):
        parse_mix("1st=32", 2, 8)
    with pytest.raises(ConfigError, match="must start with a letter"):
        parse_mix("a-b=32", 2, 8)


@pytest.mark.parametrize("name", ["tiny", "tiny-text"])
@pytest.mark.parametrize("norm", ["per_level", "shared"])
def test_extracted_mix_equals_nested_forward(name, norm):
    m = _model(name, norm=norm)
    x = _inputs(m.config)
    for spec in [m.config.spec(spec_for(m.config, s)) for s in MIXES]:
        small = extract_level(m, spec).eval()
        torch.testing.assert_close(small(x), m(x, level=spec), atol=1e-6, rtol=0)
        assert count_params(small) < count_params(m)
        # the cut-out's config describes it alone and survives its JSON round trip
        again = MatryoshkaConfig.from_dict(small.config.to_dict())
        assert again == small.config and again.spec() == spec
        rebuilt = MatryoshkaTransformer(again).eval()
        rebuilt.load_state_dict(small.state_dict(), strict=True)
        torch.testing.assert_close(rebuilt(x), m(x, level=spec), atol=1e-6, rtol=0)


def spec_for(cfg, spec: Spec) -> Spec:
    """The same mix on another preset: each width replaced by the one at the same rank."""
    tiny = preset("tiny")
    rank = {16: 0, 32: 1, 64: 2}
    levels = cfg.levels
    ffn = [cfg.ffn_width(levels[[tiny.ffn_width(d) for d in tiny.levels].index(m)])
           for m in spec.ffn]
    heads = [levels[[d // 8 for d in tiny.levels].index(h)] // cfg.head_dim for h in spec.heads]
    return Spec(levels[rank[spec.dim]], tuple(ffn), tuple(heads))


def _scramble_outside(model, spec: Spec) -> None:
    """Overwrite every element outside the mix's slices with random values. The slices are
    derived here from the parameter names alone, independently of the model's view(): the
    residual axis keeps `dim`, a layer's attention axis its heads * head_dim, its FFN axis its
    FFN width, and a per-level norm other than dim's own is scrambled whole."""
    cfg, dim = model.config, spec.dim
    own = cfg.levels.index(dim)
    g = torch.Generator().manual_seed(7)
    with torch.no_grad():
        for name, p in model.named_parameters():
            parts = name.split(".")
            keep: tuple = ()
            if parts[0] == "blocks":
                layer, sub = int(parts[1]), parts[2:]
                a, m = spec.heads[layer] * cfg.head_dim, spec.ffn[layer]
                kind = sub[-1]
                if sub[0] in ("ln1", "ln2"):
                    keep = (slice(0, dim),) if len(model.blocks[0].ln1.weight) == 1 or \
                        int(sub[-1]) == own else None
                elif sub[1] in ("q", "k", "v"):
                    keep = (slice(0, a), slice(0, dim)) if kind == "weight" else (slice(0, a),)
                elif sub[1] == "o":
                    keep = (slice(0, dim), slice(0, a)) if kind == "weight" else (slice(0, dim),)
                elif sub[1] == "w1":
                    keep = (slice(0, m), slice(0, dim)) if kind == "weight" else (slice(0, m),)
                else:  # w2
                    keep = (slice(0, dim), slice(0, m)) if kind == "weight" else (slice(0, dim),)
            elif parts[0] == "ln_f":
                keep = (slice(0, dim),) if len(model.ln_f.weight) == 1 or \
                    int(parts[-1]) == own else None
            elif parts[0] == "head":
                keep = (slice(None), slice(0, dim)) if parts[1] == "weight" else (slice(None),)
            elif parts[0] == "embed":
                keep = ((slice(None), slice(0, dim)) if cfg.input_kind != "image"
                        else (slice(0, dim), slice(None)) if parts[1] == "weight"
                        else (slice(0, dim),))
            saved = p[keep].clone() if keep is not None else None
            p.copy_(torch.randn(p.shape, generator=g) * 10)
            if saved is not None:
                p[keep] = saved


@pytest.mark.parametrize("name", ["tiny", "tiny-text"])
def test_a_mix_reads_only_its_prefixes(name):
    m = _model(name)
    x = _inputs(m.config)
    for spec in [m.config.spec(spec_for(m.config, s)) for s in MIXES]:
        before = m(x, level=spec)
        scrambled = _model(name)
        _scramble_outside(scrambled, spec)
        torch.testing.assert_close(scrambled(x, level=spec), before, atol=1e-6, rtol=0)
        # and the scramble did reach the weights the mix does not read
        assert not torch.allclose(scrambled(x), m(x))


@pytest.mark.parametrize("name,length", [("tiny", None), ("tiny-text", 32), ("tiny-text", 5)])
def test_mix_flops_match_torchs_counter(name, length):
    m = _model(name)
    cfg = m.config
    n = length or cfg.n_tokens
    x = (torch.randint(2, cfg.vocab_size, (1, n)) if cfg.input_kind == "text"
         else torch.rand(1, 8, 8))
    for spec in [cfg.spec(spec_for(cfg, s)) for s in MIXES]:
        with FlopCounterMode(display=False) as counter, torch.no_grad():
            extract_level(m, spec)(x)
        t = flops_terms(cfg, spec)
        # the polynomial also counts the pooling sum, dim per token, which torch does not
        assert t["per_token"] * n + t["per_pair"] * n**2 + t["per_sample"] - n * spec.dim \
            == counter.get_total_flops()


def test_mixes_fall_between_the_levels_they_mix():
    cfg = preset("demo")
    f = [flops_terms(cfg, d)["per_token"] for d in cfg.levels]
    wide_ffn = flops_terms(cfg, Spec(128, (1024, 512), (8, 8)))["per_token"]
    narrow_256 = flops_terms(cfg, Spec(256, (256, 256), (4, 4)))["per_token"]
    assert f[1] < wide_ffn < f[2] and f[1] < narrow_256 < f[2]
