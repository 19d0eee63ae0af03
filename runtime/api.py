"""Wire formats of `aspd serve`: SGLang's /generate and OpenAI's completions, as pydantic models.

Every body is validated here (types, ranges, unsupported options) so that a bad request is a
clear 400 before it reaches the serving loop; `to_sampling` maps each wire format onto the one
`SamplingParams`.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from .sampling import DEFAULTS, SamplingParams


class BadRequest(ValueError):
    """A request the server refuses with 400 (its message says why)."""


class WireSampling(BaseModel):
    """SGLang's `sampling_params` (what RuntimeEndpoint sends), plus the ASPD caps."""

    model_config = ConfigDict(extra="forbid")

    max_new_tokens: int | None = Field(128, ge=0)
    min_new_tokens: int = Field(0, ge=0)
    n: int = 1
    stop: str | list[str] | None = None
    stop_token_ids: list[int] | None = None
    temperature: float = Field(1.0, ge=0.0, le=100.0)
    top_p: float = Field(1.0, gt=0.0, le=1.0)
    top_k: int = -1
    min_p: float = Field(0.0, ge=0.0, le=1.0)
    frequency_penalty: float = 0.0
    presence_penalty: float = 0.0
    repetition_penalty: float | None = Field(None, gt=0.0, le=10.0)  # None: the server's default
    no_repeat_ngram_size: int | None = Field(None, ge=0, le=64)  # None: the server's default
    ignore_eos: bool = False
    skip_special_tokens: bool = True
    spaces_between_special_tokens: bool = True
    no_stop_trim: bool = False
    regex: str | None = None
    json_schema: str | None = None
    ebnf: str | None = None
    structural_tag: str | None = None
    seed: int | None = None
    sampling_seed: int | None = None
    aspd: bool = False
    max_branches: int = Field(8, ge=2, le=64)
    max_branch_tokens: int | None = Field(None, ge=1)  # None: max_new_tokens
    fork_bias: float | None = Field(None, ge=-100.0, le=100.0)  # None: the adapter's calibrated value

    def to_sampling(self, default_max: int, defaults: SamplingParams = DEFAULTS) -> SamplingParams:
        """`defaults`: the server's anti-loop settings, for a request that sets none."""
        for name in ("regex", "json_schema", "ebnf", "structural_tag"):
            if getattr(self, name) is not None:
                raise BadRequest(f"constrained decoding ({name}) is not supported by aspd serve")
        if self.n != 1:
            raise BadRequest("n must be 1 (send a list of texts for several answers)")
        if self.min_new_tokens:
            raise BadRequest("min_new_tokens is not supported")
        if self.frequency_penalty or self.presence_penalty:
            raise BadRequest("frequency_penalty and presence_penalty are not supported; use repetition_penalty")
        if self.top_k < -1:
            raise BadRequest("top_k must be -1 (off) or positive")
        stop = (self.stop,) if isinstance(self.stop, str) else tuple(self.stop or ())
        n = default_max if self.max_new_tokens is None else self.max_new_tokens
        return SamplingParams(
            max_new_tokens=n, temperature=self.temperature, top_p=self.top_p, top_k=max(self.top_k, 0),
            min_p=self.min_p, seed=self.sampling_seed if self.seed is None else self.seed,
            repetition_penalty=_or(self.repetition_penalty, defaults.repetition_penalty),
            no_repeat_ngram_size=_or(self.no_repeat_ngram_size, defaults.no_repeat_ngram_size),
            stop=stop, stop_token_ids=tuple(self.stop_token_ids or ()), ignore_eos=self.ignore_eos,
            max_branches=self.max_branches, max_branch_tokens=self.max_branch_tokens or max(1, n),
            fork_bias=self.fork_bias)


