"""Multi-process training: 2 gloo processes on CPU, given the environment torchrun gives
its workers, train, resume, stay in sync, and match one process with the same global batch."""

import os
import socket

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from animegen import runs
from animegen.data.synth import synthesize_dataset
from animegen.models import registry
from animegen.training import distributed
from animegen.training.loop import Target, train
from animegen.training.objective import TrainContext

SETS = {"batch": 8, "ckpt_every": "2", "sample_every": "0", "log_every": "1", "tensorboard": False}
FAMILY_SETS = {
    "vae": {"channels": 8, "max_channels": 16, "latent_dim": 8},
    "ddpm": {"base_channels": 8, "channel_mults": [1, 2], "attention_resolutions": [8], "num_groups": 4,
             "time_embed_dim": 16, "timesteps": 50, "sample_steps": 2},
    # Both lazy regularizers every 2 steps (path length leaves toRGB biases without a gradient,
    # R1 the output bias of D), ADA's p rising, minibatch-stddev groups of 4 = each rank's share.
    "stylegan2": {"pl_interval": 2, "r1_interval": 2, "ada_target": -1.0, "ada_kimg": 0.05, "ada_interval": 2,
                  "mbstd_group": 4},
}
# Every registered family but these, each of which would add half a minute for no new code path:
EXCLUDED = {"stylegan3-t": "trains through StyleGAN2's objective (lazy regularizers, ADA, minibatch stddev), "
                           "covered by stylegan2",
            "stylegan3-r": "as stylegan3-t",
            "dcgan": "BatchNorm's batch statistics are per rank by design (no SyncBatchNorm), so 2 ranks cannot "
                     "match 1"}
FAMILIES = [family for family in registry.names() if family not in EXCLUDED]
# Observed after 4 steps, as a share of each tensor's largest value: VAE 2.4e-6, DDPM 2.1e-5,
# StyleGAN2 5.5e-5 (float sums in another order: the mean of two 4-image means is not bitwise
# the mean of 8; largest on parameters that start at zero, where Adam's normalization magnifies
# the noise in tiny gradients). Broken equivalence is far off: minibatch-stddev groups that
# depend on the rank layout, or zeros for gradients no rank has, give 3 to 7 times the scale.
RELATIVE_TOLERANCE = 2e-4


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(rank: int, ports: list[int], data: str, run: str, family: str, queue) -> None:
    """Each process group gets its own port: a gloo group re-created on the same port can hang."""
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(ports[0]), RANK=str(rank), LOCAL_RANK=str(rank),
                      WORLD_SIZE="2", OMP_NUM_THREADS="1")
    torch.set_num_threads(1)
    lines = []
    train(run, model=family, data=data, sets={**SETS, **FAMILY_SETS.get(family, {})}, target=Target(steps=2), device="cpu",
          seed=1, echo=lines.append)
    # The resume runs in the same processes (a fresh launch costs half a minute on a busy CI box);
    # train() rebuilds everything from the checkpoint all the same.
    os.environ["MASTER_PORT"] = str(ports[1])
    train(run, target=Target(steps=4), resume=True, device="cpu", echo=lines.append)
    queue.put((rank, "log", len(lines)))

    # The sync check passes above (it runs at every checkpoint); here it must catch a difference.
    os.environ["MASTER_PORT"] = str(ports[2])
    dist.init_process_group("gloo", rank=rank, world_size=2)
    ctx = TrainContext(torch.device("cpu"), rank=rank, world_size=2)
    net = torch.nn.Linear(4, 4)
    with torch.no_grad():
        net.weight.fill_(0.5).add_(rank * 1e-6)
    try:
        distributed.check_in_sync(ctx, [net])
        queue.put((rank, "sync", "passed"))
    except RuntimeError as e:
        queue.put((rank, "sync", str(e)))
    dist.destroy_process_group()


@pytest.mark.parametrize("family", FAMILIES)
def test_two_processes_stay_in_sync_resume_and_match_one(tmp_path, one_thread, family):
    data = tmp_path / "faces"
    synthesize_dataset(data, count=40, resolution=16, seed=0)
    run = tmp_path / "ddp"
    queue = mp.get_context("spawn").SimpleQueue()
    mp.spawn(_worker, args=([_free_port() for _ in range(3)], str(data), str(run), family, queue), nprocs=2)
    results = {(rank, kind): value for rank, kind, value in (queue.get() for _ in range(4))}
    assert results[0, "log"] > 0 and results[1, "log"] == 0  # rank 0 alone logs
    assert all("out of sync" in results[r, "sync"] for r in (0, 1)), results

    single = tmp_path / "single"
    train(str(single), model=family, data=str(data), sets={**SETS, **FAMILY_SETS.get(family, {})}, target=Target(steps=4),
          device="cpu", seed=1, echo=lambda line: None)
    a, state_a = runs.load_checkpoint(run)
    b, state_b = runs.load_checkpoint(single)
    assert state_a["step"] == state_b["step"] == 4 and state_a["world_size"] == 2
    assert state_a["data"] == state_b["data"]
    assert torch.equal(a["rng.draws"], b["rng.draws"])  # every rank drew the same global numbers
    assert a.keys() == b.keys()
    for key in a:
        if a[key].is_floating_point():
            scale = b[key].abs().max().item()
            assert (a[key] - b[key]).abs().max().item() <= RELATIVE_TOLERANCE * scale + 1e-12, key
