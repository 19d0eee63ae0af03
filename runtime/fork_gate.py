"""The fork gate: how hard a chat answer is pushed to open blocks, read from the prompt.

The adapter's markup rows alone separate list-like prompts from ones that must stay serial
poorly: the one calibrated offset that makes it fork on list-like prompts also makes it fork on
step-by-step estimates. The gate is a logistic read-out of the model's last hidden state at the
answer's start (`training/gate.py` fits it on the training prompts' kinds); its probability `p`
sets that answer's fork offset between the calibrated `low` and `high` (`aspd calibrate`):
`low + (high - low) * p`.

It runs on the logits the engine already computes, not the hidden state: with the head `E`
(logits = E h: no bias, no soft-capping, as in Llama-style models), `v = E (E^T E)^-1 w` gives
`v . logits = w . h` for every h, so no decoder path exposes anything new (through the int8 head
the read-out moves by ~0.2 logits). Fitted on single-turn chat prompts, it also reads multi-turn
chats and system prompts: answers there are pushed as their last message reads.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

import torch

GATE_FILE = "aspd_gate.json"  # the read-out's weights (`aspd calibrate`), next to the adapter


@dataclass(frozen=True, eq=False)
class ForkGate:
    readout: torch.Tensor  # [vocab] float32: w in logit space
    intercept: float
    low: float  # the offset of an answer the gate is sure stays serial (p = 0)
    high: float  # ... of one it is sure is a list-like answer (p = 1)

    def probability(self, logits: torch.Tensor) -> float:
        """P(list-like) from the answer's first-step logits (0.5, no opinion, if they are not finite)."""
        z = float(logits.float() @ self.readout.to(logits.device)) + self.intercept
        return 1.0 / (1.0 + math.exp(-max(-60.0, min(60.0, z)))) if math.isfinite(z) else 0.5

    def fork_bias(self, logits: torch.Tensor) -> float:
        return offset(self.low, self.high, self.probability(logits))

    def offsets(self) -> dict[str, float]:
        return {"low": self.low, "high": self.high}


def offset(low: float, high: float, p: float) -> float:
    """An answer's fork offset for gate probability `p` (the one formula, also used by calibration)."""
    return low + (high - low) * p


def logit_readout(head: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """v with v . (head @ h) == weights . h for every hidden state h (head: [vocab, hidden], full column
    rank; solved in float64: E^T E squares the head's condition number)."""
    e = head.detach().double()
    return (e @ torch.linalg.solve(e.T @ e, weights.double().to(e.device))).float()


def load(adapter: str, head: torch.Tensor, calibration: dict) -> ForkGate | None:
    """The adapter's gate, or None when it has none or its offsets were never calibrated."""
    path = Path(adapter) / GATE_FILE
    if not path.exists() or "gate" not in calibration or head.shape[0] < head.shape[1]:
        return None  # (a head with fewer rows than hidden units cannot carry the read-out)
    rec = json.loads(path.read_text())
    try:
        readout = logit_readout(head, torch.tensor(rec["weights"]))
    except torch.linalg.LinAlgError:  # a rank-deficient head: no read-out, the one offset for every answer
        return None
    return ForkGate(readout=readout, intercept=float(rec["intercept"]),
                    low=float(calibration["gate"]["low"]), high=float(calibration["gate"]["high"]))
