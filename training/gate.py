"""Fit the fork gate (`runtime/fork_gate.py`): a logistic read-out of the adapter's last hidden state at
a chat answer's start, trained to tell list-like prompts from ones that must stay serial.

Labels are the prompts' kinds (the prompt generator's, not the model's answers), so the gate learns
the intent of a question; the weight decay is chosen by k-fold cross-validation on those prompts.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F

from runtime.model_loader import LoadedModel
from runtime.roles import user_prompt

DECAYS = (1e-3, 1e-2, 1e-1)  # weight decay on the standardised features


@torch.inference_mode()
def features(loaded: LoadedModel, prompts: Sequence[str], batch: int = 16) -> torch.Tensor:
    """[n, hidden] float32: the final (normed) hidden state of each chat prompt's last token, the one
    whose logits give the answer's first token. Right padding: causal attention keeps it exact. The
    decoder alone (the head over every position is wasted work), batched in length order (little padding)."""
    tok, decoder = loaded.tokenizer, loaded.model.get_decoder()
    pad = tok.pad_token_id if tok.pad_token_id is not None else 0
    ids = [user_prompt(tok, p) for p in prompts]
    order = sorted(range(len(ids)), key=lambda i: len(ids[i]))
    out = torch.empty(len(ids), loaded.model.config.hidden_size)
    for start in range(0, len(order), batch):
        rows = order[start:start + batch]
        width = max(len(ids[i]) for i in rows)
        x = torch.tensor([ids[i] + [pad] * (width - len(ids[i])) for i in rows], device=loaded.model.device)
        mask = torch.tensor([[1] * len(ids[i]) + [0] * (width - len(ids[i])) for i in rows], device=x.device)
        h = decoder(input_ids=x, attention_mask=mask).last_hidden_state
        out[rows] = h[torch.arange(len(rows)), torch.tensor([len(ids[i]) - 1 for i in rows])].float().cpu()
    return out


def fit(x: torch.Tensor, y: torch.Tensor, decay: float) -> tuple[torch.Tensor, float]:
    """Logistic regression on standardised features; returns (weights, intercept) on the raw features."""
    mu, sd = x.mean(0), x.std(0) + 1e-6
    z = (x - mu) / sd
    w = torch.zeros(z.shape[1], requires_grad=True)
    b = torch.zeros((), requires_grad=True)
    opt = torch.optim.LBFGS([w, b], max_iter=500, line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        loss = F.binary_cross_entropy_with_logits(z @ w + b, y) + decay * (w @ w)
        loss.backward()
        return loss
    opt.step(closure)
    w, b = w.detach(), b.detach()
    return w / sd, float(b - (w * mu / sd).sum())


def accuracy(x: torch.Tensor, y: torch.Tensor, w: torch.Tensor, b: float) -> float:
    return float(((x @ w + b > 0).float() == y).float().mean())


def cross_validate(x: torch.Tensor, y: torch.Tensor, decay: float, folds: int = 5, seed: int = 0) -> float:
    order = list(range(len(y)))
    random.Random(seed).shuffle(order)
    accs = []
    for k in range(folds):
        test = torch.tensor(order[k::folds])
        keep = torch.ones(len(y), dtype=torch.bool)
        keep[test] = False
        w, b = fit(x[keep], y[keep], decay)
        accs.append(accuracy(x[test], y[test], w, b))
    return sum(accs) / folds


def train_gate(loaded: LoadedModel, prompts: list[str], kinds: list[str], log: Callable[[str], None] = print) -> dict:
    """Fit on (prompt, kind) pairs, the decay by cross-validation; the record `calibrate.write` stores."""
    x = features(loaded, prompts)
    y = torch.tensor([k == "listlike" for k in kinds], dtype=torch.float)
    cv = {d: cross_validate(x, y, d) for d in DECAYS}
    decay = max(DECAYS, key=lambda d: (cv[d], d))  # ties: the stronger decay
    w, b = fit(x, y, decay)
    log("gate: " + ", ".join(f"decay {d:g} cv {a:.1%}" for d, a in cv.items()) + f" -> {decay:g}")
    record = {"weights": w.tolist(), "intercept": b, "decay": decay, "cv_accuracy": cv[decay],
              "train_accuracy": accuracy(x, y, w, b), "prompts": len(prompts),
              "listlike": int(y.sum()), "label": "the prompt's kind (listlike = 1)"}
    return record


def probabilities(loaded: LoadedModel, prompts: list[str], record: dict) -> list[float]:
    """The gate's P(list-like) for `prompts`, from the hidden state (the engine reads it from the logits:
    the two differ by the head's rounding, ~0.2 in the logit z)."""
    return torch.sigmoid(features(loaded, prompts) @ torch.tensor(record["weights"]) + record["intercept"]).tolist()
