"""Post-hoc EMA (Karras et al. 2024, "Analyzing and Improving the Training Dynamics of
Diffusion Models", EDM2, sec. 3 and appendix C): the EMA length is chosen after training.

A run with `posthoc_ema` tracks one EMA per listed length (training.ema.PowerEMAs) and
stores them all every `posthoc_every` and at the end of training (RUN/posthoc/step-N/). Any
other length is then a linear combination of those snapshots: the one whose averaging profile
comes closest to the length's own, in the least-squares sense. `animegen ema` writes it as a
checkpoint; `eval --ema-length` and `compare --ema-lengths` measure lengths without writing them.

The profiles. A power-function EMA at step t weighs the weights of time tau <= t by
p_t(tau) = (g+1) tau^g / t^(g+1) (g: gamma). Step by step it is
    ema_t = beta_t ema_(t-1) + (1 - beta_t) weights_t,    beta_t = (1 - 1/t)^(g+1),
which, unrolled, gives step i the weight (i^(g+1) - (i-1)^(g+1)) / t^(g+1): the integral of p_t
over (i-1, i]. The discrete EMA *is* the continuous profile applied to weights that stay
constant within a step, so the least-squares fit below, done in continuous time, describes
what the snapshots hold exactly.

A length is the profile's standard deviation relative to its time, sigma_rel =
sqrt((g+1) / ((g+2)^2 (g+3))), a fraction of training whatever t is (g is not). sigma_rel
rises from 0 at g = -1 to its largest value, 0.30028, at g = (sqrt(5) - 3)/2 and falls back to
0 as g grows; the plain average of all steps (g = 0) has sigma_rel = 1/sqrt(12) = 0.2887. EDM2
stores 0.05 and 0.10.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from animegen import runs
from animegen.errors import UserError
from animegen.settings import check_new_folder

DEFAULT_PROFILES = (0.05, 0.10)  # EDM2's two stored lengths


def sigma_rel_of(gamma: float) -> float:
    return math.sqrt((gamma + 1) / ((gamma + 2) ** 2 * (gamma + 3)))


SIGMA_REL_MAX = sigma_rel_of((math.sqrt(5) - 3) / 2)  # 0.30028: no power-function profile is wider
# Narrower profiles (gamma above 10^8) average the last 10^-4 of training, finer than any run here
# stores snapshots; refused so that gamma and the fit stay well inside double precision.
SIGMA_REL_MIN = 1e-4
# A length is refused when the best combination of the snapshots' profiles is further than this from
# its own profile (relative L2 distance). Where the fit is this close the synthesized weights differ
# from a directly tracked EMA by well under 1% of their scale (tests/test_posthoc.py measures it).
FIT_TOLERANCE = 0.05


def check_length(sigma_rel: float, option: str = "--length") -> float:
    """`sigma_rel` if a power-function profile has that length, else a UserError naming `option`."""
    if not isinstance(sigma_rel, (int, float)) or isinstance(sigma_rel, bool) or \
            not SIGMA_REL_MIN <= sigma_rel <= SIGMA_REL_MAX:
        raise UserError(f"{option} {sigma_rel!r} is not an EMA length: sigma_rel must be in [{SIGMA_REL_MIN:g}, "
                        f"{SIGMA_REL_MAX:.5f}]; no power-function profile is wider (0.2887 is the plain average of "
                        "all steps).")
    return float(sigma_rel)


def gamma_of(sigma_rel: float) -> float:
    """The exponent of the profile of length `sigma_rel`: sigma_rel^2 (g+2)^2 (g+3) = g+1, i.e.
    g^3 + 7g^2 + (16 - s)g + 12 - s = 0 with s = sigma_rel^-2. Its largest root (g >= -0.382) is
    the profile, weighing later steps more; the middle one, in (-1, -0.382), has the same width
    but weighs the first steps most, and the smallest, below -3, is no distribution."""
    s = check_length(sigma_rel) ** -2
    return float(np.roots([1, 7, 16 - s, 12 - s]).real.max())


def power_beta(step: int, gamma: float) -> float:
    """The decay of a power-function EMA at step `step` (1, 2, ...): 0 at step 1, so the EMA
    starts as the weights after the first step, whatever it held before."""
    return (1 - 1 / step) ** (gamma + 1)


def parse_lengths(text: str, option: str) -> tuple[float, ...]:
    """Comma-separated EMA lengths (--ema-length 0.05,0.1,0.2), each checked."""
    try:
        values = [float(part) for part in text.split(",")]
    except ValueError:
        raise UserError(f"{option} {text!r} is not a comma-separated list of EMA lengths (such as 0.05,0.1,0.2).") \
            from None
    return tuple(check_length(value, option) for value in values)


# ---------------------------------------------------------------- the least-squares fit
def _overlap(t_a, g_a, t_b, g_b):
    """The integral of p_a * p_b for profiles (time, gamma) a and b (arrays broadcast):
    (g_a+1)(g_b+1)/(g_a+g_b+1) (m/t_a)^(g_a+1) (m/t_b)^(g_b+1) / m with m = min(t_a, t_b),
    written with ratios <= 1 so that large exponents cannot overflow."""
    m = np.minimum(t_a, t_b)
    return (g_a + 1) * (g_b + 1) / (g_a + g_b + 1) * (m / t_a) ** (g_a + 1) * (m / t_b) ** (g_b + 1) / m


def fit(times: np.ndarray, gammas: np.ndarray, time: float, gamma: float) -> tuple[np.ndarray, float]:
    """Coefficients x of the stored profiles (times[i], gammas[i]) whose combination comes closest
    to the profile (time, gamma), and the relative L2 distance that is left. The coefficients
    sum to one (a Lagrange multiplier): the result is an average of snapshots, so a weight
    that never moved comes out unchanged instead of scaled by the fit's small total error."""
    a = _overlap(times[:, None], gammas[:, None], times[None], gammas[None])
    b = _overlap(times, gammas, time, gamma)
    n = len(times)
    kkt = np.block([[a, np.ones((n, 1))], [np.ones((1, n)), np.zeros((1, 1))]])
    x = np.linalg.lstsq(kkt, np.append(b, 1.0), rcond=None)[0][:n]
    own = _overlap(time, gamma, time, gamma)
    return x, math.sqrt(max(own - 2 * x @ b + x @ a @ x, 0.0) / own)


