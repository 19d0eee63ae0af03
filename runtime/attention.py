"""Attention backends of the decoding step.

    sdpa        torch's scaled_dot_product_attention with the protocol's dense mask: CPU and CUDA,
                the reference every other backend is checked against
    flashinfer  FlashInfer's two-level cascade (`MultiLevelCascadeAttentionWrapper`) over a token
                pool, planned by `attention_plan`: the shared prefix once per sequence, each
                branch's own tokens apart (CUDA only)
    cascade     the same plan computed by `cascade_reference` in torch (any device: tests, checks)

`cascade_reference` computes in torch exactly what the cascade kernels compute (each level's
attention with its log-sum-exp, then the merge), so the plan and the merge are tested on the CPU.
`register()` puts the cascade behind transformers' attention interface as "aspd_cascade": any model
whose attention goes through that interface runs it when called with `aspd_plan=` (FlashInfer on
CUDA, the torch reference elsewhere).
"""

from __future__ import annotations

import functools
import importlib.util
import math

import torch

from .attention_plan import CascadePlan, Level
from .errors import UserError

BACKENDS = ("auto", "sdpa", "flashinfer", "cascade")  # cascade: FlashInfer's computation in torch (any device)
INTERFACE_NAME = "aspd_cascade"


class AttentionUnavailable(UserError, RuntimeError):
    """The requested backend cannot run here (no CUDA device, FlashInfer not installed)."""


@functools.cache  # asked in every layer of every step
def flashinfer_installed() -> bool:
    return importlib.util.find_spec("flashinfer") is not None


def choose(name: str, device: torch.device) -> str:
    """auto: FlashInfer on a CUDA device when it is installed, SDPA otherwise."""
    if name not in BACKENDS:
        raise ValueError(f"unknown attention backend {name!r}: one of {', '.join(BACKENDS)}")
    if name == "auto":
        return "flashinfer" if device.type == "cuda" and flashinfer_installed() else "sdpa"
    if name == "flashinfer":
        if device.type != "cuda":
            raise AttentionUnavailable(f"FlashInfer needs a CUDA device; this model is on {device.type} "
                                       "(use --attention sdpa or auto)")
        if not flashinfer_installed():
            raise AttentionUnavailable("FlashInfer is not installed: pip install flashinfer-python")
    return name


def _expand_kv(x: torch.Tensor, heads: int) -> torch.Tensor:
    """[Hkv, L, D] -> [Hq, L, D] for grouped-query attention."""
    return x.repeat_interleave(heads // x.shape[0], dim=0)


def sdpa(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor, scale: float | None = None):
    """q [Hq, n, D], k/v [Hkv, L, D], mask [n, L] bool -> [Hq, n, D]."""
    k, v = _expand_kv(k, q.shape[0]), _expand_kv(v, q.shape[0])
    return torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=scale)


def _level(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, lvl: Level, scale: float):
    """One level: output [Hq, n, D] and log-sum-exp [Hq, n] (-inf where a query has no key here)."""
    hq, n, d = q.shape
    out = q.new_zeros(hq, n, d, dtype=torch.float32)
    lse = torch.full((hq, n), -math.inf, dtype=torch.float32, device=q.device)
    for r in range(len(lvl.qo_indptr) - 1):
        q0, q1 = lvl.qo_indptr[r], lvl.qo_indptr[r + 1]
        idx = torch.tensor(lvl.kv_indices[lvl.kv_indptr[r]:lvl.kv_indptr[r + 1]], device=q.device, dtype=torch.long)
        if q1 == q0 or idx.numel() == 0:
            continue
        s = torch.einsum("hqd,hkd->hqk", q[:, q0:q1].float(), _expand_kv(k[:, idx], hq).float()) * scale
        if lvl.causal:  # bottom-right aligned: row i sees the first len - m + i + 1 keys
            m, nk = q1 - q0, idx.numel()
            allowed = torch.arange(nk, device=q.device)[None] <= torch.arange(nk - m, nk, device=q.device)[:, None]
            s = s.masked_fill(~allowed, -math.inf)
        lse[:, q0:q1] = torch.logsumexp(s, -1)
        out[:, q0:q1] = torch.softmax(s, -1) @ _expand_kv(v[:, idx], hq).float()
    return out, lse


def merge(o_a: torch.Tensor, s_a: torch.Tensor, o_b: torch.Tensor, s_b: torch.Tensor) -> torch.Tensor:
    """Merge two partial attentions over disjoint key sets by their log-sum-exps (FlashInfer's merge_state)."""
    s = torch.logaddexp(s_a, s_b)
    w_a = torch.exp(s_a - s).nan_to_num(0.0)[..., None]
    w_b = torch.exp(s_b - s).nan_to_num(0.0)[..., None]
    return o_a * w_a + o_b * w_b


