"""Calibrate the adapter's fork threshold: a logit offset on `<|title|>` (opening a parallel block).

The trained model opens blocks on prompts that do not call for them (markup tokens were up-weighted
in training so that it learns them at all). One scalar, fitted on the calibration split (prompts
training never sees), trades that back: the largest offset (the least suppression) at which the
model forks on at most `target` of the non-list prompts (default 10%, the bar the held-out split is
held to). The held-out evaluation split is never used here.

With a fork gate (`runtime/fork_gate.py`, fitted here first on the training prompts' kinds) a chat
answer's offset is `low + (high - low) * p`, p the gate's probability that the prompt is list-like;
each prompt's threshold from the same sweep predicts every (low, high) pair's fork rates.

Greedy decoding makes the search cheap and exact: lowering the offset cannot change an answer that
did not fork (the offset only moves a logit that never won), so each grid value re-decodes only
the prompts that still fork, and only up to their first `<|title|>` (a stop token here).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from runtime.engine import Engine
from runtime.errors import UserError
from runtime.fork_gate import GATE_FILE, offset
from runtime.model_loader import FORK_BIAS_FILE
from runtime.offline import complete_all
from runtime.sampling import SamplingParams

# Positive offsets too: an adapter trained on few parallel answers under-forks on list-like prompts
# (v5 and v6 both still met the 10% bound at +5, the old top of the grid).
GRID = (12.0, 11.0, 10.0, 9.0, 8.0, 7.0, 6.0, 5.0, 4.0, 3.0, 2.0, 1.0, 0.0,
        -0.5, -1.0, -1.25, -1.5, -1.75, -2.0, -2.5, -3.0, -4.0, -6.0)


class CalibrationError(UserError, ValueError):
    """Calibration cannot run or finds no offset (the message says why)."""


@dataclass(frozen=True)
class Point:
    bias: float
    fork_rate: dict[str, float]  # kind -> share of prompts that forked


@dataclass(frozen=True)
class Threshold:
    """Where one prompt starts to fork: at every offset >= `forks_at`, at none <= `not_at` (between
    two grid values: unknown). None: it forks at no grid offset / at every one."""

    forks_at: float | None
    not_at: float | None

    def forks(self, bias: float) -> bool | None:
        if self.forks_at is not None and bias >= self.forks_at:
            return True
        if self.forks_at is None or (self.not_at is not None and bias <= self.not_at):
            return False
        return None


def forks(eng: Engine, prompts: list[str], params: SamplingParams) -> list[bool]:
    """Does greedy ASPD decoding open a block? Each answer stops at its first `<|title|>`."""
    p = params.model_copy(update={"stop_token_ids": params.stop_token_ids + (eng.ids.title,)})
    outs = complete_all(eng, [eng.chat_prompt(x) for x in prompts], p, "aspd")
    return [o.stop_token == eng.ids.title for o in outs]


def sweep(eng: Engine, prompts: list[str], kinds: list[str], params: SamplingParams,
          grid: tuple[float, ...] = GRID, log: Callable[[str], None] = print) -> tuple[list[Point], list[Threshold]]:
    """Fork rates per kind at each offset of a descending grid, and each prompt's threshold."""
    if list(grid) != sorted(grid, reverse=True):
        raise CalibrationError("the grid must be descending")
    forked = [True] * len(prompts)
    forks_at: list[float | None] = [None] * len(prompts)
    not_at: list[float | None] = [None] * len(prompts)
    points = []
    for bias in grid:
        todo = [i for i, f in enumerate(forked) if f]  # the others cannot fork at a lower offset
        result = forks(eng, [prompts[i] for i in todo], params.model_copy(update={"fork_bias": bias}))
        for i, f in zip(todo, result):
            forked[i] = f
            if f:
                forks_at[i] = bias
            elif forks_at[i] is not None:
                not_at[i] = bias
        rate = {k: sum(f for f, kk in zip(forked, kinds) if kk == k) / kinds.count(k) for k in sorted(set(kinds))}
        points.append(Point(bias, rate))
        log(f"fork bias {bias:+.2f}: " + ", ".join(f"{k} {v:.0%}" for k, v in rate.items()))
        if not any(forked):
            break
    return points, [Threshold(f, n) for f, n in zip(forks_at, not_at)]