# ---------------------------------------------------------------- a run's snapshots
@dataclass
class Length:
    """An EMA length as a combination of a run's snapshots."""

    sigma_rel: float
    gamma: float
    coefficients: np.ndarray  # snapshot x stored profile
    error: float  # relative L2 distance between its profile and the combination's

    def record(self, basis: "Basis") -> dict:
        """What a synthesized checkpoint's state and an evaluation's protocol say about it."""
        return {"sigma_rel": self.sigma_rel, "gamma": self.gamma, "step": basis.steps[-1],
                "profiles": list(basis.profiles), "snapshots": basis.steps, "profile_fit_error": self.error}


@dataclass
class Basis:
    """The post-hoc snapshots of a run: its stored profiles at each snapshot's step."""

    run: runs.Run
    config: dict
    profiles: tuple[float, ...]
    steps: list[int]

    @classmethod
    def of(cls, run: str | os.PathLike) -> "Basis":
        folder = runs.Run(run)
        config = folder.read_config()
        profiles = tuple(config["train"].get("posthoc_ema") or ())
        if not profiles:
            raise UserError(f"{run} was trained without post-hoc EMA profiles, so only its ema_kimg EMA exists; "
                            "train with --set posthoc_ema=[0.05,0.1] to choose the EMA length after training.")
        steps = folder.posthoc_steps()
        if not steps:
            raise UserError(f"{run} has no post-hoc snapshot yet (one every posthoc_every="
                            f"{config['train']['posthoc_every']}, and one when training ends).")
        return cls(folder, config, profiles, steps)

    def _fit(self, sigma_rel: float) -> Length:
        times = np.repeat(np.asarray(self.steps, float), len(self.profiles))
        gammas = np.tile([gamma_of(s) for s in self.profiles], len(self.steps))
        gamma = gamma_of(sigma_rel)
        x, error = fit(times, gammas, float(self.steps[-1]), gamma)
        return Length(sigma_rel, gamma, x.reshape(len(self.steps), len(self.profiles)), error)

    def length(self, sigma_rel: float, option: str = "--length") -> Length:
        """`sigma_rel` made from the snapshots, at the newest one's step; refused where they cannot
        represent it (too few snapshots, or a length far outside the stored ones)."""
        made = self._fit(check_length(sigma_rel, option))
        if made.error > FIT_TOLERANCE:
            low, high = self.representable()
            can = f"from {low:.3g} to {high:.3g}" if low is not None else "none but the stored ones"
            raise UserError(f"{option} {sigma_rel:g}: the {len(self.steps)} post-hoc snapshots of {self.run} (profiles "
                            f"{', '.join(f'{s:g}' for s in self.profiles)}) miss its averaging profile by "
                            f"{made.error:.1%} (at most {FIT_TOLERANCE:.0%}); they represent lengths {can}. More "
                            "snapshots (a smaller posthoc_every, or more training) widen the range.")
        return made

    def representable(self) -> tuple[float | None, float | None]:
        """The range of lengths around the stored ones whose fit is within FIT_TOLERANCE (on a
        grid), or (None, None) where not even the grid points nearest to them are."""
        grid = np.geomspace(0.002, SIGMA_REL_MAX, 60)
        good = [self._fit(float(s)).error <= FIT_TOLERANCE for s in grid]
        nearest = [i for i in (int(np.abs(np.log(grid / s)).argmin()) for s in self.profiles) if good[i]]
        if not nearest:
            return None, None
        start, end = min(nearest), max(nearest)
        while start > 0 and good[start - 1]:
            start -= 1
        while end + 1 < len(grid) and good[end + 1]:
            end += 1
        return float(grid[start]), float(grid[end])

    def synthesize(self, lengths: list[Length]) -> list[tuple[dict[str, torch.Tensor], dict]]:
        """Each length as an ordinary checkpoint (tensors `ema.*` and its state), in one pass
        over the snapshots. Parameters are combined in float64; buffers, which the EMAs copy
        rather than average, are the newest snapshot's."""
        sums: list[dict[str, torch.Tensor]] = [{} for _ in lengths]
        for i, step in enumerate(self.steps):
            tensors, state = self.run.read_posthoc(step)
            for k in range(len(self.profiles)):
                for name, value in runs.module_state(tensors, f"posthoc.{k}").items():
                    if name in state["buffers"]:
                        continue
                    for made, total in zip(lengths, sums):
                        total[name] = total.get(name, 0) + float(made.coefficients[i, k]) * value.double()
        newest = runs.module_state(tensors, "posthoc.0")  # the loop ends on the newest snapshot
        clock = {key: state[key] for key in ("step", "nimg", "train_seconds")}
        out = []
        for made, total in zip(lengths, sums):
            weights = {name: total[name].to(value.dtype) if name in total else value for name, value in newest.items()}
            out.append(({f"ema.{name}": value for name, value in weights.items()},
                        {"model": self.config["model"], "config": self.config, **clock, "posthoc": made.record(self)}))
        return out