def cascade_reference(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, plan: CascadePlan,
                      scale: float | None = None) -> torch.Tensor:
    """What the cascade computes. q [Hq, n, D] in the step's query order; k/v [Hkv, pool, D].
    Returns [Hq, n, D] in the step's query order."""
    scale = q.shape[-1] ** -0.5 if scale is None else scale
    order = torch.tensor(plan.order, device=q.device, dtype=torch.long)
    qp = q[:, order]
    o0, s0 = _level(qp, k, v, plan.shared, scale)
    o1, s1 = _level(qp, k, v, plan.own, scale)
    out = torch.empty_like(qp, dtype=torch.float32)
    out[:, order] = merge(o0, s0, o1, s1)
    return out.to(q.dtype)


class FlashInferCascade:
    """FlashInfer's multi-level cascade over a token pool with page size 1 (CUDA)."""

    def __init__(self, device: torch.device, workspace_mb: int = 128):
        import flashinfer

        self.device = device
        self.workspace = torch.empty(workspace_mb * 1024 * 1024, dtype=torch.uint8, device=device)
        self.wrapper = flashinfer.MultiLevelCascadeAttentionWrapper(2, self.workspace, "NHD")
        self.plan_: CascadePlan | None = None

    def plan(self, p: CascadePlan, num_qo_heads: int, num_kv_heads: int, head_dim: int,
             dtype: torch.dtype) -> None:
        def t(xs):
            return torch.tensor(xs, dtype=torch.int32, device=self.device)

        levels = (p.shared, p.own)
        self.wrapper.plan([t(lv.qo_indptr) for lv in levels], [t(lv.kv_indptr) for lv in levels],
                          [t(lv.kv_indices) for lv in levels], [t(lv.last_page_len) for lv in levels],
                          num_qo_heads, num_kv_heads, head_dim, 1, causal=True, q_data_type=dtype)
        self.plan_ = p

    def run(self, q: torch.Tensor, kv_pool: torch.Tensor) -> torch.Tensor:
        """q [n, Hq, D] in the step's query order; kv_pool [pool, 2, 1, Hkv, D]. Returns [n, Hq, D]."""
        order = torch.tensor(self.plan_.order, device=q.device, dtype=torch.long)
        out = torch.empty_like(q)
        out[order] = self.wrapper.run(q[order].contiguous(), kv_pool)
        return out


# --------------------------------------------------------------------------- transformers' interface

_flashinfer: dict[torch.device, FlashInferCascade] = {}


def _interface(module, query, key, value, attention_mask, scaling=None, dropout=0.0, aspd_plan=None, **kwargs):
    """transformers' attention signature: query [B, Hq, n, D], key/value [B, Hkv, L, D] (the cache
    after this step's update; B must be 1: a sequence is its own pool). Returns ([B, n, Hq, D], None)."""
    if aspd_plan is None:
        raise ValueError("the aspd_cascade attention needs the step's plan: call the model with aspd_plan=")
    if query.shape[0] != 1:
        raise ValueError("aspd_cascade attention runs one sequence per call (batch size 1)")
    q, k, v = query[0], key[0], value[0]
    if q.device.type == "cuda" and flashinfer_installed() and all(aspd_plan.shared.last_page_len):
        fi = _flashinfer.get(q.device)
        if fi is None:
            fi = _flashinfer[q.device] = FlashInferCascade(q.device)
        if fi.plan_ is not aspd_plan:  # once per step, shared by every layer
            fi.plan(aspd_plan, q.shape[0], k.shape[0], q.shape[-1], q.dtype)
        pool = torch.stack([k.transpose(0, 1), v.transpose(0, 1)], dim=1)[:, :, None]  # [L, 2, 1, Hkv, D]
        out = fi.run(q.transpose(0, 1).contiguous(), pool)
        return out[None], None
    # elsewhere, and for a step with a request that shares nothing (a fresh prompt: FlashInfer wants
    # at least one key per request and level), the torch reference computes the same thing
    out = cascade_reference(q, k, v, aspd_plan, scaling)
    return out.transpose(0, 1)[None].contiguous(), None


def register() -> str:
    """Make "aspd_cascade" an attention implementation transformers models can be set to."""
    from transformers import AttentionInterface

    AttentionInterface.register(INTERFACE_NAME, _interface)
    return INTERFACE_NAME
