"""Stop strings: find the earliest one in a growing answer, looking only at the text that can still hold one.

The matcher keeps back the shortest tail of the text that could be the start of a stop string, so every piece is
scanned once together with at most that tail: the work per piece is bounded by the stop strings' lengths, and the
whole answer is matched in time linear in its length (settings cap the strings' number and length).
"""

from __future__ import annotations

from typing import Sequence


class StopStrings:
    """Release text as it arrives, holding back what could still become a stop string; ``hit`` once one appears."""

    def __init__(self, stops: Sequence[str]) -> None:
        self.stops = tuple(s for s in stops if s)
        self.longest = max((len(s) for s in self.stops), default=0)
        self.firsts = {s[0] for s in self.stops}
        self.pending = ""
        self.hit = False

    def feed(self, piece: str) -> str:
        """The text that is safe to show now; everything before the earliest stop string once one appears."""
        if not self.stops or self.hit:
            return piece
        text = self.pending + piece
        found = [at for at in (text.find(stop) for stop in self.stops) if at >= 0]
        if found:
            self.pending, self.hit = "", True
            return text[:min(found)]
        keep = self._open_tail(text)
        self.pending = text[len(text) - keep:]
        return text[:len(text) - keep]

    def _open_tail(self, text: str) -> int:
        """Length of the longest tail of ``text`` that is the beginning of some stop string."""
        for start in range(max(0, len(text) - self.longest + 1), len(text)):
            if text[start] in self.firsts and any(stop.startswith(text[start:]) for stop in self.stops):
                return len(text) - start
        return 0

    def flush(self) -> str:
        out, self.pending = self.pending, ""
        return out