def synthesized(run: str | os.PathLike, sigma_rel: float) -> tuple[dict[str, torch.Tensor], dict]:
    """The checkpoint of EMA length `sigma_rel` of `run`, made in memory (`eval --ema-length`)."""
    basis = Basis.of(run)
    (tensors, state), = basis.synthesize([basis.length(sigma_rel, "--ema-length")])
    return tensors, {**state, "checkpoint": str(basis.run.posthoc.resolve())}


def check_lengths(run: str | os.PathLike, lengths, option: str) -> None:
    """Every length of `lengths` representable by `run`'s snapshots, or a UserError for the first that is not."""
    basis = Basis.of(run)
    for sigma_rel in lengths:
        basis.length(sigma_rel, option)


def write_lengths(run: str | os.PathLike, lengths: list[float], out: str | os.PathLike | None = None) -> list[dict]:
    """`animegen ema`: each length synthesized and written as a checkpoint folder, RUN/ema/<length>
    (replaced if there) or OUT/<length> (OUT must not exist); every length is checked before
    anything is read or written. Returns, per length, its folder and how it was made."""
    basis = Basis.of(run)
    made = [basis.length(sigma_rel) for sigma_rel in lengths]
    if out is not None:
        check_new_folder("--out", out)
    written = []
    for length, (tensors, state) in zip(made, basis.synthesize(made)):
        folder = Path(out) / runs.ema_name(length.sigma_rel) if out is not None else \
            basis.run.ema_checkpoint(length.sigma_rel)
        runs.write_checkpoint(folder, tensors, state)
        written.append({"folder": str(folder), **state["posthoc"]})
    return written