def choose(points: list[Point], target: float, kind: str = "other") -> Point:
    """The largest offset whose fork rate on `kind` is at most `target`."""
    ok = [p for p in points if p.fork_rate[kind] <= target]
    if not ok:
        raise CalibrationError(f"no offset in the grid brings the {kind} fork rate to {target:.0%} or below")
    return max(ok, key=lambda p: p.bias)


@dataclass(frozen=True)
class GatePoint:
    low: float
    high: float
    fork_rate: dict[str, float]  # kind -> share predicted to fork (an unknown counts against the choice)


def gate_rates(low: float, high: float, thresholds: list[Threshold], probs: list[float], kinds: list[str]) -> GatePoint:
    """Fork rates the sweep predicts under gate offsets (low, high): a list-like prompt counts as
    forking only when sure to, any other prompt as forking unless sure not to."""
    hits = {k: 0 for k in set(kinds)}
    for t, p, k in zip(thresholds, probs, kinds):
        f = t.forks(offset(low, high, p))
        hits[k] += (f is True) if k == "listlike" else (f is not False)
    return GatePoint(low, high, {k: hits[k] / kinds.count(k) for k in sorted(hits)})


def choose_gate(thresholds: list[Threshold], probs: list[float], kinds: list[str], target: float,
                grid: tuple[float, ...] = GRID, margin: float = 0.0) -> GatePoint:
    """The gate's offsets: among the grid pairs whose `other` fork rate is at most `target`, the best
    list-like rate minus other rate, each counted `margin` against the pair (list-like prompts with
    every offset `margin` lower, the others with it `margin` higher); ties: as with one offset, the
    least suppression (highest `high`, then highest `low`): answers to list-like prompts harder than
    these still fork. The margin buys room for prompts that are not the calibration split's: without
    it the choice sits right at the threshold of the split's most fork-prone other prompt (v7: low
    -2.0, one prompt forking at -1.75), where unseen ones fork (Vicuna's Fermi questions)."""
    def score(g: GatePoint) -> float:
        lists = gate_rates(g.low - margin, g.high - margin, thresholds, probs, kinds).fork_rate["listlike"]
        others = gate_rates(g.low + margin, g.high + margin, thresholds, probs, kinds).fork_rate["other"]
        return lists - others

    pts = [gate_rates(lo, hi, thresholds, probs, kinds) for lo in grid for hi in grid if hi >= lo]
    ok = [g for g in pts if g.fork_rate["other"] <= target]
    if not ok:
        raise CalibrationError(f"no gate offsets bring the other fork rate to {target:.0%} or below")
    return max(ok, key=lambda g: (score(g), g.high, g.low))


def calibration_prompts(train: list[dict], trained_on: set[str], per_kind: int) -> tuple[list[str], list[str]]:
    """Calibration-split prompts (checked: never trained on), `per_kind` of each kind, in file order."""
    picked: dict[str, list[str]] = {"listlike": [], "other": []}
    for row in train:
        bucket = picked.get(row["kind"])
        if bucket is not None and row["text"] not in trained_on and len(bucket) < per_kind:
            bucket.append(row["text"])
    short = [k for k, v in picked.items() if len(v) < per_kind]
    if short:
        raise CalibrationError(f"not enough unseen training prompts of kind {short} for {per_kind} per kind")
    texts = picked["listlike"] + picked["other"]
    return texts, ["listlike"] * per_kind + ["other"] * per_kind


def write(adapter: Path, chosen: Point, points: list[Point], meta: dict, gate: GatePoint | None = None,
          gate_record: dict | None = None, prompts: list[dict] | None = None) -> Path:
    """Both files at the end, so a failed or interrupted calibration leaves the adapter's as they were
    (without a gate, a stale gate file goes). `prompts`: each prompt's kind, threshold and gate
    probability (for the record)."""
    path = adapter / FORK_BIAS_FILE
    if gate_record is not None:
        (adapter / GATE_FILE).write_text(json.dumps(gate_record) + "\n")
    else:
        (adapter / GATE_FILE).unlink(missing_ok=True)
    sweep = [{"bias": p.bias, "fork_rate": p.fork_rate} for p in points]
    record = {"fork_bias": chosen.bias, "fork_rate": chosen.fork_rate, **meta, "sweep": sweep}
    if gate is not None:
        record["gate"] = {"low": gate.low, "high": gate.high, "fork_rate_predicted": gate.fork_rate}
    if prompts is not None:
        record["prompts"] = prompts
    path.write_text(json.dumps(record, indent=2) + "\n")
    return path
