"""The optional LLM judge of a parallel group, over any OpenAI-compatible endpoint (our own server or
a big model elsewhere), with the ASPD paper's rule: three votes, and all three must say yes to all
three questions (the items are independent; the rewrite keeps the answer's format; the answer stays
consistent when the items are written without seeing each other).
"""

from __future__ import annotations

import re

import httpx

from .extract import Group

PROMPT = """You check whether parts of an answer can be written in parallel, each without seeing the others.

Question: {question}

Answer:
{answer}

The parts:
{parts}

Reply with exactly three lines:
independent: yes or no (could each part be written without reading the other parts?)
format: yes or no (do the parts keep the answer's own format, each a complete item?)
consistent: yes or no (would the answer still read as one consistent answer?)"""

_VERDICT = re.compile(r"^\s*(independent|format|consistent)\s*:\s*(yes|no)\b", re.I | re.M)


class Judge:
    def __init__(self, url: str, model: str = "default", votes: int = 3, timeout: float = 120):
        self.url, self.model, self.votes = url.rstrip("/"), model, votes
        self.client = httpx.Client(timeout=timeout)
        self.calls = 0

    def __call__(self, question: str, answer: str, group: Group) -> bool:
        parts = "\n".join(f"[{i + 1}] {answer[a:b].strip()}" for i, (a, b) in enumerate(group.items))
        msg = PROMPT.format(question=question, answer=answer, parts=parts)
        return all(self._vote(msg, seed) for seed in range(self.votes))

    def _vote(self, msg: str, seed: int) -> bool:
        self.calls += 1
        r = self.client.post(self.url + "/v1/chat/completions", json={
            "model": self.model, "messages": [{"role": "user", "content": msg}], "max_tokens": 32,
            "temperature": 0.7, "seed": seed})
        r.raise_for_status()
        return verdict(r.json()["choices"][0]["message"]["content"])


def verdict(text: str) -> bool:
    """True only if the reply says yes to all three questions (an unparseable reply is a no)."""
    found = {k.lower(): v.lower() for k, v in _VERDICT.findall(text)}
    return set(found) == {"independent", "format", "consistent"} and all(v == "yes" for v in found.values())
