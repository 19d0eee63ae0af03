"""Serial-parallel fine-tuning: LoRA (peft) on every linear layer plus trainable rows for the six
markup tokens only, loss on the whole answer, each sample run with the protocol's mask and
position ids (`runtime.model_runner.sequence_mask`, `runtime.protocol.layout`: the engine's code).

Resumable: every `checkpoint_every` optimizer steps the adapter, the optimizer, the step and the
loss history are saved; `train(...)` continues from the last checkpoint in `out`.
"""

from __future__ import annotations

import hashlib
import json
import math
import random
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from pydantic import BaseModel

from runtime.model_loader import quiet_peft
from runtime.model_runner import sequence_mask
from runtime.protocol import SERIAL_TAG, SpecialIds, layout

from .samples import IGNORE, Sample, reading_order

TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


@dataclass(frozen=True)
class TrainConfig:
    rank: int = 8
    alpha: int = 16
    lr: float = 3e-4
    epochs: float = 1.0
    accum: int = 8  # samples per optimizer step
    batch: int = 4  # samples per forward (of similar length, padded): bigger matmuls for both cores
    max_len: int = 768  # longer samples are skipped
    seed: int = 0
    checkpoint_every: int = 20  # optimizer steps
    warmup: int = 10
    token_lr: float | None = None  # learning rate of the markup rows (default: lr)
    markup_weight: float = 1.0  # loss weight of markup tokens (the fork decisions are a few tokens per answer)
    anchor: float = 0.0  # on serial answers, this share of the loss is the KL to the base model (adapter off)
    anchor_branches: float = 0.0  # the anchor's share on answers with a block (their text as a reader sees it)
    anchor_blind: bool = False  # ... on their branch bodies only, each read alone (`Anchor.blind`)


class History(BaseModel):
    step: int = 0  # optimizer steps done
    losses: list[float] = []  # mean loss per optimizer step
    seconds: float = 0.0


def lora(model, ids: SpecialIds, cfg: TrainConfig):
    from peft import LoraConfig, get_peft_model

    rows = sorted(ids.markup)
    tokens = {"embed_tokens": rows}  # a tied output layer follows its embedding rows
    if not getattr(model.config, "tie_word_embeddings", False):
        tokens["lm_head"] = rows
    conf = LoraConfig(r=cfg.rank, lora_alpha=cfg.alpha, lora_dropout=0.0, target_modules=TARGETS,
                      trainable_token_indices=tokens, task_type="CAUSAL_LM")
    with quiet_peft():
        return get_peft_model(model, conf)


@dataclass(frozen=True)
class Anchor:
    """Keeps the adapter's text near the base model's: `weight` of each token's loss is KL(base ||
    adapted), the base being the same model with the adapter disabled and its markup logits removed.
    The answers are the base model's own greedy text, so the label alone pins its top token only; the
    KL pins the whole distribution, which is what decides the text on prompts training never saw (the
    adapter's drift, docs/training.md). The base reads the answer as its text reads
    (`samples.reading_order`): on a serial answer, exactly the sample. With `branches` > 0, answers with
    a block are anchored too, with that share: a branch body's tokens (past its restated title) to the base model's
    distribution after the earlier siblings' bodies, which the branch does not see but a reader of the
    joined answer does; markup stays on its label. Without it (the default until v14) only serial
    answers are anchored. `blind`: instead, only the branch bodies are anchored, each to the base model
    reading it alone after the text before its block (the protocol's mask), as the branch is decoded;
    the serial text of answers with a block keeps its labels."""
    weight: float
    ids: SpecialIds
    branches: float = 0.0
    blind: bool = False

    def share(self, s: Sample) -> float:
        return self.weight if self.ids.markup.isdisjoint(s.ids) else self.branches


def sample_loss(model, s: Sample, weights: torch.Tensor | None = None, anchor: Anchor | None = None) -> torch.Tensor:
    """Mean next-token loss over the labelled tokens, with the protocol's mask and positions;
    `weights[token id]` scales each target's loss (None: all 1)."""
    return batch_loss(model, [s], weights, anchor)


