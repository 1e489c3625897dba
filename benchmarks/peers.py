"""Our networks against the peer a user would pick instead, side by side in one run on the same inputs.

    python benchmarks/peers.py --peers-site /work/peers/site --nvlabs /work/peers/stylegan3
    python benchmarks/peers.py --preset paper64 --resolution 64 --batch 2 --out table.md ...

- ddpm: our U-Net, schedule and samplers against diffusers' `UNet2DModel` holding the same weights
  (`animegen.interop.unet2d`) with its DDPMScheduler (training: add_noise, eps MSE, Adam,
  grad clip 1) and DPMSolverMultistepScheduler (2M, trailing timesteps, the same number of steps).
- stylegan2, stylegan3-t, stylegan3-r: our G and D against NVIDIA's (NVlabs/stylegan3 checkout,
  `--nvlabs DIR`, imported from there at run time; its custom ops take their PyTorch reference
  path on CPU) with the same architecture hyperparameters (`nvlabs_kwargs`): G forward (no grad),
  G forward+backward, and a D step (real and fake logits, logistic loss, Adam).

Peers are never dependencies: diffusers comes from `--peers-site DIR` (a `pip install --target`
folder, appended to sys.path so it cannot shadow our own packages). A peer that is absent skips
its rows with a message. Ours is prepared as training prepares it (`Objective.prepare`: NHWC
weights where faster), each peer as its own code runs it. Timing: after warm-up, ours and the peer
alternate within each repeat; the table shows the median img/s of each (per CPU second of the
process, which other jobs on a shared machine do not inflate) and ours / peer. CPU only: process
time does not see a GPU's work.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import math
import statistics
import sys
import time
import types
from pathlib import Path

import torch
import torch.nn.functional as F

from animegen import heap
from animegen.diffusion import samplers
from animegen.interop import unet2d
from animegen.models import registry
from animegen.training.config import make_config
from animegen.training.objective import TrainContext

STYLEGANS = ("stylegan2", "stylegan3-t", "stylegan3-r")
HEADER = ("| family | what | preset shape | res | batch | ours img/s | peer img/s | ours/peer | params ours / peer "
          "| notes |\n|---|---|---|---:|---:|---:|---:|---:|---|---|")


def count(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def median_rates(ours, peer, batch: int, repeats: int, warmup: int, min_seconds: float = 0.5
                 ) -> tuple[float, float]:
    """img/s of two callables, in CPU seconds of this process (time.process_time), so that the other
    jobs on a shared machine do not enter. After `warmup` calls of each, `repeats` timings of each;
    a timing sums as many calls as it takes the slower callable to fill `min_seconds`, ours and the
    peer alternating call by call. The medians over the repeats."""
    took = {}
    for name, fn in (("ours", ours), ("peer", peer)):
        for _ in range(warmup):
            start = time.process_time()
            fn()
            took[name] = time.process_time() - start
    calls = max(1, math.ceil(min_seconds / max(took.values()))) if warmup else 1
    times = {"ours": [], "peer": []}
    for _ in range(repeats):
        spent = {"ours": 0.0, "peer": 0.0}
        for _ in range(calls):
            for name, fn in (("ours", ours), ("peer", peer)):
                start = time.process_time()
                fn()
                spent[name] += time.process_time() - start
        for name in times:
            times[name].append(spent[name] / calls)
    return batch / statistics.median(times["ours"]), batch / statistics.median(times["peer"])


# ---------------------------------------------------------------- DDPM vs diffusers
def diffusers_peer(diffusers, model):
    """diffusers' UNet2DModel with our U-Net's weights (animegen.interop.unet2d), and the
    scheduler config of our noise schedule."""
    config = unet2d.unet2d_config(model.unet.config)
    peer = diffusers.UNet2DModel(**{k: v for k, v in config.items() if not k.startswith("_")})
    peer.load_state_dict(unet2d.to_diffusers(model.unet.state_dict()), strict=True)
    return peer, model.diffusers_form().scheduler


def ddpm_rows(args, diffusers) -> list[str]:
    spec = registry.get("ddpm")
    config = make_config(spec, "-", args.resolution, args.preset, {}, 0)
    batch = args.batch or config.train.batch
    torch.manual_seed(0)
    model = spec.model(config.model_config)
    objective = spec.objective(model, config.objective_config, TrainContext(torch.device("cpu")))
    objective.prepare()  # as training prepares it (NHWC weights)
    peer, scheduler_config = diffusers_peer(diffusers, model)
    train_scheduler = diffusers.DDPMScheduler.from_config(scheduler_config)
    c = config.objective_config
    optimizer = torch.optim.Adam(peer.parameters(), lr=c.lr, betas=c.betas)
    real = torch.rand(batch, 3, args.resolution, args.resolution) * 2 - 1

    def peer_train_step():
        noise = torch.randn_like(real)
        t = torch.randint(0, model.config.timesteps, (batch,))
        loss = F.mse_loss(peer(train_scheduler.add_noise(real, noise, t), t, return_dict=False)[0], noise)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(peer.parameters(), c.grad_clip)
        optimizer.step()

    shape = f"{args.preset} (base {model.unet.config.base_channels}, mults {model.unet.config.channel_mults})"
    params = f"{count(model) / 1e6:.3f} M / {count(peer) / 1e6:.3f} M"
    model.train(), peer.train()
    step = iter(range(10**9))
    rates = median_rates(lambda: objective.train_step(real, next(step)), peer_train_step, batch,
                         args.repeats, args.warmup)
    rows = [row("ddpm", "train step", shape, args, batch, rates, params, "diffusers UNet2DModel + DDPMScheduler")]

    steps = args.sample_steps
    sample_scheduler = diffusers.DPMSolverMultistepScheduler.from_config(
        scheduler_config, algorithm_type="dpmsolver++", solver_order=2, timestep_spacing="trailing")
    x_T = torch.randn(batch, 3, args.resolution, args.resolution)

    @torch.no_grad()
    def peer_sample():
        sample_scheduler.set_timesteps(steps)
        x = x_T * sample_scheduler.init_noise_sigma
        for t in sample_scheduler.timesteps:
            x = sample_scheduler.step(peer(x, t, return_dict=False)[0], t, x, return_dict=False)[0]
        return x

    def our_sample():
        return samplers.sample(model.unet, model.schedule, x_T.shape, sampler="dpm-solver++", steps=steps,
                               prediction=model.config.prediction, x_T=x_T)

    model.eval(), peer.eval()
    rates = median_rates(our_sample, peer_sample, batch, max(1, args.repeats // 2), 1)
    rows.append(row("ddpm", f"sample, DPM-Solver++(2M) {steps} steps", shape, args, batch, rates, params,
                    "DPMSolverMultistepScheduler; ours clips x0 to [-1,1]"))
    return rows


# ---------------------------------------------------------------- StyleGAN vs NVIDIA
def import_nvlabs(folder: Path):
    """NVIDIA's network modules, imported from their checkout; their ops' CUDA plugins are never
    built (`_init` says unavailable), so every op runs its PyTorch reference implementation.
    Without setuptools' pkg_resources (gone from recent setuptools) its one use, parse_version,
    is given by `packaging`."""
    sys.path.append(str(folder))
    if importlib.util.find_spec("pkg_resources") is None:
        shim = types.ModuleType("pkg_resources")
        shim.parse_version = importlib.import_module("packaging.version").Version
        sys.modules["pkg_resources"] = shim
    for op in ("bias_act", "upfirdn2d", "filtered_lrelu"):
        importlib.import_module(f"torch_utils.ops.{op}")._init = lambda: False
    return (importlib.import_module("training.networks_stylegan2"),
            importlib.import_module("training.networks_stylegan3"))


def nvlabs_kwargs(family: str, model_config, objective_config) -> tuple[dict, dict]:
    """NVIDIA Generator and Discriminator kwargs for our configs, fp32 (num_fp16_res 0) and, for
    StyleGAN2, fused modulated convolutions outside training as train.py sets them."""
    c = model_config
    g = {"z_dim": c.z_dim, "c_dim": 0, "w_dim": c.w_dim, "img_resolution": c.resolution, "img_channels": 3,
         "mapping_kwargs": {"num_layers": c.mapping_layers, "lr_multiplier": c.mapping_lr_mult,
                            "w_avg_beta": c.w_avg_beta},
         "channel_base": c.channel_base, "channel_max": c.channel_max, "conv_clamp": c.conv_clamp, "num_fp16_res": 0}
    if family == "stylegan2":
        g["fused_modconv_default"] = "inference_only"
    else:
        g.update(num_layers=c.num_layers, num_critical=c.num_critical, first_cutoff=c.first_cutoff,
                 first_stopband=c.first_stopband, last_stopband_rel=c.last_stopband_rel, margin_size=c.margin,
                 output_scale=c.output_scale, conv_kernel=c.conv_kernel, filter_size=c.filter_size,
                 lrelu_upsampling=c.lrelu_upsampling, use_radial_filters=c.radial_filters,
                 magnitude_ema_beta=c.magnitude_ema_beta)
    o = objective_config
    d = {"c_dim": 0, "img_resolution": c.resolution, "img_channels": 3, "channel_base": o.d_channel_base,
         "channel_max": o.d_channel_max, "conv_clamp": o.d_conv_clamp, "num_fp16_res": 0,
         "epilogue_kwargs": {"mbstd_group_size": o.mbstd_group}}
    return g, d


def stylegan_rows(family: str, args, nvlabs) -> list[str]:
    spec = registry.get(family)
    config = make_config(spec, "-", args.resolution, args.preset, {}, 0)
    batch = args.batch or config.train.batch
    torch.manual_seed(0)
    model = spec.model(config.model_config)
    objective = spec.objective(model, config.objective_config, TrainContext(torch.device("cpu")))
    objective.prepare()  # as training prepares it (NHWC weights where faster)
    ours_d = objective.D
    g_kwargs, d_kwargs = nvlabs_kwargs(family, config.model_config, config.objective_config)
    peer_g = (nvlabs[0] if family == "stylegan2" else nvlabs[1]).Generator(**g_kwargs)
    peer_d = nvlabs[0].Discriminator(**d_kwargs)
    z = torch.randn(batch, model.z_dim)
    c = torch.zeros(batch, 0)
    real = torch.rand(batch, 3, args.resolution, args.resolution) * 2 - 1
    fake = torch.rand(batch, 3, args.resolution, args.resolution) * 2 - 1

    def ours_g():
        ws = model.mapping(z)
        if family == "stylegan2":
            return model.synthesis(ws, noise_mode="random", randn=lambda *shape: torch.randn(batch, *shape))
        return model.synthesis(ws)

    def peer_g_forward():
        return peer_g(z, c)

    def backward(generate):
        return lambda: (generate() * fake).sum().backward()

    def d_step(optimizer, logits):
        def step():
            fake_logits, real_logits = logits()
            loss = F.softplus(fake_logits).mean() + F.softplus(-real_logits).mean()
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
        return step

    betas = config.objective_config.adam_betas
    ours_opt = torch.optim.Adam(ours_d.parameters(), lr=config.objective_config.d_lr, betas=betas, eps=1e-8)
    peer_opt = torch.optim.Adam(peer_d.parameters(), lr=config.objective_config.d_lr, betas=betas, eps=1e-8)
    shape = f"{args.preset}"
    g_params = f"G {count(model) / 1e6:.3f} M / {count(peer_g) / 1e6:.3f} M"
    d_params = f"D {count(ours_d) / 1e6:.3f} M / {count(peer_d) / 1e6:.3f} M"
    note = "NVlabs/stylegan3, reference ops"
    model.eval(), peer_g.eval()
    with torch.no_grad():
        rates = median_rates(ours_g, peer_g_forward, batch, args.repeats, args.warmup)
    rows = [row(family, "G forward (eval, no grad)", shape, args, batch, rates, g_params, note)]
    model.train(), peer_g.train(), ours_d.train(), peer_d.train()
    rates = median_rates(backward(ours_g), backward(peer_g_forward), batch, args.repeats, args.warmup)
    rows.append(row(family, "G forward+backward", shape, args, batch, rates, g_params, note))
    # Each D as its own training runs it: ours scores fakes and reals in one pass, NVIDIA's loss in two.
    rates = median_rates(d_step(ours_opt, lambda: ours_d(torch.cat([fake, real]), batches=2).chunk(2)),
                         d_step(peer_opt, lambda: (peer_d(fake, c), peer_d(real, c))), batch, args.repeats, args.warmup)
    rows.append(row(family, "D step (real+fake, Adam)", shape, args, batch, rates, d_params,
                    note + "; ours in one pass, NVIDIA's in two, as each trains"))
    return rows


# ---------------------------------------------------------------- table
def row(family, what, shape, args, batch, rates, params, notes) -> str:
    ours, peer = rates
    return (f"| {family} | {what} | {shape} | {args.resolution} | {batch} | {ours:.3g} | {peer:.3g} | "
            f"{ours / peer:.2f} | {params} | {notes} |")


def load_diffusers(site: str | None):
    if site:
        sys.path.append(site)
    try:
        return importlib.import_module("diffusers")
    except ImportError as error:
        print(f"skipping ddpm: diffusers is not importable ({error}); pass --peers-site DIR", file=sys.stderr)
        return None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--families", default=",".join(("ddpm",) + STYLEGANS))
    parser.add_argument("--preset", default="tiny", choices=registry.PRESETS)
    parser.add_argument("--resolution", type=int, default=32)
    parser.add_argument("--batch", type=int, default=None, help="[default: the preset's]")
    parser.add_argument("--repeats", type=int, default=5, help="timed calls of each, alternated")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--sample-steps", type=int, default=20)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--peers-site", default=None, help="folder with diffusers (pip install --target)")
    parser.add_argument("--nvlabs", type=Path, default=None, help="NVlabs/stylegan3 checkout")
    parser.add_argument("--out", type=Path, default=None, help="also write the table here")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    heap.keep_freed_memory()  # as the animegen command does; for the peers too (one process)
    families = args.families.split(",")
    lines = [f"torch {torch.__version__}, CPU, {torch.get_num_threads()} thread(s); img/s per CPU second; "
             f"median of {args.repeats} repeats after {args.warmup} warm-up calls\n", HEADER]
    print("\n".join(lines), flush=True)
    diffusers = load_diffusers(args.peers_site) if "ddpm" in families else None
    nvlabs = None
    if set(families) & set(STYLEGANS):
        if args.nvlabs is None or not (args.nvlabs / "training" / "networks_stylegan3.py").is_file():
            print(f"skipping StyleGAN rows: no NVlabs/stylegan3 checkout at --nvlabs {args.nvlabs}", file=sys.stderr)
        else:
            nvlabs = import_nvlabs(args.nvlabs)
    for family in families:
        if family == "ddpm" and diffusers is not None:
            new = ddpm_rows(args, diffusers)
        elif family in STYLEGANS and nvlabs is not None:
            new = stylegan_rows(family, args, nvlabs)
        else:
            continue
        print("\n".join(new), flush=True)
        lines += new
    if args.out:
        args.out.write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
