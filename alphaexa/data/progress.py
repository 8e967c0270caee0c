"""A dependency-free progress line on stderr: bytes and documents read, tokens written, tokens/s.

On a terminal the line is redrawn in place (at most every 0.2 s); in a log file
(batch jobs) a line is appended every 30 s, so logs stay readable.
"""
from __future__ import annotations

import sys
import time
from typing import TextIO


def _human(n: float, unit: str = "") -> str:
    for prefix in ("", "K", "M", "G", "T"):
        if abs(n) < 1000 or prefix == "T":
            return f"{n:.0f}{prefix}{unit}" if prefix == "" else f"{n:.1f}{prefix}{unit}"
        n /= 1000
    raise AssertionError("unreachable")


class Progress:
    def __init__(self, total_bytes: int, label: str, enabled: bool = True, stream: TextIO | None = None):
        self.total_bytes = total_bytes
        self.label = label
        self.stream = stream or sys.stderr
        self.enabled = enabled
        self.interactive = self.stream.isatty()
        self.interval = 0.2 if self.interactive else 30.0
        self.start = self._last = time.perf_counter()
        self.bytes = self.docs = self.tokens = 0

    def update(self, bytes_done: int, docs: int, tokens: int) -> None:
        self.bytes, self.docs, self.tokens = bytes_done, docs, tokens
        now = time.perf_counter()
        if self.enabled and now - self._last >= self.interval:
            self._last = now
            self._draw(final=False)

    def close(self) -> None:
        if self.enabled:
            self._draw(final=True)

    def line(self) -> str:
        elapsed = max(time.perf_counter() - self.start, 1e-9)
        fraction = min(self.bytes / self.total_bytes, 1.0) if self.total_bytes else 1.0
        filled = int(fraction * 20)
        rate = self.tokens / elapsed
        eta = (elapsed / fraction - elapsed) if fraction > 0 else float("nan")
        return (f"{self.label} [{'#' * filled}{'.' * (20 - filled)}] {fraction * 100:5.1f}% "
                f"{_human(self.bytes, 'B')}/{_human(self.total_bytes, 'B')} {self.docs} docs "
                f"{_human(self.tokens)} tokens {_human(rate)} tok/s "
                f"{elapsed:.1f}s" + ("" if fraction >= 1 else f" eta {eta:.0f}s"))

    def _draw(self, final: bool) -> None:
        if self.interactive:
            # \x1b[K clears what a longer previous line left behind
            self.stream.write("\r" + self.line() + "\x1b[K" + ("\n" if final else ""))
        else:
            self.stream.write(self.line() + "\n")
        self.stream.flush()
