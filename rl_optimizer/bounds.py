"""Ranges of numeric config fields: declared once, at the field, and checked by one function.

    @dataclasses.dataclass(frozen=True)
    class Section:
        steps: int = bounded(300, ge=1)  # the default and the range
        __post_init__ = check_bounds     # Section(steps=0): "Section.steps: must be >= 1, got 0"

`check_values` checks a mapping of values against a dataclass's ranges and names the culprit
`where.field` (`features.beta1`, when `config.load_config` reads a config); `check_bounds`, as a
dataclass's `__post_init__`, names it by class (`FeatureConfig.beta1`) when it is built in
Python. The module imports nothing from the package, so any module can declare its ranges
with it (`features.py` does; `config.py` imports `features.py` and re-exports this).
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any


class ConfigError(ValueError):
    """A config that cannot be used; the message names the key or the file position."""


@dataclasses.dataclass(frozen=True)
class Bounds:
    """The allowed range of a numeric field (of each element, for a tuple of numbers).

    Floats must also be finite. None (for an optional field) is always allowed.
    """

    ge: float | None = None
    gt: float | None = None
    le: float | None = None
    lt: float | None = None

    def contains(self, value) -> bool:
        # Every comparison with NaN is False, so NaN fails each bound, as ±inf fails `isfinite`.
        if isinstance(value, float) and not math.isfinite(value):
            return False
        return ((self.ge is None or value >= self.ge) and (self.gt is None or value > self.gt)
                and (self.le is None or value <= self.le) and (self.lt is None or value < self.lt))

    def __str__(self) -> str:
        def text(v):  # integers in full (a seed's bound), floats short
            return str(v) if isinstance(v, int) else f"{v:g}"

        low = (f"[{text(self.ge)}" if self.ge is not None else
               f"({text(self.gt)}" if self.gt is not None else None)
        high = (f"{text(self.le)}]" if self.le is not None else
                f"{text(self.lt)})" if self.lt is not None else None)
        if low and high:
            return f"in {low}, {high}"
        if low:
            return (">= " if low[0] == "[" else "> ") + low[1:]
        if high:
            return ("<= " if high[-1] == "]" else "< ") + high[:-1]
        return "finite"


_BOUNDS_KEY = "bounds"


def bounded(default, **bounds) -> Any:
    """A dataclass field with `default` and a range (`ge`, `gt`, `le`, `lt`, as in `Bounds`)."""
    return dataclasses.field(default=default, metadata={_BOUNDS_KEY: Bounds(**bounds)})


def bounds_of(cls: type) -> dict[str, Bounds]:
    """Field name → `Bounds` for every field of `cls` that declares a range."""
    return {f.name: f.metadata[_BOUNDS_KEY] for f in dataclasses.fields(cls)
            if _BOUNDS_KEY in f.metadata}


def check_values(cls: type, values: dict, where: str) -> None:
    """Raises `ConfigError` naming `where.key` for any value outside its field's range."""
    for name, bounds in bounds_of(cls).items():
        if name not in values or values[name] is None:
            continue
        value = values[name]
        items = enumerate(value) if isinstance(value, tuple | list) else [(None, value)]
        for i, item in items:
            if not bounds.contains(item):
                key = f"{where}.{name}" if where else name
                key += "" if i is None else f"[{i}]"
                raise ConfigError(f"{key}: must be {bounds}, got {item!r}")


def check_bounds(self) -> None:
    """`__post_init__` of a config dataclass: its fields' ranges, named by class and field."""
    check_values(type(self), {f.name: getattr(self, f.name) for f in dataclasses.fields(self)},
                 type(self).__name__)
