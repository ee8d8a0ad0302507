"""Progress of long commands on stderr, with no dependency: a step's line (:func:`step`), and a
progress bar.

On a terminal it redraws one line (``features [#######.....] 1234/2000 62% 8.1s eta 5s``); when
stderr is a file or a pipe it prints a plain line at every 10% instead, so logs stay readable.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Iterable, Iterator
from typing import IO, TypeVar

__all__ = ["Progress", "track", "step"]

T = TypeVar("T")


def step(msg: str) -> None:
    """One line on stderr, at once: where a long command stands (stdout stays its result)."""
    print(msg, file=sys.stderr, flush=True)


class Progress:
    def __init__(
        self, label: str, total: int | None = None, *, stream: IO[str] | None = None,
        enabled: bool = True, width: int = 24,
    ) -> None:
        self.label = label
        self.total = total
        self.stream = stream or sys.stderr
        self.enabled = enabled
        self.width = width
        self.n = 0
        self.start = time.perf_counter()
        self._tty = bool(getattr(self.stream, "isatty", lambda: False)())
        self._last_draw = 0.0
        self._last_decile = -1

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def update(self, n: int = 1) -> None:
        self.n += n
        if not self.enabled:
            return
        now = time.perf_counter()
        if self._tty:
            if now - self._last_draw >= 0.1 or (self.total and self.n >= self.total):
                self._last_draw = now
                self.stream.write("\r" + self.line() + "\033[K")
                self.stream.flush()
        elif self.total:
            decile = min(10, self.n * 10 // self.total)
            if decile != self._last_decile and decile > 0:
                self._last_decile = decile
                self.stream.write(self.line() + "\n")
                self.stream.flush()

    def line(self) -> str:
        elapsed = time.perf_counter() - self.start
        if not self.total:
            return f"{self.label} {self.n} {elapsed:.1f}s"
        frac = min(1.0, self.n / self.total)
        filled = int(frac * self.width)
        eta = elapsed / frac - elapsed if frac > 0 else 0.0
        bar = "#" * filled + "." * (self.width - filled)
        return (f"{self.label} [{bar}] {self.n}/{self.total} {frac:4.0%} {elapsed:.1f}s"
                + (f" eta {eta:.0f}s" if frac < 1 else ""))

    def close(self) -> None:
        if not self.enabled:
            return
        if self._tty:
            self.stream.write("\r" + self.line() + "\033[K\n")
        elif not self.total or self._last_decile < 10:
            self.stream.write(self.line() + "\n")
        self.stream.flush()


def track(items: Iterable[T], label: str, *, total: int | None = None, enabled: bool = True) -> Iterator[T]:
    """Yield ``items``, drawing progress as they are consumed."""
    if total is None and hasattr(items, "__len__"):
        total = len(items)  # type: ignore[arg-type]
    with Progress(label, total, enabled=enabled) as bar:
        for item in items:
            yield item
            bar.update()
