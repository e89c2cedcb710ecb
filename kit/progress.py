"""Progress bars: tqdm's on a terminal or in a notebook, plain lines in a log. Every bar of the kit is made here.

A bar redraws itself with carriage returns, which a log file (``make demo > log``, a batch job, CI) keeps as one
long line of noise. Where stderr is not a terminal (nor a notebook kernel), ``progress_bar`` writes plain lines instead:
one when the work starts, then at most one every ``LOG_EVERY_S`` seconds, and one when it ends.
"""

from __future__ import annotations

import os
import sys
import time

from tqdm.auto import tqdm as _tqdm_auto
from tqdm.std import tqdm as _tqdm_std

LOG_EVERY_S = 30.0  # seconds between two plain progress lines in a log (a 10-min matching run: about 20 lines)
_FORMAT = "{desc}: {n_fmt}/{total_fmt} {unit} ({percentage:.0f}%) in {elapsed}, {rate_fmt}, about {remaining} left"
_FORMAT_OPEN = "{desc}: {n_fmt} {unit} in {elapsed}, {rate_fmt}"  # no total: no share, no estimate
_FORMAT_DONE = "{desc}: done, {n_fmt} {unit} in {elapsed}, {rate_fmt}"


class _Discard:
    """tqdm's own writes (its bar, \\r and \\n) go here; ``_LogLines.display`` writes the lines."""

    def write(self, text: str) -> None:
        pass

    def flush(self) -> None:
        pass


class _LogLines(_tqdm_std):
    """A tqdm whose display is a plain line, rate-limited to ``LOG_EVERY_S``, plus a last line when it ends."""

    def __init__(self, *args, **kw):
        self._log = kw.pop("file", None) or sys.stderr
        self._last_line_t, self._last_line_n = None, None
        super().__init__(*args, file=_Discard(), **kw)

    def display(self, msg=None, pos=None):
        # tqdm calls this on start, on its own refresh and, with msg="", to clear a bar that does not stay
        if msg == "" or self._last_line_n == self.n:
            return False
        now = time.monotonic()
        if self._last_line_t is not None and now - self._last_line_t < LOG_EVERY_S and not self._ending:
            return False
        d = self.format_dict
        fmt = _FORMAT_OPEN if not d.get("total") else _FORMAT if d["n"] < d["total"] else _FORMAT_DONE
        line = fmt.format(
            desc=d.get("prefix") or "progress", n_fmt=_count(d["n"], d), total_fmt=_count(d.get("total") or 0, d),
            unit=d.get("unit") or "it", percentage=100 * d["n"] / (d.get("total") or 1),
            elapsed=self.format_interval(d["elapsed"]), rate_fmt=_rate(d),
            remaining=self.format_interval((d["total"] - d["n"]) / d["rate"]) if d.get("total") and d.get("rate")
            else "?")
        self._log.write(line + "\n")
        self._log.flush()
        self._last_line_t, self._last_line_n = now, self.n
        return True

    _ending = False

    def close(self):
        if not self.disable and not self._ending:
            self._ending = True
            self.display()  # the last state, whatever the interval
        super().close()


def _count(n: float, d: dict) -> str:
    return _tqdm_std.format_sizeof(n) if d.get("unit_scale") else f"{n:,.0f}"


def _rate(d: dict) -> str:
    rate = d.get("rate") or (d["n"] / d["elapsed"] if d["elapsed"] else None)
    return f"{rate:,.1f} {d.get('unit') or 'it'}/s" if rate else f"? {d.get('unit') or 'it'}/s"


def _interactive(stream) -> bool:
    """Whether ``stream`` shows a redrawn bar well: a terminal, or a notebook kernel (tqdm.auto's widget)."""
    if "ipykernel" in sys.modules:
        return True
    try:
        return stream.isatty()
    except (AttributeError, ValueError):  # no isatty, or a closed stream
        return False


def progress_bar(iterable=None, *, disable: bool = False, **kw):
    """A tqdm (same arguments) for ``iterable``, or to ``update`` by hand: tqdm.auto's bar where stderr is a terminal
    or a notebook, plain lines (``_LogLines``) elsewhere. ``$TQDM_DISABLE`` (1/true) turns every one off."""
    disable = bool(disable) or os.environ.get("TQDM_DISABLE", "").lower() in ("1", "true")
    cls = _tqdm_auto if _interactive(kw.get("file") or sys.stderr) else _LogLines
    return cls(iterable, disable=disable, **kw)
