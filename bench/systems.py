"""The systems `aspd bench` compares; each answers one question and reports what it took.

    hf           transformers `generate` on the base model: what a user would otherwise run
    ar           our engine, parallel markup disallowed (same model as `aspd`: isolates the parallelism)
    aspd         our engine in adaptive mode: the model forks where it decides (the shipped adapter)
    sot          Skeleton-of-Thought, a DSL program (`programs/skeleton_of_thought.py`) on our engine
                 with the base model (a prompting method: it needs no training)
    sglang@URL   any SGLang- or OpenAI-compatible server, over its streaming chat API

Every system gets the same `SamplingParams` (greedy and a repetition penalty by default) and never
emits the ASPD markup unless it is the `aspd` system.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Protocol

import httpx
import torch
from pydantic import BaseModel
from transformers import LogitsProcessorList, StoppingCriteria, StoppingCriteriaList

from runtime.anti_loop import processors
from runtime.engine import Engine
from runtime.sampling import SamplingParams

from .questions import Question

SOT_PROGRAM = Path(__file__).resolve().parents[1] / "programs" / "skeleton_of_thought.py"


class Answer(BaseModel):
    """One system's answer to one question: a line of the bench's JSONL."""

    question_id: int | str
    category: str
    system: str
    text: str
    markup: str | None = None  # the ASPD markup, when the system decoded in ASPD
    latency_s: float
    ttft_s: float | None
    completion_tokens: int
    critical_path_tokens: int  # serial tokens + each parallel block's longest branch
    blocks: int = 0
    branches: int = 0
    parallel_tokens: int = 0
    forward_passes: int | None = None  # the engine's forwards for this answer (None: not our engine)
    seed: int | None = None
    error: str | None = None


class System(Protocol):
    name: str

    def answer(self, q: Question) -> Answer: ...


def _answer(name: str, q: Question, params: SamplingParams, **kw) -> Answer:
    return Answer(question_id=q.question_id, category=q.category, system=name, seed=params.seed, **kw)


class _FirstToken(StoppingCriteria):
    """Notes when generate produced its first token (the criterion runs after every new token)."""

    def __init__(self) -> None:
        self.at: float | None = None

    def __call__(self, input_ids: torch.LongTensor, scores, **kwargs) -> torch.BoolTensor:
        if self.at is None:
            self.at = time.perf_counter()
        return torch.zeros(input_ids.shape[0], dtype=torch.bool, device=input_ids.device)


class HFSystem:
    """transformers' own `generate` (KV cache, one sequence) with the same decoding settings."""

    name = "hf"

    def __init__(self, engine: Engine, params: SamplingParams):
        self.model, self.params = engine.loaded.model, params
        self.engine = engine  # for its chat template and ids only: generation is transformers'
        ids = engine.ids
        self.kwargs = dict(max_new_tokens=params.max_new_tokens, eos_token_id=sorted(ids.eos),
                           pad_token_id=min(ids.eos), suppress_tokens=sorted(ids.markup), do_sample=not params.greedy)
        if not params.greedy:
            self.kwargs.update(temperature=params.temperature, top_p=params.top_p, top_k=params.top_k or None)

    @torch.inference_mode()
    def answer(self, q: Question) -> Answer:
        prompt = self.engine.chat_prompt(q.text)
        ids = torch.tensor([prompt], device=self.model.device)
        first = _FirstToken()
        p = self.params
        rule = processors(self.engine.words, len(prompt), p.repetition_penalty, p.no_repeat_ngram_size,
                          self.engine.utf8)
        if self.params.seed is not None:
            torch.manual_seed(self.params.seed)
        t0 = time.perf_counter()
        out = self.model.generate(input_ids=ids, attention_mask=torch.ones_like(ids),
                                  stopping_criteria=StoppingCriteriaList([first]),
                                  logits_processor=LogitsProcessorList(rule), **self.kwargs)
        latency = time.perf_counter() - t0
        new = out[0, len(prompt):].tolist()
        while new and new[-1] in self.engine.ids.eos:
            new.pop()
        return _answer(self.name, q, self.params, text=self.engine.decode(new), latency_s=latency,
                       ttft_s=None if first.at is None else first.at - t0, completion_tokens=len(new),
                       critical_path_tokens=len(new))