def batch_loss(model, samples: list[Sample], weights: torch.Tensor | None = None,
               anchor: Anchor | None = None) -> torch.Tensor:
    """The mean over `samples` of each one's `sample_loss`, in one padded forward. Each sample keeps
    its own protocol mask and positions; a pad token sees only itself and is never a target."""
    dev = next(model.parameters()).device
    n = max(len(s.ids) for s in samples)
    ids = torch.zeros(len(samples), n, dtype=torch.long, device=dev)
    pos = torch.zeros_like(ids)
    labels = torch.full_like(ids, IGNORE)
    mask = torch.eye(n, dtype=torch.bool, device=dev).repeat(len(samples), 1, 1, 1)
    for i, s in enumerate(samples):
        k = len(s.ids)
        ids[i, :k], pos[i, :k] = torch.tensor(s.ids), torch.tensor(s.positions)
        labels[i, :k - 1] = torch.tensor(s.labels[1:])
        mask[i, :, :k, :k] = sequence_mask(s.tags, dev)
    logits = model(input_ids=ids, position_ids=pos, attention_mask=mask, use_cache=False).logits.float()
    per = torch.nn.functional.cross_entropy(logits.flatten(0, 1), labels.flatten(), ignore_index=IGNORE,
                                            reduction="none").view_as(labels)
    shares = {} if anchor is None else {i: w for i, s in enumerate(samples) if (w := anchor.share(s))}
    if shares:
        for i, at, kl in _base_kl(model, samples, list(shares), logits, anchor):
            per[i, at] = (1 - shares[i]) * per[i, at] + shares[i] * kl
    w = (labels != IGNORE).float()
    if weights is not None:
        w = w * weights.to(dev)[labels.clamp(min=0)]
    return ((per * w).sum(1) / w.sum(1)).mean()


def _base_kl(model, samples: list[Sample], rows: list[int], logits: torch.Tensor, anchor: Anchor):
    """For each sample of `rows` (not empty): (row, positions, KL(base || adapted) there) over the positions
    whose next token a reader of the answer's text sees (markup and restated titles excepted), the base
    being the peft model with its adapters off, reading that text as one causal sequence. `anchor.blind`,
    on an answer with a block: the base reads the text with the protocol's tags, mask and positions, so
    that each branch body sees the text before its block and itself only, as it is decoded (one forward
    for all of an answer's branches), and only the bodies are anchored."""
    ids, dev = anchor.ids, logits.device
    views = [(i, *reading_order(samples[i], ids)) for i in rows]  # (row, token indices read, restated)
    n = max(len(order) for _, order, _ in views)
    text = torch.zeros(len(views), n, dtype=torch.long, device=dev)
    pos = torch.zeros_like(text)
    mask = torch.eye(n, dtype=torch.bool, device=dev).repeat(len(views), 1, 1, 1)  # a pad sees only itself
    for k, (i, order, _) in enumerate(views):
        s, m = samples[i], len(order)
        tags = [s.tags[j] if anchor.blind else SERIAL_TAG for j in order]
        text[k, :m] = torch.tensor([s.ids[j] for j in order])
        pos[k, :m] = torch.tensor(layout(tags))
        mask[k, :, :m, :m] = sequence_mask(tags, dev)
    with torch.no_grad(), model.disable_adapter():
        ref = model(input_ids=text, position_ids=pos, attention_mask=mask, use_cache=False).logits.float()
    ref[..., sorted(ids.markup)] = -1e4  # not -inf: 0 * log 0 must stay 0
    out = []
    for k, (i, order, restated) in enumerate(views):
        s = samples[i]
        bodies = anchor.blind and any(t.block > 0 for t in s.tags)  # else every token a reader sees
        pairs = [(j, r) for r, j in enumerate(order) if j >= s.prompt_len and s.labels[j] != IGNORE
                 and j not in restated and s.ids[j] not in ids.markup and (not bodies or s.tags[j].block > 0)]
        if pairs:  # the logits at j - 1 predict token j
            at = torch.tensor([j - 1 for j, _ in pairs], device=dev)
            logp = torch.log_softmax(ref[k, [r - 1 for _, r in pairs]], -1)
            out.append((i, at, (logp.exp() * (logp - torch.log_softmax(logits[i, at], -1))).sum(-1)))
    return out

