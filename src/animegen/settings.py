"""Typed, range-checked settings: a config dataclass filled from JSON-like values.

Every config dataclass (a family's model and objective configs, `TrainConfig`) declares
the accepted range of each field beside it:

    @dataclass
    class VAEConfig:
        latent_dim: int = 128
        limits: ClassVar[dict[str, Limit]] = {"latent_dim": between(1, 4096)}

`build(cls, values)` checks each value against the field's annotated type (not its
default, so a field defaulting to None still refuses a string) and its limit, and raises
a one-line UserError naming the setting, the value and what is accepted. A test checks
that every field of every registered config has a limit (booleans need none).

The same module checks the single options that library functions and commands take
outside a config: `check_int`, `check_fraction`, and the output paths (`check_new_folder`,
`check_file_output`). Library functions call these themselves, so a library caller is
refused exactly as the command line is, and always before any work or any write. The
ranges of the data and metric commands' numbers are in animegen.data.limits.
"""

from __future__ import annotations

import dataclasses
import math
import numbers
import os
import types
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from animegen.errors import UserError

MAX_RESOLUTION = 4096  # synth draws a 4096 px face in ~6 s and ~2 GB; beyond that nothing is practical
MAX_SEED = 2**32 - 1  # NumPy's RandomState (NVIDIA's seed convention) takes 32-bit seeds


@dataclass(frozen=True)
class Limit:
    """A closed (or half-open) numeric range, a set of choices, or a custom check; applied
    to each element of a tuple-valued setting."""

    low: float | None = None
    high: float | None = None
    low_open: bool = False
    high_open: bool = False
    choices: tuple | None = None
    check: Callable[[Any], str | None] | None = None  # returns what is wrong, or None

    def problem(self, value) -> str | None:
        if self.choices is not None:
            return None if value in self.choices else f"one of {', '.join(map(str, self.choices))}"
        if self.check is not None:
            return self.check(value)
        if isinstance(value, float) and not math.isfinite(value):
            return f"a finite number {self.describe()}"
        too_low = self.low is not None and (value <= self.low if self.low_open else value < self.low)
        too_high = self.high is not None and (value >= self.high if self.high_open else value > self.high)
        return self.describe() if too_low or too_high else None

    @property
    def verdict(self) -> str:
        return "is out of range" if self.choices is None and self.check is None else "is not accepted"

    def describe(self) -> str:
        if self.low is not None and self.high is not None:
            return f"in {'(' if self.low_open else '['}{self.low:g}, {self.high:g}{')' if self.high_open else ']'}"
        if self.low is not None:
            return f"{'>' if self.low_open else '>='} {self.low:g}"
        return f"{'<' if self.high_open else '<='} {self.high:g}" if self.high is not None else "any number"


def between(low: float, high: float) -> Limit:
    return Limit(low, high)


def at_least(low: float, high: float | None = None) -> Limit:
    return Limit(low, high)


def positive(high: float | None = None) -> Limit:
    return Limit(0, high, low_open=True)


def one_of(*choices) -> Limit:
    return Limit(choices=tuple(choices))


def parsed_by(parse: Callable[[Any], Any], accepted: str) -> Limit:
    """Values that `parse` takes without a UserError; `accepted` says what they look like."""
    def problem(value) -> str | None:
        try:
            parse(value)
        except UserError:
            return accepted
        return None

    return Limit(check=problem)


FRACTION = between(0, 1)
SEED = between(0, MAX_SEED)
RESOLUTION = between(8, MAX_RESOLUTION)  # the family's own rule is checked too (Model.check_resolution)
WIDTH = between(1, 16384)  # channels of a layer
CHANNEL_BASE = between(1, 2**22)  # StyleGAN's channel_base: channels at resolution r = min(base / r, max)
LATENT = between(1, 16384)
LEARNING_RATE = at_least(0, 10)  # 0 freezes a network (a test does)
ADAM_BETA = Limit(0, 1, high_open=True)
TRUNCATION = between(-10, 10)  # StyleGAN's psi: 1 off, 0 the average face, beyond 1 exaggerates
TEMPERATURE = between(0, 10)  # VAE/DCGAN: z scaled by it; 1 off


def limits_of(cls) -> dict[str, Limit]:
    """The limits of `cls` and its bases (a subclass's entry wins)."""
    merged: dict[str, Limit] = {}
    for klass in reversed(cls.__mro__):
        merged.update(vars(klass).get("limits", {}))
    return merged


def field_names(cls) -> list[str]:
    return [f.name for f in dataclasses.fields(cls)]


