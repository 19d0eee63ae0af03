"""Optional LLM-as-a-judge grading with FastChat's single-answer prompts (1-10), over any
OpenAI-compatible endpoint. Math and coding questions are graded against the reference answer."""

from __future__ import annotations

import json
import re
from pathlib import Path

import httpx

PROMPTS = Path(__file__).resolve().parent / "data" / "judge_prompts.jsonl"
REFERENCES = Path(__file__).resolve().parent / "data" / "vicuna80" / "reference_answer_gpt-4.jsonl"
NEED_REFERENCE = frozenset({"math", "coding", "reasoning"})
_RATING = re.compile(r"\[\[(\d+\.?\d*)\]\]")
_RATING_LOOSE = re.compile(r"\[(\d+\.?\d*)\]")


def rating(reply: str) -> float | None:
    """FastChat's parse: "[[8]]" (or "[8]"); None when the judge gave no rating."""
    m = _RATING.search(reply) or _RATING_LOOSE.search(reply)
    return float(m.group(1)) if m else None


def references(path: Path = REFERENCES) -> dict[str, str]:
    if not path.exists():
        return {}
    rows = [json.loads(x) for x in path.read_text().splitlines() if x.strip()]
    return {str(r["question_id"]): r["choices"][0]["turns"][0] for r in rows}


class Grader:
    def __init__(self, url: str, model: str = "default", timeout: float = 300):
        self.url, self.model = url.rstrip("/"), model
        prompts = {p["name"]: p for p in map(json.loads, PROMPTS.read_text().splitlines())}
        self.plain, self.with_ref = prompts["single-v1"], prompts["single-math-v1"]
        self.refs = references()
        self.client = httpx.Client(timeout=timeout)

    def grade(self, question_id: str, category: str, question: str, answer: str) -> float | None:
        ref = self.refs.get(question_id) if category in NEED_REFERENCE else None
        p = self.with_ref if ref is not None else self.plain
        content = p["prompt_template"].format(question=question, answer=answer, ref_answer_1=ref or "")
        r = self.client.post(self.url + "/v1/chat/completions", json={
            "model": self.model, "temperature": 0, "max_tokens": 1024,
            "messages": [{"role": "system", "content": p["system_prompt"]}, {"role": "user", "content": content}]})
        r.raise_for_status()
        return rating(r.json()["choices"][0]["message"]["content"])
