"""Rich rendering of an ASPD response (serial panels, one table per parallel block) and of stats."""

from __future__ import annotations

from collections.abc import Sequence

from rich.console import Group
from rich.panel import Panel
from rich.table import Table
from rich.text import Text

from runtime.protocol import ParallelBlock, Response


def render_response(resp: Response, title: str) -> Panel:
    parts = []
    for seg in resp.segments:
        if isinstance(seg, ParallelBlock):
            t = Table(title=f"parallel block: {len(seg.branches)} branches decoded together", expand=True,
                      title_style="bold magenta", show_lines=True)
            for b in seg.branches:
                t.add_column(b.title.strip() or "branch", ratio=1)
            t.add_row(*(Text(b.text.strip()) for b in seg.branches))
            parts.append(t)
        else:
            parts.append(Panel(Text(seg.text.strip()), title="serial", title_align="left", border_style="cyan"))
    return Panel(Group(*parts), title=title, border_style="green")


def render_stats(rows: Sequence[tuple[str, object]]) -> Table:
    t = Table(show_header=False, box=None)
    for k, v in rows:
        t.add_row(Text(k, style="bold"), str(v))
    return t