def build(cls, values: dict, source: str = "setting"):
    """Instantiate dataclass `cls` from `values` after checking each against its type and limit."""
    hints = typing.get_type_hints(cls)
    limits = limits_of(cls)
    names = set(field_names(cls))
    unknown = sorted(set(values) - names)
    if unknown:
        raise UserError(f"unknown {source} {unknown[0]!r} for {cls.__name__}.")
    kwargs = {key: check_value(key, value, hints[key], limits.get(key), source) for key, value in values.items()}
    try:
        return cls(**kwargs)
    except (ValueError, TypeError) as e:  # a constraint between fields, checked by the class itself
        raise UserError(f"{cls.__name__}: {e}") from None


def check_value(key: str, value, hint, limit: Limit | None, source: str = "setting"):
    """`value` coerced to `hint` (int -> float, list -> tuple) and checked against `limit`."""
    coerced = _coerce(value, hint)
    if coerced is _WRONG:
        raise UserError(f"{source} {key}={value!r} should be {_type_name(hint)}.")
    for element in (coerced if isinstance(coerced, tuple) else (coerced,)):
        problem = None if element is None or limit is None else limit.problem(element)
        if problem:
            raise UserError(f"{source} {key}={value!r} {limit.verdict}: it must be {problem}.")
    return coerced


_WRONG = object()


def _coerce(value, hint):
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        options = [a for a in args if a is not type(None)]
        return next((c for c in (_coerce(value, a) for a in options) if c is not _WRONG), _WRONG)
    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            return _WRONG
        element_hints = [args[0]] * len(value) if len(args) == 2 and args[1] is Ellipsis else list(args)
        if len(element_hints) != len(value):
            return _WRONG
        items = tuple(_coerce(v, h) for v, h in zip(value, element_hints))
        return _WRONG if _WRONG in items else items
    if hint is bool:
        return value if isinstance(value, bool) else _WRONG
    if hint is int:
        return value if isinstance(value, int) and not isinstance(value, bool) else _WRONG
    if hint is float:
        if not isinstance(value, (int, float)) or isinstance(value, bool):
            return _WRONG
        try:
            return float(value)
        except OverflowError:  # an integer of hundreds of digits
            return float("inf") if value > 0 else float("-inf")
    if hint is str:  # a number given for a text setting (an interval "500" read as JSON) is its text
        text = str(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else value
        return text if isinstance(text, str) and text.strip() else _WRONG
    return value if isinstance(value, hint) else _WRONG


def _type_name(hint) -> str:
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        return " or ".join("null" if a is type(None) else _type_name(a) for a in args)
    if origin is tuple:
        if len(args) == 2 and args[1] is Ellipsis:
            return f"a list (each {_type_name(args[0])})"
        return f"a list of {len(args)} ({', '.join(_type_name(a) for a in args)})"
    return {bool: "true or false", int: "an integer", float: "a number", str: "a non-empty text"}.get(
        hint, getattr(hint, "__name__", str(hint)))


# ---------------------------------------------------------------- single options
def check_int(option: str, value, low: int, high: int) -> int:
    """`value` if it is an integer in low..high; otherwise a UserError naming `option`."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or not low <= value <= high:
        raise UserError(f"{option} must be an integer from {low} to {high}, got {value!r}.")
    return int(value)


def check_fraction(option: str, value) -> float:
    """`value` if it is a number in [0, 1); otherwise a UserError naming `option`."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not 0 <= value < 1:
        raise UserError(f"{option} must be a number from 0 up to (not including) 1, got {value!r}.")
    return float(value)


def check_new_folder(option: str, path: str | os.PathLike) -> None:
    """`path` must not exist yet and must be creatable, so a long job cannot fail at its last step."""
    if Path(path).exists():
        raise UserError(f"{path} already exists; choose another {option} or delete it first.")
    _check_creatable(option, path)


def check_file_output(option: str, path: str | os.PathLike) -> None:
    """`path` may be replaced by a file: it is not a folder, and its folder is creatable."""
    if Path(path).is_dir():
        raise UserError(f"{option} {path} is a folder; give the path of a file.")
    _check_creatable(option, path)


def _check_creatable(option: str, path: str | os.PathLike) -> None:
    existing = Path(path).absolute().parent
    while not existing.exists():
        existing = existing.parent
    if not existing.is_dir():
        raise UserError(f"cannot create {option} {path}: {existing} is a file, not a folder.")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise UserError(f"cannot create {option} {path}: no permission to write in {existing}.")
