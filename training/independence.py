"""Are a group's branches really independent? Ask the model itself.

For each branch after the first, compare the base model's mean per-token loss on the branch's
body when it sees only the prefix and its own title (the protocol's mask: what ASPD decoding will
give it) with its loss when the earlier sibling branches are visible too (plain causal attention
over the same tokens). If the siblings lower the loss by more than a calibrated threshold, the
branch depends on them and the group stays serial.
"""

from __future__ import annotations

import torch

from runtime.model_runner import sequence_mask

from .samples import IGNORE, Sample, branch_token_spans

SKIP = 6  # head tokens of a body left out of the comparison
# nats per token. Calibrated on the base model: independent list items gain 0.1-0.7 from seeing
# their siblings, a story told in parts ~2.0, definitions that refer to each other ~2.1.
THRESHOLD = 0.9


@torch.inference_mode()
def sibling_gains(model, sample: Sample) -> list[list[float]]:
    """Per block: for branches 2..k, isolated loss minus loss with the siblings visible."""
    dev = next(model.parameters()).device
    ids = torch.tensor(sample.ids, device=dev)[None]
    iso = model(input_ids=ids, position_ids=torch.tensor(sample.positions, device=dev)[None],
                attention_mask=sequence_mask(sample.tags, dev), use_cache=False).logits[0].float()
    vis = model(input_ids=ids, use_cache=False).logits[0].float()  # causal: every earlier token visible
    iso_nll, vis_nll = _token_nll(iso, ids[0]), _token_nll(vis, ids[0])
    out = []
    for spans in branch_token_spans(sample):
        gains = []
        for a, b in spans[1:]:
            # the body's content: not <|/branch|>, and not its first tokens, where an item restates its
            # title and list format (that is what siblings "help" with most, and it is not content)
            rows = [i for i in range(a, b) if sample.labels[i] != IGNORE][SKIP:-1]
            if rows:
                gains.append(float(iso_nll[rows].mean() - vis_nll[rows].mean()))
        out.append(gains)
    return out


def _token_nll(logits: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
    """nll[i] = -log p(ids[i] | row i-1); nll[0] = 0."""
    lp = torch.log_softmax(logits[:-1], -1).gather(1, ids[1:, None])[:, 0]
    return torch.cat([lp.new_zeros(1), -lp])


def independent(gains: list[float], threshold: float = THRESHOLD) -> bool:
    return bool(gains) and sum(gains) / len(gains) <= threshold
