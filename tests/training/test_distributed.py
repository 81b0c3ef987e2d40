"""Training under torchrun / DistributedDataParallel with gloo, on this machine's CPUs."""

import os
import subprocess
import sys
import time

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from matryoshka.model import MatryoshkaTransformer, preset
from matryoshka.training import TrainConfig, make_optimizer
from matryoshka.training.distributed import Dist, wrap
from matryoshka.training.loop import train_step

B = 16  # per-rank batch
TCFG = TrainConfig(schedule="joint", beta=0.1, gamma=0.5, augment=False,
                   lr_scale=(1.0, 0.5, 2.0))


def _batch(n):
    g = torch.Generator().manual_seed(3)
    return torch.rand(n, 8, 8, generator=g) * 16, torch.randint(0, 10, (n,), generator=g)


def _model():
    torch.manual_seed(0)
    return MatryoshkaTransformer(preset("tiny"))


def _step(model, wrapped, x, y):
    opt = make_optimizer(model, TCFG.lr, TCFG.weight_decay, TCFG.lr_scale)
    train_step(wrapped, opt, x, y, list(model.config.levels), TCFG,
               TCFG.alphas(model.config.levels), lr=1e-2)


def _ddp_worker(rank, world, init_file, out):
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank,
                            world_size=world)
    try:
        model = _model()
        x, y = _batch(B * world)
        mine = slice(rank * B, (rank + 1) * B)
        _step(model, wrap(model, Dist(rank, world), "joint"), x[mine], y[mine])
        if rank == 0:
            torch.save({k: v.detach() for k, v in model.state_dict().items()}, out)
        # tear down together: once in CI, rank 1 aborted in gloo's teardown ("terminate
        # called without an active exception") while rank 0 was still saving
        dist.barrier()
    finally:
        dist.destroy_process_group()


def test_two_processes_at_batch_b_equal_one_process_at_batch_2b(tmp_path):
    out = tmp_path / "ddp.pt"
    mp.spawn(_ddp_worker, args=(2, str(tmp_path / "init"), str(out)), nprocs=2, join=True)
    ddp_state = torch.load(out)
    model = _model()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    x, y = _batch(2 * B)
    _step(model, wrap(model, Dist(), "joint"), x, y)
    moved = 0.0
    for k, v in model.state_dict().items():
        torch.testing.assert_close(ddp_state[k], v, atol=1e-5, rtol=0, msg=k)
        moved = max(moved, float((v - before[k]).abs().max()))
    assert moved > 1e-3, "the step must actually change the parameters"


def _free_port() -> int:
    """A port free now: each torchrun gets its own, so a previous run's port, still in
    TIME_WAIT, never makes the next one fail to start (it did, once in CI)."""
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _torchrun(*args, timeout=240):
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
           "--master_port", str(_free_port()), "-m", "matryoshka", *args]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env)


def test_torchrun_trains_one_checkpoint_that_loads_and_exports(tmp_path):
    from matryoshka.exporter import export
    from matryoshka.model.checkpoint import load_checkpoint

    out = tmp_path / "ck"
    r = _torchrun("train", "--preset", "tiny", "--epochs", "2", "--out", str(out),
                  "--no-progress")
    assert r.returncode == 0, r.stderr[-3000:]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ck"], "one checkpoint, no leftovers"
    model, metrics = load_checkpoint(out)
    assert metrics["world_size"] == 2
    assert len((out / "metrics.jsonl").read_text().splitlines()) == 2
    manifest = export(out, tmp_path / "exp", progress=False)
    assert [lv["dim"] for lv in manifest["levels"]] == [16, 32, 64]


def test_torchrun_with_a_bad_data_path_fails_fast_and_cleanly(tmp_path):
    t0 = time.monotonic()
    r = _torchrun("train", "--preset", "tiny", "--data", str(tmp_path / "missing.npz"),
                  "--out", str(tmp_path / "ck"), timeout=90)
    assert r.returncode != 0
    assert time.monotonic() - t0 < 60
    errors = [ln for ln in r.stderr.splitlines() if ln.startswith("error: ")]
    assert errors == [f"error: data file not found: {tmp_path / 'missing.npz'}"], \
        r.stderr[-3000:]
    assert not (tmp_path / "ck").exists()
