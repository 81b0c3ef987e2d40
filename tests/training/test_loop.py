"""matryoshka.training.loop: which levels a step trains under each schedule, and one step's
loss and gradient (docs/design.md, "The objective")."""

import pytest
import torch


@pytest.mark.parametrize("schedule,expected", [
    ("joint", [[16, 32, 64]] * 6),
    ("progressive", [[16], [16], [16, 32], [16, 32], [16, 32, 64], [16, 32, 64]]),
])
def test_schedules(schedule, expected):
    import numpy as np

    from matryoshka.training.loop import levels_for_step

    rng = np.random.default_rng(0)
    got = [levels_for_step(schedule, (16, 32, 64), e, 6, rng) for e in range(6)]
    assert got == expected


def test_sampled_schedule_draws_one_level_and_covers_all():
    import numpy as np

    from matryoshka.training.loop import levels_for_step

    rng = np.random.default_rng(0)
    draws = [levels_for_step("sampled", (16, 32, 64), 0, 1, rng) for _ in range(60)]
    assert all(len(d) == 1 for d in draws)
    assert {d[0] for d in draws} == {16, 32, 64}


def test_mix_schedule_draws_valid_specs_of_every_kind():
    import numpy as np

    from matryoshka.model import preset
    from matryoshka.training.loop import levels_for_step, random_spec

    cfg, rng = preset("tiny"), np.random.default_rng(0)
    assert levels_for_step("mix", cfg.levels, 0, 1, rng) == [16, 32, 64]
    draws = [random_spec(cfg, rng) for _ in range(200)]
    assert all(cfg.spec(s) == s for s in draws)  # every draw is a valid spec
    assert {s.dim for s in draws} == {16, 32, 64}
    assert {m for s in draws for m in s.ffn} == {24, 48, 96}
    assert {h for s in draws for h in s.heads} == {2, 4, 8}
    assert any(s != cfg.spec(s.dim) for s in draws)  # real mixes, not only the levels


def test_a_mix_step_adds_its_loss_to_the_joint_one():
    """The step's loss is the joint objective plus the mix's CE (weighted as an average
    level) and its distillation from the largest level, and its gradient reaches the mix's
    own slices."""
    import torch.nn.functional as F

    from matryoshka.model import MatryoshkaTransformer, Spec, preset
    from matryoshka.training import TrainConfig, make_optimizer
    from matryoshka.training.distributed import MultiLevel
    from matryoshka.training.loop import train_step
    from matryoshka.training.objective import LevelOutput, distillation, total_loss

    torch.manual_seed(0)
    model = MatryoshkaTransformer(preset("tiny"))
    tcfg = TrainConfig(schedule="mix", gamma=0.5, augment=False)
    x, y = torch.rand(8, 8, 8) * 16, torch.arange(8) % 10
    spec = Spec(16, (96, 24), (8, 2))
    alphas = tcfg.alphas(model.config.levels)
    with torch.no_grad():
        outs = [LevelOutput(d, *model(x, level=d, return_hidden=True)) for d in (16, 32, 64)]
        mix = LevelOutput(16, *model(x, level=spec, return_hidden=True))
        joint = total_loss(outs, y, alphas=alphas, beta=0.0, gamma=0.5, temperature=2.0,
                           direction="seed")["total"]
        want = joint + F.cross_entropy(mix.logits, y) + distillation([mix, outs[-1]], 0.5, 2.0)
    opt = make_optimizer(model, tcfg.lr, tcfg.weight_decay, None)
    terms = train_step(MultiLevel(model), opt, x, y, [16, 32, 64, spec], tcfg, alphas, lr=0.0)
    torch.testing.assert_close(terms["total"].detach(), want, rtol=1e-5, atol=1e-6)
    # with level 16 and the mix alone: layer 0's FFN rows 48..96 get a gradient from the mix
    # only, and in the mix's 16 input columns only
    train_step(MultiLevel(model), opt, x, y, [16, spec], tcfg, alphas, lr=0.0)
    grad = model.blocks[0].ffn.w1.weight.grad
    assert grad[48:96, :16].abs().sum() > 0 and grad[48:96, 16:].abs().sum() == 0


def test_a_text_step_is_the_same_on_the_trimmed_batch():
    """The loop trims each batch's trailing padding; every term (CE, L_reg and L_hidden over
    the real tokens, L_distill) is the same as on the batch padded to max_len, and so is the
    gradient, so trimming changes what a step costs, not what it learns."""
    from matryoshka.model import MatryoshkaTransformer, preset
    from matryoshka.training import TrainConfig
    from matryoshka.training.distributed import MultiLevel
    from matryoshka.training.loop import _step_loss

    torch.manual_seed(0)
    model = MatryoshkaTransformer(preset("tiny-text"))
    tcfg = TrainConfig(beta=0.01, gamma=0.5, mu=1.0)
    x = torch.zeros(4, 32, dtype=torch.long)
    for i, n in enumerate((2, 5, 9, 3)):
        x[i, :n] = torch.randint(1, 100, (n,))
    y = torch.tensor([0, 1, 0, 1])
    alphas = tcfg.alphas(model.config.levels)
    levels = list(model.config.levels)
    terms, grads = [], []
    for xb in (x, model.trim(x)):
        model.zero_grad()
        t = _step_loss(MultiLevel(model), xb, y, levels, tcfg, alphas, None, model.mask(xb))
        t["total"].backward()
        terms.append(t)
        grads.append(model.blocks[0].attn.q.weight.grad.clone())
    assert model.trim(x).shape[1] == 9
    for k in ("ce", "reg", "distill", "hidden", "total"):
        torch.testing.assert_close(terms[1][k], terms[0][k], rtol=1e-5, atol=1e-6)
    assert float(terms[0]["reg"].detach()) > 0 and float(terms[0]["hidden"].detach()) > 0
    torch.testing.assert_close(grads[1], grads[0], rtol=1e-4, atol=1e-6)


def test_the_trimming_benchmark_runs_on_an_imported_encoder(tmp_path, capsys):
    """benchmarks/train_trim.py times the same steps padded and trimmed on a tiny BERT."""
    from benchmarks.train_trim import main
    from tests.model.tiny_bert import labelled_csv, make_tiny_bert

    folder = make_tiny_bert(tmp_path / "bert")
    labelled_csv(tmp_path / "data.csv")
    assert main(["--data", str(tmp_path / "data.csv"), "--pretrained", str(folder),
                 "--levels", "8,16,32", "--max-len", "32", "--steps", "2", "--rounds",
                 "1"]) == 0
    out = capsys.readouterr().out
    assert "trimmed is" in out and "tokens per batch" in out
    assert main(["--data", str(tmp_path / "none.csv"), "--pretrained", str(folder)]) == 2