def train(model, ids: SpecialIds, samples: list[Sample], ckpt: Path, cfg: TrainConfig, log=print,
          init: dict | None = None):
    """Fine-tune; returns the peft model and the history. Checkpoints to, and resumes from, `ckpt`.
    `init`: an adapter state to start from (a second stage)."""
    samples = [s for s in samples if len(s.ids) <= cfg.max_len]
    order = list(range(len(samples)))
    random.Random(cfg.seed).shuffle(order)
    total = max(1, math.floor(len(order) * cfg.epochs / cfg.accum))
    order = (order * math.ceil(cfg.epochs + 1))[:total * cfg.accum]
    torch.manual_seed(cfg.seed)
    pm = lora(model, ids, cfg)
    if init is not None:
        from peft import set_peft_model_state_dict
        set_peft_model_state_dict(pm, init)
    params = [p for p in pm.parameters() if p.requires_grad]
    rows = [p for n, p in pm.named_parameters() if p.requires_grad and "trainable_tokens" in n]
    rest = [p for n, p in pm.named_parameters() if p.requires_grad and "trainable_tokens" not in n]
    opt = torch.optim.AdamW([{"params": rest, "lr": cfg.lr}, {"params": rows, "lr": cfg.token_lr or cfg.lr}],
                            weight_decay=0.0)
    weights = None
    if cfg.markup_weight != 1.0:
        weights = torch.ones(model.get_output_embeddings().weight.shape[0])
        weights[sorted(ids.markup)] = cfg.markup_weight
    anchored = cfg.anchor or cfg.anchor_branches
    anchor = Anchor(cfg.anchor, ids, cfg.anchor_branches, cfg.anchor_blind) if anchored else None
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda k: min(1.0, (k + 1) / cfg.warmup) * max(0.05, 1 - k / total))
    hist = History()
    run = fingerprint(samples, cfg, init)
    if (ckpt / "state.pt").exists():
        state = torch.load(ckpt / "state.pt", weights_only=False)
        if state.get("run") != run:  # resuming another run's state would silently train the wrong thing
            raise ValueError(f"{ckpt} holds the checkpoint of another run (other samples, settings or start); "
                             "move it away or train into another data directory")
        from peft import set_peft_model_state_dict
        set_peft_model_state_dict(pm, state["adapter"])
        opt.load_state_dict(state["optimizer"])
        sched.load_state_dict(state["scheduler"])
        hist = History.model_validate(state["history"])
        log(f"resumed at step {hist.step} of {total}")
    pm.train()
    t0 = time.perf_counter() - hist.seconds
    while hist.step < total:
        group = sorted(order[hist.step * cfg.accum:(hist.step + 1) * cfg.accum], key=lambda i: len(samples[i].ids))
        acc = 0.0
        for k in range(0, len(group), cfg.batch):  # neighbours in length share a forward: little padding
            part = group[k:k + cfg.batch]
            loss = batch_loss(pm, [samples[i] for i in part], weights, anchor) * len(part) / len(group)
            loss.backward()
            acc += loss.item()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        sched.step()
        opt.zero_grad(set_to_none=True)
        hist.step += 1
        hist.losses.append(acc)
        hist.seconds = time.perf_counter() - t0
        if hist.step % 5 == 0 or hist.step == total:
            log(f"step {hist.step}/{total} loss {acc:.3f} ({hist.seconds / hist.step:.1f} s/step)")
        if hist.step % cfg.checkpoint_every == 0 or hist.step == total:
            _save_checkpoint(pm, opt, sched, hist, ckpt, run)
    pm.eval()
    return pm, hist


def fingerprint(samples: list[Sample], cfg: TrainConfig, init: dict | None) -> str:
    """What a checkpoint belongs to: the samples, the settings and the starting adapter."""
    h = hashlib.sha256(json.dumps(asdict(cfg), sort_keys=True).encode())
    for s in samples:
        h.update(repr((s.ids, s.labels)).encode())
    for name, t in sorted((init or {}).items()):
        h.update(name.encode() + t.float().numpy().tobytes())
    return h.hexdigest()[:16]


def _save_checkpoint(pm, opt, sched, hist: History, ckpt: Path, run: str) -> None:
    from peft import get_peft_model_state_dict

    ckpt.mkdir(parents=True, exist_ok=True)
    tmp = ckpt / "state.pt.tmp"
    torch.save({"adapter": get_peft_model_state_dict(pm), "optimizer": opt.state_dict(),
                "scheduler": sched.state_dict(), "history": hist.model_dump(), "run": run}, tmp)
    tmp.replace(ckpt / "state.pt")


def save_adapter(pm, out: Path, hist: History, cfg: TrainConfig, extra: dict) -> None:
    """The adapter directory (PEFT format, bf16 weights), its training record and loss curve."""
    out.mkdir(parents=True, exist_ok=True)
    # The vocabulary grew by the six markup tokens; peft would then save whole embedding matrices.
    # Only their trained rows (the token adapter) and LoRA are needed: the loader adds the tokens first.
    pm.save_pretrained(str(out), save_embedding_layers=False)
    (out / "training.json").write_text(json.dumps({"config": asdict(cfg), "history": hist.model_dump(), **extra},
                                                  indent=2) + "\n")
    plot_losses(hist.losses, out / "loss.png")


def plot_losses(losses: list[float], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.5))
    ax.plot(range(1, len(losses) + 1), losses, lw=0.8, alpha=0.5, label="per step")
    k = max(1, len(losses) // 20)
    smooth = [sum(losses[max(0, i - k):i + 1]) / len(losses[max(0, i - k):i + 1]) for i in range(len(losses))]
    ax.plot(range(1, len(losses) + 1), smooth, lw=2, label=f"mean of {k + 1}")
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("loss (nats/token)")
    ax.set_title("ASPD adapter: serial-parallel fine-tuning")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