class EngineSystem:
    """Our engine answering alone (one sequence, latency), in AR or ASPD mode."""

    def __init__(self, name: str, engine: Engine, params: SamplingParams, mode: str):
        self.name, self.engine, self.params, self.mode = name, engine, params, mode

    def answer(self, q: Question) -> Answer:
        eng = self.engine
        t0 = time.perf_counter()
        seq = eng.new_sequence(eng.chat_prompt(q.text))
        try:
            out = eng.generate(seq, self.params, self.mode)
        finally:
            eng.release(seq)
        latency = time.perf_counter() - t0
        return _answer(self.name, q, self.params, text=out.text, markup=out.markup if self.mode == "aspd" else None,
                       latency_s=latency, ttft_s=out.ttft_s + (latency - out.total_s),
                       completion_tokens=out.completion_tokens, critical_path_tokens=out.critical_path_tokens,
                       blocks=len(out.blocks), branches=sum(len(b.branch_tokens) for b in out.blocks),
                       parallel_tokens=out.parallel_tokens, forward_passes=out.forward_passes)


class SoTSystem:
    """Skeleton-of-Thought as the DSL program it is, run by the IR executor on our engine, its token
    budget fitted to max_new_tokens (outline, expansions and conclusion together)."""

    name = "sot"

    def __init__(self, engine: Engine, params: SamplingParams, program: Path = SOT_PROGRAM):
        import importlib.util

        from aspd_lang.executor import EngineExecutor

        spec = importlib.util.spec_from_file_location("aspd_bench_sot", program)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        self.params, self.answer_start = params, module.ANSWER_START
        self.program = module.for_budget(params.max_new_tokens)
        self.executor = EngineExecutor(engine, params)

    def answer(self, q: Question) -> Answer:
        t0 = time.perf_counter()
        r = self.executor.run(self.program, question=q.text)
        latency = time.perf_counter() - t0
        text = r.text.split(self.answer_start, 1)[-1].strip()
        return _answer(self.name, q, self.params, text=text, latency_s=latency,
                       ttft_s=None if r.ttft_s is None else r.ttft_s + (latency - r.seconds),
                       completion_tokens=r.completion_tokens, critical_path_tokens=r.critical_path_tokens,
                       blocks=r.blocks, branches=r.branches, parallel_tokens=r.parallel_tokens)


class HTTPSystem:
    """A server's streaming OpenAI chat API (SGLang, `aspd serve`, vLLM...): latency, first token, usage."""

    def __init__(self, url: str, params: SamplingParams, model: str = "default", timeout: float = 600):
        self.name, self.url, self.params, self.model = f"sglang@{url}", url.rstrip("/"), params, model
        self.client = httpx.Client(timeout=timeout)

    def answer(self, q: Question) -> Answer:
        p = self.params
        body = {"model": self.model, "messages": [{"role": "user", "content": q.text}], "stream": True,
                "stream_options": {"include_usage": True}, "max_tokens": p.max_new_tokens,
                "temperature": p.temperature, "top_p": p.top_p, "repetition_penalty": p.repetition_penalty}
        if p.seed is not None:
            body["seed"] = p.seed
        parts, ttft, tokens = [], None, None
        t0 = time.perf_counter()
        with self.client.stream("POST", self.url + "/v1/chat/completions", json=body) as r:
            if r.status_code != 200:
                raise RuntimeError(f"{self.name}: HTTP {r.status_code}: {r.read().decode()[:300]}")
            for line in r.iter_lines():
                if not line.startswith("data:") or line.strip() == "data: [DONE]":
                    continue
                chunk = json.loads(line[5:])
                for c in chunk.get("choices") or []:
                    piece = (c.get("delta") or {}).get("content") or ""
                    if piece and ttft is None:
                        ttft = time.perf_counter() - t0
                    parts.append(piece)
                if chunk.get("usage"):
                    tokens = chunk["usage"].get("completion_tokens")
        latency = time.perf_counter() - t0
        text = "".join(parts)
        n = tokens if tokens is not None else len(text.split())
        return _answer(self.name, q, p, text=text, latency_s=latency, ttft_s=ttft, completion_tokens=n,
                       critical_path_tokens=n)
