"""Render the benchmark tables of README.md and docs/*.md from bench/results/*.json (no hand-typed figures).

    .venv/bin/python bench/doc_tables.py      # rewrites every marker block in README.md and docs/*.md

A table lives between `<!-- bench:NAME:begin -->` and `<!-- bench:NAME:end -->`; one block may appear in
several files (each gets the same table, its links made relative to that file). Every marker in `MARKERS`
must appear in at least one file, or nothing is written. The tables themselves: `bench/tables_runtime.py`
and `bench/tables_model.py`.
"""

from __future__ import annotations

import json
import os
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if __package__ in (None, ""):  # run as a script: make the repository importable
    sys.path.insert(0, str(ROOT))

from bench import tables_model as model  # noqa: E402
from bench import tables_runtime as rt  # noqa: E402

MARKERS = ("engine", "engine-adapter", "formats", "decoding", "programs", "serve", "cluster", "constrained",
           "faults", "data", "adapter", "vicuna", "steered", "drafts",
           "loss-regions", "loss-positions", "blind-control")


def markdown_files() -> list[Path]:
    """Where the tables live: the README and every page under docs/."""
    return [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]


def relink(table: str, path: Path) -> str:
    """A table's links are written relative to the repository root; make them relative to `path`."""

    def fix(m: re.Match) -> str:
        target = m.group(1)
        if re.match(r"[a-z]+:|/|#", target):
            return m.group(0)
        return "](" + Path(os.path.relpath(ROOT / target, path.parent)).as_posix() + ")"

    return re.sub(r"\]\(([^)\s]+)\)", fix, table)


def replace(text: str, name: str, table: str) -> str:
    begin, end = f"<!-- bench:{name}:begin -->", f"<!-- bench:{name}:end -->"
    block = f"{begin}\n{table}\n{end}"
    return re.sub(re.escape(begin) + ".*?" + re.escape(end), lambda _: block, text, flags=re.S)


def tables() -> dict[str, str]:
    """Every table whose results exist, by marker name."""
    results = ROOT / "bench" / "results"

    def load(path: Path) -> dict:
        return json.loads(path.read_text())

    out = {"engine": rt.engine_table(load(results / "engine.json"))}
    if (results / "engine_adapter.json").exists():
        out["engine-adapter"] = rt.engine_adapter_table(load(results / "engine_adapter.json"))
    if (results / "formats.json").exists():
        adapted = results / "formats_adapter.json"
        out["formats"] = rt.formats_table(load(results / "formats.json"), load(adapted) if adapted.exists() else None)
    if (results / "decoding.json").exists():
        out["decoding"] = model.decoding_table(load(results / "decoding.json"))
    out["programs"] = rt.programs_table(load(results / "programs.json"))
    if (results / "serve_load.json").exists():
        out["serve"] = rt.serve_table(load(results / "serve_load.json"))
    if (results / "constrained.json").exists():
        out["constrained"] = rt.constrained_table(load(results / "constrained.json"))
    if (results / "serve_cluster.json").exists():
        out["cluster"] = rt.cluster_table(load(results / "serve_cluster.json"))
    if (results / "serve_faults.json").exists():
        out["faults"] = rt.faults_table(load(results / "serve_faults.json"))
    # The data behind the shipped adapter: its build's statistics as `aspd train` recorded them.
    shipped = ROOT / "runtime" / "adapters" / "smollm2-135m-aspd" / "training.json"
    if shipped.exists() and (stats := load(shipped).get("data_stats")):
        out["data"] = model.data_table(stats)
    if (results / "adapter.json").exists():
        out["adapter"] = model.adapter_table(load(results / "adapter.json"))
    if (results / "steered_control.json").exists():
        out["steered"] = model.steered_table(load(results / "steered_control.json"))
    if (results / "blind_control.json").exists():
        out["blind-control"] = model.blind_control_table(load(results / "blind_control.json"))
    if (results / "loss_regions.json").exists():
        out["loss-regions"] = model.loss_regions_table(load(results / "loss_regions.json"))
        out["loss-positions"] = model.loss_positions_table(load(results / "loss_regions.json"))
    if (results / "drafts.json").exists():
        out["drafts"] = model.drafts_table(load(results / "drafts.json"))
    vicuna = results / "vicuna80" / "summary.json"
    if vicuna.exists():
        out["vicuna"] = model.vicuna_table(load(vicuna))
    return out


def main() -> None:
    texts = {path: path.read_text() for path in markdown_files()}
    placed = {name: [p for p, t in texts.items()
                     if f"<!-- bench:{name}:begin -->" in t and f"<!-- bench:{name}:end -->" in t] for name in MARKERS}
    if missing := [name for name, paths in placed.items() if not paths]:
        raise SystemExit(f"bench/doc_tables.py: no marker block for {', '.join(missing)} in README.md or docs/*.md")
    new = dict(texts)
    for name, table in tables().items():
        for path in placed[name]:
            new[path] = replace(new[path], name, relink(table, path))
    for path, text in new.items():
        if text != texts[path]:
            path.write_text(text)
    for name, paths in placed.items():
        print(f"{name}: " + ", ".join(str(p.relative_to(ROOT)) for p in paths))


if __name__ == "__main__":
    main()
