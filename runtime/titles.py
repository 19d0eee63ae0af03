"""The titles an adaptive answer writes: its current block header's and its earlier blocks'.

Torch-free bookkeeping fed every serial token (`track`, before the constraint advances past it).
The run reads it to open a block on `<|para|>` (`current`), to cut an unfinished header from the
text (`header_start`), to keep a title from repeating any earlier one (`all`), and to draft the
next title's numbering (`closed`, `earlier`).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from .constraint import Phase
from .protocol import SpecialIds


@dataclass
class Titles:
    current: list[list[int]] = field(default_factory=list)  # the current header's titles, token ids
    earlier: list[list[int]] = field(default_factory=list)  # the answer's earlier blocks' titles
    header_start: int = 0  # where the current header opens in the serial stream's generated tokens

    def track(self, tok: int, phase: Phase, position: int, ids: SpecialIds) -> None:
        """`tok`, written at `position` of the serial stream while the constraint was in `phase`."""
        if tok == ids.title:
            if phase is not Phase.TITLES_CLOSED:  # the first title of a header
                self.earlier += self.current
                self.current, self.header_start = [], position
            self.current.append([])
        elif phase is Phase.TITLE and tok != ids.end_title:
            self.current[-1].append(tok)

    def all(self) -> list[list[int]]:
        """Every title of the answer so far, the one being written included."""
        return [*self.earlier, *self.current]

    def closed(self, phase: Phase) -> list[list[int]]:
        """The current header's titles already closed (in `phase`, the constraint's now)."""
        return self.current if phase is Phase.TITLES_CLOSED else self.current[:-1]
