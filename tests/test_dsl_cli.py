"""`aspd run`'s argument parsing and display: JSON arguments, whole values or an explicit ellipsis,
the batch summary (no model)."""

from __future__ import annotations

from rich.console import Console

from aspd_cli.run import _kv, clip, summary
from aspd_lang.executor import RunResult


def test_arg_values_are_strings_or_json():
    got = _kv(["cities=[\"Lima\", \"Oslo\"]", "n=3", "topic=tea time", "quoted=\"12\"", "flag=true", "x=a=b"])
    assert got == {"cities": ["Lima", "Oslo"], "n": 3, "topic": "tea time", "quoted": "12", "flag": "true",
                   "x": "a=b"}


def test_values_are_whole_or_cut_with_an_ellipsis():
    assert clip("a" * 60) == repr("a" * 60)
    long = "word " * 30
    assert clip(long) == f"{long[:60]!r}… (150 chars)"
    assert clip(["Lima", "Oslo"]) == '["Lima", "Oslo"]'


def test_batch_summary_has_a_row_per_run_and_totals():
    runs = [(RunResult(program="p", backend="engine", serial=False, text="", variables={}, completion_tokens=n,
                       seconds=s), None) for n, s in ((10, 1.0), (30, 1.0))]
    con = Console(width=120, record=True)
    con.print(summary(runs))
    out = con.export_text()
    assert "batch: 2 runs" in out and "total" in out and "40" in out and "20.0" in out
