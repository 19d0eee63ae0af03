"""Sampling parameters, defined once for the engine, the CLI, the DSL and the server."""

from __future__ import annotations

import argparse

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

REPETITION_PENALTY = 1.0  # bench/decoding.py: 5-gram blocking alone never loops and keeps the text most natural
NO_REPEAT_NGRAM_SIZE = 5
MAX_BRANCHES = 8


class SamplingParams(BaseModel):
    """How to pick the next token and when to stop. Greedy when temperature is (about) 0."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    max_new_tokens: int = Field(128, ge=0, description="cap on all generated tokens, branches included")
    temperature: float = Field(0.0, ge=0.0, le=100.0)
    top_p: float = Field(1.0, gt=0.0, le=1.0)
    top_k: int = Field(0, ge=0, description="0 disables top-k")
    min_p: float = Field(0.0, ge=0.0, le=1.0)
    # Anti-loop decoding (runtime/anti_loop.py): on the answer's own words, never on whitespace,
    # punctuation, digits, markup or titles. Defaults: measured by bench/decoding.py.
    repetition_penalty: float = Field(REPETITION_PENALTY, gt=0.0, le=10.0)
    no_repeat_ngram_size: int = Field(NO_REPEAT_NGRAM_SIZE, ge=0, le=64, description="0 or 1: off")
    seed: int | None = None
    stop: tuple[str, ...] = ()
    stop_token_ids: tuple[int, ...] = ()
    ignore_eos: bool = False
    # ASPD caps
    max_branches: int = Field(MAX_BRANCHES, ge=2, le=64)
    max_branch_tokens: int = Field(256, ge=1)
    max_title_tokens: int = Field(16, ge=1)
    fork_bias: float | None = Field(None, ge=-100.0, le=100.0, description=(
        "added to the logit of <|title|> (opening a parallel block) in serial decoding; None: the "
        "loaded adapter's calibrated value (0 without one), for a chat answer its fork gate's"))
    intro_first: bool = Field(False, description=(
        "a chat answer's first line is serial text: until it ends, the offset on <|title|> is at most 0 "
        "(the gate's or fork_bias's from the next line on); slower, text closer to the base model's"))
    # Constrained generation (runtime/grammar.py), SGLang's names; at most one. A constrained call
    # never opens a parallel block: its grammar covers the plain answer.
    regex: str | None = Field(None, description="the output must match this regex (whole)")
    json_schema: str | None = Field(None, description="the output must be JSON valid under this schema (JSON text)")

    @model_validator(mode="before")
    @classmethod
    def _listify(cls, data):
        if isinstance(data, dict):
            data = dict(data)
            if isinstance(data.get("stop"), str):
                data["stop"] = (data["stop"],)
        return data

    @field_validator("regex", "json_schema")
    @classmethod
    def _grammar_ok(cls, v: str | None, info):
        if v is not None:
            from .grammar import check  # llguidance: loaded by the first constrained request only
            check(info.field_name, v)
        return v

    @model_validator(mode="after")
    def _one_grammar(self):
        if self.regex is not None and self.json_schema is not None:
            raise ValueError("give at most one of regex and json_schema")
        return self

    @property
    def grammar(self) -> tuple[str, str] | None:
        """(kind, source) of the output's grammar, or None."""
        if self.regex is not None:
            return "regex", self.regex
        if self.json_schema is not None:
            return "json_schema", self.json_schema
        return None

    @property
    def anti_loop(self) -> dict:
        """The anti-loop settings, as benchmarks record them."""
        return {"repetition_penalty": self.repetition_penalty, "no_repeat_ngram_size": self.no_repeat_ngram_size}

    @property
    def greedy(self) -> bool:
        return self.temperature < GREEDY_BELOW


GREEDY_BELOW = 1e-5  # a smaller temperature is greedy, as in SGLang (dividing by 1e-300 gives inf logits)
DEFAULTS = SamplingParams()


def anti_loop_args(p: argparse.ArgumentParser) -> None:
    """The anti-loop rule's flags (runtime/anti_loop.py); unset: SamplingParams' measured defaults."""
    p.add_argument("--repetition-penalty", type=float, default=None,
                   help=f"on the answer's own words only (default {REPETITION_PENALTY})")
    p.add_argument("--no-repeat-ngram-size", type=int, default=None,
                   help=f"ban repeating an n-gram of the answer; 0: off (default {NO_REPEAT_NGRAM_SIZE})")


def anti_loop_from(args: argparse.Namespace) -> dict:
    """The anti-loop flags that were set, as SamplingParams fields."""
    return {k: v for k, v in (("repetition_penalty", args.repetition_penalty),
                              ("no_repeat_ngram_size", args.no_repeat_ngram_size)) if v is not None}


def structure_args(p: argparse.ArgumentParser) -> None:
    """ASPD mode's structure flags (docs/usage.md, "Speed against text"); unset: SamplingParams' defaults."""
    p.add_argument("--max-branches", type=int, default=None,
                   help=f"ASPD mode: at most this many branches a block (default {MAX_BRANCHES})")
    p.add_argument("--intro-first", action="store_true",
                   help="ASPD mode: a chat answer's first line is serial text (slower; closer to the base model's)")


def structure_from(args: argparse.Namespace) -> dict:
    """The structure flags that were set, as SamplingParams fields."""
    return ({"max_branches": args.max_branches} if args.max_branches is not None else {}) | (
        {"intro_first": True} if args.intro_first else {})


def describe_structure(d: dict) -> str:
    """The structure settings a record's fields hold where they are not the defaults, as reports say them."""
    parts = ([f"at most {d['max_branches']} branches a block"] if d.get("max_branches", MAX_BRANCHES) != MAX_BRANCHES
             else []) + (["a chat answer's first line serial"] if d.get("intro_first") else [])
    return "".join(", " + x for x in parts)


def describe_anti_loop(d: dict) -> str:
    """Anti-loop settings as reports say them, from a record's fields (older records: a penalty only)."""
    n = d.get("no_repeat_ngram_size", 0)
    return f"repetition penalty {d.get('repetition_penalty', 1.0)}" + (f", no repeated {n}-grams" if n else "")
