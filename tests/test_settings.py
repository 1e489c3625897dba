"""Typed, range-checked settings (animegen.settings): every field of every family's configs
has a limit, types come from annotations (so a field defaulting to None refuses text), and
out-of-range values are refused with one line naming the setting."""

import typing
from dataclasses import dataclass
from typing import ClassVar

import pytest

from animegen.errors import UserError
from animegen.models import registry
from animegen.settings import Limit, at_least, between, build, field_names, limits_of, one_of, positive
from animegen.training.config import TrainConfig, make_config


@pytest.mark.parametrize("family", registry.names())
def test_every_setting_of_every_family_has_a_limit(family):
    spec = registry.get(family)
    for cls in (spec.model.config_class, spec.objective.config_class, TrainConfig):
        hints, limits = typing.get_type_hints(cls), limits_of(cls)
        missing = [name for name in field_names(cls) if name not in limits and hints[name] is not bool]
        assert not missing, f"{cls.__name__}: no limit for {missing}"
        assert set(limits) <= set(field_names(cls)), f"{cls.__name__}: limits for no field"


@dataclass
class Example:
    count: int = 1
    rate: float | None = None
    betas: tuple[float, float] = (0.5, 0.9)
    mode: str = "a"
    flag: bool = False
    limits: ClassVar[dict[str, Limit]] = {"count": between(1, 10), "rate": positive(1), "betas": Limit(0, 1, high_open=True),
                                          "mode": one_of("a", "b")}


@pytest.mark.parametrize("values, message", [
    ({"count": 0}, r"count=0 is out of range: it must be in \[1, 10\]"),
    ({"count": 11}, r"count=11 is out of range"),
    ({"count": 2.5}, r"count=2.5 should be an integer"),
    ({"count": True}, r"count=True should be an integer"),
    ({"count": "3"}, r"count='3' should be an integer"),
    ({"rate": "fast"}, r"rate='fast' should be a number or null"),  # its default None lets no text through
    ({"rate": 0}, r"rate=0 is out of range: it must be in \(0, 1\]"),
    ({"rate": float("nan")}, r"rate=nan is out of range: it must be a finite number"),
    ({"rate": float("inf")}, r"rate=inf is out of range"),
    ({"rate": 10**400}, r"is out of range: it must be a finite number"),  # too large for a float
    ({"betas": [0.5]}, r"betas=\[0.5\] should be a list of 2"),
    ({"betas": [0.5, 1.0]}, r"betas=\[0.5, 1.0\] is out of range: it must be in \[0, 1\)"),
    ({"mode": "c"}, r"mode='c' is not accepted: it must be one of a, b"),
    ({"mode": ""}, r"mode='' should be a non-empty text"),
    ({"flag": 1}, r"flag=1 should be true or false"),
    ({"other": 1}, r"unknown setting 'other'"),
])
def test_bad_values_are_refused_naming_the_setting(values, message):
    with pytest.raises(UserError, match=message):
        build(Example, values)


def test_good_values_are_coerced():
    built = build(Example, {"count": 10, "rate": 1, "betas": [0, 0.99], "mode": "b", "flag": True})
    assert built == Example(10, 1.0, (0.0, 0.99), "b", True) and isinstance(built.rate, float)
    assert build(Example, {"rate": None}).rate is None
    assert at_least(0).problem(-1) == ">= 0" and at_least(0).problem(0) is None


def test_preset_values_and_run_seeds_are_checked_too():
    spec = registry.get("stylegan2")
    with pytest.raises(UserError, match=r"--seed -1 is out of range"):
        make_config(spec, "d", 32, "tiny", {}, -1)
    with pytest.raises(UserError, match=r"setting augment='sometimes' is not accepted"):
        make_config(spec, "d", 32, "tiny", {"augment": "sometimes"}, 0)
    with pytest.raises(UserError, match=r"setting fid_every='-2kimg' is not accepted"):
        make_config(spec, "d", 32, "tiny", {"fid_every": "-2kimg"}, 0)
    with pytest.raises(UserError, match=r"setting augment_ops=\['xflip', 'warp'\] is not accepted"):
        make_config(spec, "d", 32, "tiny", {"augment_ops": ["xflip", "warp"]}, 0)
    config = make_config(spec, "d", 32, "tiny", {"r1_gamma": None, "ckpt_every": 500}, 0)
    assert config.objective_config.r1_gamma is None and config.train.ckpt_every == "500"
