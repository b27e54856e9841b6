"""Live progress: a rich panel on a terminal, a plain line every few seconds otherwise; one line per level.

The display reads the running level's `Counters` four times a second (it never touches the hot path) and
prints each finished level's summary above itself.
"""

from __future__ import annotations

import sys
import time
from typing import Any

from rich.console import Console
from rich.live import Live
from rich.table import Table

from benchmarks.load.scheduler import Counters


def ms(d: dict[str, float] | None, key: str) -> str:
    return f"{1000 * d[key]:.1f} ms" if d else "-"


def level_line(s: dict[str, Any]) -> str:
    """One line summing up a finished level."""
    steady = s["steady_output_tok_s"]
    think = "-" if s["think_rate"] is None else f"{s['think_rate']:.0%}"
    if s["accuracy"] is not None:
        think += f", accuracy {s['accuracy']:.1%}"
    slo = "SLO met" if s["slo"]["met"] else "SLO missed"
    partial = f" PARTIAL ({s['abort_reason']})" if s["partial"] else ""
    return (
        f"{s['load']['label']}: {s['ok']} ok, {s['errors']} errors, {s['output_tok_s']:.0f} tok/s"
        f"{f' (steady {steady:.0f})' if steady is not None else ''}, TTFT p50 {ms(s['ttft_s'], 'p50')} "
        f"p99 {ms(s['ttft_s'], 'p99')}, TPOT p99 {ms(s['tpot_s'], 'p99')}, think {think}, {slo}{partial}"
    )


class LiveDisplay:
    """rich Live panel while a level runs (on a terminal)."""

    def __init__(self, console: Console | None = None) -> None:
        self.console = console or Console(stderr=True)
        self.counters: Counters | None = None
        self.live: Live | None = None

    def level_started(self, counters: Counters) -> None:
        self.counters = counters
        if self.live is None:
            self.live = Live(self._render(), console=self.console, refresh_per_second=4, transient=True)
            self.live.start()

    def refresh(self) -> None:
        if self.live is not None:
            self.live.update(self._render())

    def level_finished(self, stats: dict[str, Any]) -> None:
        self.console.print(level_line(stats), highlight=False, markup=False)

    def close(self) -> None:
        if self.live is not None:
            self.live.stop()
            self.live = None

    def _render(self) -> Table:
        c = self.counters
        t = Table(show_header=True, header_style="bold", box=None)
        for col in ("load", "elapsed", "done / sent", "in flight", "errors", "tok/s"):
            t.add_column(col, justify="right")
        if c is not None:
            el = time.perf_counter() - c.started
            t.add_row(c.label, f"{el:.0f} s", f"{c.done} / {c.issued}", str(c.in_flight), str(c.errors),
                      f"{c.tokens / el:.0f}" if el > 0 else "-")  # fmt: skip
        return t


class PlainDisplay:
    """A progress line every `every_s` seconds (logs, CI), and one line per finished level."""

    def __init__(self, every_s: float = 5.0) -> None:
        self.every_s = every_s
        self.counters: Counters | None = None
        self._last = 0.0

    def level_started(self, counters: Counters) -> None:
        self.counters, self._last = counters, time.perf_counter()

    def refresh(self) -> None:
        c, now = self.counters, time.perf_counter()
        if c is None or now - self._last < self.every_s:
            return
        self._last = now
        el = now - c.started
        print(f"  {c.label}: {el:.0f} s, {c.done}/{c.issued} done, {c.in_flight} in flight, {c.errors} errors, "
              f"{c.tokens / el:.0f} tok/s", file=sys.stderr, flush=True)  # fmt: skip

    def level_finished(self, stats: dict[str, Any]) -> None:
        print(level_line(stats), file=sys.stderr, flush=True)

    def close(self) -> None:
        pass


def make_display(quiet: bool) -> LiveDisplay | PlainDisplay | None:
    if quiet:
        return None
    return LiveDisplay() if sys.stderr.isatty() else PlainDisplay()
