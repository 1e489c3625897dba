"""The metrics by name. A metric is computed either from features or from the generator:

  inputs="features"   fn(real, generated) -> dict; both float32 Inception features (N, 2048),
                      extracted once per evaluation and shared by every such metric
  inputs="generator"  fn(generator, names, num=..., batch_size=...) -> dict; metrics that
                      render the model themselves (StyleGAN3's EQ-T / EQ-R); the requested
                      metrics that share one fn are computed in one call, `names` listing
                      them (the EQ metrics share their untransformed renders);
                      `check(generator)` refuses a generator they do not apply to, before
                      any work

Every fn returns a dict of plain values (scores, and the protocol they were measured
with), merged into the result.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Iterable, Literal

from animegen.errors import UserError
from animegen.metrics.equivariance import EQ_METRICS, check_generator, equivariance_metrics
from animegen.metrics.fid import fid
from animegen.metrics.kid import kid
from animegen.metrics.precision_recall import precision_recall


@dataclass(frozen=True)
class Metric:
    name: str
    inputs: Literal["features", "generator"]
    fn: Callable[..., dict]
    check: Callable[[object], None] | None = None


registry: dict[str, Metric] = {m.name: m for m in (
    Metric("fid", "features", fid),
    Metric("kid", "features", kid),
    Metric("pr", "features", precision_recall),
    *(Metric(name, "generator", equivariance_metrics, check_generator) for name in EQ_METRICS),
)}


def lookup(names: Iterable[str]) -> list[Metric]:
    """The metrics named, in order; unknown or missing names are a UserError."""
    names = list(dict.fromkeys(names))
    unknown = [n for n in names if n not in registry]
    if unknown or not names:
        raise UserError(f"unknown metric(s) {', '.join(unknown) or '(none given)'}; choose from {', '.join(registry)}.")
    return [registry[n] for n in names]