class GenerateRequest(BaseModel):
    """SGLang's /generate body. Unknown top-level fields are ignored (clients send many), unknown
    sampling parameters are not (a typo would silently change the output)."""

    model_config = ConfigDict(extra="ignore")

    text: str | list[str] | None = None
    input_ids: list[int] | list[list[int]] | None = None
    sampling_params: WireSampling = Field(default_factory=WireSampling)
    rid: str | list[str] | None = None
    stream: bool = False
    return_logprob: bool = False
    logprob_start_len: int = -1
    top_logprobs_num: int = Field(0, ge=0, le=20)
    return_text_in_logprobs: bool = False
    image_data: object | None = None
    aspd: bool = False

    @model_validator(mode="after")
    def _one_prompt(self):
        if (self.text is None) == (self.input_ids is None):
            raise ValueError("give exactly one of text and input_ids")
        if self.image_data is not None:
            raise ValueError("images are not supported")
        return self

    def prompts(self) -> list[tuple[str | None, list[int] | None]]:
        """(text, input_ids) per prompt; one for a single request."""
        if self.text is not None:
            texts = [self.text] if isinstance(self.text, str) else self.text
            return [(t, None) for t in texts]
        ids = self.input_ids
        if ids and isinstance(ids[0], list):
            return [(None, x) for x in ids]
        return [(None, ids)]

    @property
    def batched(self) -> bool:
        return isinstance(self.text, list) or bool(self.input_ids and isinstance(self.input_ids[0], list))

    def rids(self, n: int) -> list[str | None]:
        if self.rid is None:
            return [None] * n
        rids = [self.rid] if isinstance(self.rid, str) else self.rid
        if len(rids) != n:
            raise BadRequest(f"{len(rids)} rids for {n} prompts")
        return list(rids)


class AbortRequest(BaseModel):
    rid: str


class JoinRequest(BaseModel):
    src_rids: list[str]
    dst_rid: str


# ----------------------------------------------------------------- OpenAI


class _OpenAIBase(BaseModel):
    model_config = ConfigDict(extra="ignore")

    model: str | None = None
    max_tokens: int | None = Field(None, ge=0)
    temperature: float = Field(1.0, ge=0.0, le=2.0)
    top_p: float = Field(1.0, gt=0.0, le=1.0)
    n: int = 1
    stream: bool = False
    stream_options: dict | None = None
    stop: str | list[str] | None = None
    seed: int | None = None
    frequency_penalty: float = 0.0
    presence_penalty: float = 0.0
    logprobs: bool | int | None = None
    # common extensions (vLLM, SGLang)
    top_k: int = -1
    min_p: float = 0.0
    repetition_penalty: float | None = None
    no_repeat_ngram_size: int | None = None
    ignore_eos: bool = False
    aspd: bool = False

    def sampling(self, default_max: int, defaults: SamplingParams = DEFAULTS) -> SamplingParams:
        if self.logprobs:
            raise BadRequest("logprobs are not supported on the OpenAI endpoints; use /generate")
        return WireSampling(max_new_tokens=default_max if self.max_tokens is None else self.max_tokens,
                            n=self.n, stop=self.stop, temperature=self.temperature, top_p=self.top_p,
                            top_k=self.top_k, min_p=self.min_p, frequency_penalty=self.frequency_penalty,
                            presence_penalty=self.presence_penalty, repetition_penalty=self.repetition_penalty,
                            no_repeat_ngram_size=self.no_repeat_ngram_size, ignore_eos=self.ignore_eos,
                            seed=self.seed).to_sampling(default_max, defaults)

    @property
    def include_usage(self) -> bool:
        return bool(self.stream_options and self.stream_options.get("include_usage"))


class CompletionRequest(_OpenAIBase):
    prompt: str | list[str] | list[int]
    echo: bool = False
    max_tokens: int | None = Field(16, ge=0)

    @field_validator("echo")
    @classmethod
    def _no_echo(cls, v: bool) -> bool:
        if v:
            raise ValueError("echo is not supported")
        return v


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="ignore")

    role: Literal["system", "user", "assistant", "developer", "tool"]
    content: str | list[dict]

    def text(self) -> str:
        if isinstance(self.content, str):
            return self.content
        parts = []
        for p in self.content:
            if p.get("type") != "text":
                raise BadRequest(f"message content of type {p.get('type')!r} is not supported")
            parts.append(str(p.get("text", "")))
        return "".join(parts)


class ChatRequest(_OpenAIBase):
    messages: list[ChatMessage] = Field(min_length=1)
    max_completion_tokens: int | None = Field(None, ge=0)

    def sampling(self, default_max: int, defaults: SamplingParams = DEFAULTS) -> SamplingParams:
        if self.max_tokens is None and self.max_completion_tokens is not None:
            self.max_tokens = self.max_completion_tokens
        return super().sampling(default_max, defaults)


def _or(value, default):
    return default if value is None else value
