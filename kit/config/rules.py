"""The type and range of a setting, declared next to its default (``"batch_size": Int(32, lo=1)``).

A ``Rule`` holds the default and checks a value: ``rule.problem(value)`` is None when the value is allowed, else
what was expected ("an integer >= 1"). ``also`` names extra values a setting accepts beside its type, such as
``"auto"`` or ``None`` (YAML ``null``). YAML gives ``1`` for ``1.0``, so a float setting takes integers too; a bool
is never taken for a number.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any


def _show(v: Any) -> str:
    return "null" if v is None else repr(v)


@dataclass(frozen=True)
class Rule:
    """One setting: its default and the values it accepts."""

    default: Any
    kind: str  # "int" | "float" | "bool" | "str" | "choice" | "list" | "dict"
    lo: float | None = None  # inclusive bounds of a number (exclusive with ``open``)
    hi: float | None = None
    open: bool = False
    choices: tuple = ()  # "choice": the allowed values
    also: tuple = ()  # values accepted beside the kind (e.g. "auto", None)
    item: Rule | None = None  # "list": the rule of each element
    length: int | None = None  # "list": the exact length, None = any
    min_length: int = 0  # "list": at least this many elements
    pattern: str | None = None  # "str": a regular expression the whole value must match
    extra: dict = field(default_factory=dict, compare=False)

    def expected(self) -> str:
        """What this rule accepts, in words."""
        if self.kind in ("int", "float"):
            noun = "an integer" if self.kind == "int" else "a number"
            lt, gt = ("<", ">") if self.open else ("<=", ">=")
            bounds = [f"{gt} {self.lo:g}" if self.lo is not None else "",
                      f"{lt} {self.hi:g}" if self.hi is not None else ""]
            what = noun + (" " + " and ".join(b for b in bounds if b) if any(bounds) else "")
        elif self.kind == "bool":
            what = "true or false"
        elif self.kind == "choice":
            what = "one of " + ", ".join(_show(c) for c in self.choices)
        elif self.kind == "dict":
            what = "a mapping"
        elif self.kind == "str":
            what = "a text" + (f" matching {self.pattern}" if self.pattern else "")
        else:
            size = (f"{self.length} " if self.length is not None
                    else f"at least {self.min_length} " if self.min_length else "")
            if self.item is not None and self.item.kind == "choice" and set(self.item.choices) <= set(self.also):
                names = ", ".join(_show(c) for c in self.item.choices)  # one name, or a list of names
                rest = [a for a in self.also if a not in self.item.choices]
                return f"one of {names}, or a list of them" + "".join(f", or {_show(a)}" for a in rest)
            what = f"a list of {size}items, each {self.item.expected() if self.item else 'anything'}"
        return what + "".join(f" or {_show(a)}" for a in self.also)

    def problem(self, value: Any) -> str | None:
        """None when ``value`` is allowed, else the expectation it misses."""
        if any(value == a and type(value) is type(a) for a in self.also):
            return None
        ok = {"int": self._number, "float": self._number, "bool": lambda v: isinstance(v, bool),
              "str": self._text, "choice": lambda v: any(v == c and type(v) is type(c) for c in self.choices),
              "list": self._list, "dict": lambda v: isinstance(v, dict)}[self.kind](value)
        return None if ok else self.expected()

    def _number(self, v: Any) -> bool:
        if isinstance(v, bool) or not isinstance(v, (int, float) if self.kind == "float" else int):
            return False
        if v != v:  # NaN
            return False
        if self.lo is not None and (v <= self.lo if self.open else v < self.lo):
            return False
        return not (self.hi is not None and (v >= self.hi if self.open else v > self.hi))

    def _text(self, v: Any) -> bool:
        return isinstance(v, str) and (self.pattern is None or re.fullmatch(self.pattern, v) is not None)

    def _list(self, v: Any) -> bool:
        if not isinstance(v, (list, tuple)) or len(v) < self.min_length:
            return False
        if self.length is not None and len(v) != self.length:
            return False
        return self.item is None or all(self.item.problem(x) is None for x in v)


def Int(default: Any, lo: float | None = None, hi: float | None = None, also: tuple = ()) -> Rule:  # noqa: N802
    return Rule(default, "int", lo, hi, also=also)


def Float(default: Any, lo: float | None = None, hi: float | None = None, also: tuple = (),  # noqa: N802
          open: bool = False) -> Rule:
    return Rule(default, "float", lo, hi, open=open, also=also)


def Bool(default: bool) -> Rule:  # noqa: N802
    return Rule(default, "bool")


def Choice(default: Any, *choices: Any, also: tuple = ()) -> Rule:  # noqa: N802
    return Rule(default, "choice", choices=tuple(choices), also=also)


def Str(default: Any, also: tuple = (), pattern: str | None = None) -> Rule:  # noqa: N802
    return Rule(default, "str", also=also, pattern=pattern)


def List(default: Any, item: Rule | None = None, length: int | None = None, min_length: int = 0,  # noqa: N802
         also: tuple = ()) -> Rule:
    return Rule(default, "list", item=item, length=length, min_length=min_length, also=also)


DEVICE = r"auto|cpu|mps|cuda(:\d+)?"  # what kit.device.resolve understands
