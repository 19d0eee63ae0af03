"""OpenAI's completions and chat completions wire formats of `aspd serve`, as pydantic models
validated like SGLang's (`api`): a bad body is a clear 400 naming the field."""

from __future__ import annotations

import json
from typing import Literal

from pydantic import Field, ValidationError, model_validator

from .api import SEED, BadRequest, SessionParams, Wire, WireSampling, first_error
from .grammar import check
from .sampling import DEFAULTS, SamplingParams


class _OpenAIBase(Wire):
    model: str | None = None
    max_tokens: int | None = Field(None, ge=0)
    temperature: float = Field(1.0, ge=0.0, le=2.0)
    top_p: float = Field(1.0, gt=0.0, le=1.0)
    n: int = 1
    stream: bool = False
    stream_options: dict | None = None
    stop: str | list[str] | None = None
    seed: int | None = SEED
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
    fork_bias: float | None = None  # with aspd: the fork offset (None: the adapter's; its gate's for an answer)
    session_params: SessionParams | list | None = None  # {"aspd": {...}}: the two above, through a router
    # text, json_object (a JSON object, as SGLang) or json_schema ({"json_schema": {"schema": {...}}})
    response_format: dict | None = None
    # OpenAI options aspd serve does not implement: refused by name, never silently ignored
    tools: list | None = None
    tool_choice: str | dict | None = None
    functions: list | None = None
    function_call: str | dict | None = None
    logit_bias: dict | None = None
    best_of: int | None = None
    lora_path: str | None = None

    @model_validator(mode="after")
    def _session_aspd(self):
        if isinstance(self.session_params, SessionParams):
            self.aspd = self.aspd or self.session_params.aspd.adaptive
            self.fork_bias = self.session_params.aspd.fork_bias if self.fork_bias is None else self.fork_bias
        return self

    @model_validator(mode="after")
    def _unsupported(self):
        bad = [name for name, unset in (
            ("tools", not self.tools), ("tool_choice", self.tool_choice in (None, "none")),
            ("functions", not self.functions), ("function_call", self.function_call in (None, "none")),
            ("logit_bias", not self.logit_bias), ("best_of", self.best_of in (None, 1)),
            ("lora_path", self.lora_path is None)) if not unset]
        if bad:
            raise ValueError(f"{bad[0]} is not supported by aspd serve")
        self.schema()
        return self

    def schema(self) -> str | None:
        """`response_format` as a JSON schema's text (None: plain text); a shape or schema we cannot
        serve is a ValueError naming response_format."""
        rf = self.response_format
        kind = rf.get("type") if rf is not None else "text"
        if kind == "text":
            return None
        if kind == "json_object":
            return '{"type": "object"}'
        spec = rf.get("json_schema") if kind == "json_schema" else None
        if not isinstance(spec, dict) or not isinstance(spec.get("schema", {}), dict):
            raise ValueError('response_format must be {"type": "text"}, {"type": "json_object"} or '
                             '{"type": "json_schema", "json_schema": {"schema": {...}}}')
        text = json.dumps(spec.get("schema", {}))
        try:
            check("json_schema", text)
        except ValueError as e:
            raise ValueError(f"response_format: {e}") from None
        return text

    def sampling(self, default_max: int, defaults: SamplingParams = DEFAULTS) -> SamplingParams:
        if self.logprobs:
            raise BadRequest("logprobs are not supported on the OpenAI endpoints; use /generate")
        try:
            wire = WireSampling(max_new_tokens=default_max if self.max_tokens is None else self.max_tokens,
                                n=self.n, stop=self.stop, temperature=self.temperature, top_p=self.top_p,
                                top_k=self.top_k, min_p=self.min_p, frequency_penalty=self.frequency_penalty,
                                presence_penalty=self.presence_penalty, repetition_penalty=self.repetition_penalty,
                                no_repeat_ngram_size=self.no_repeat_ngram_size, ignore_eos=self.ignore_eos,
                                seed=self.seed, json_schema=self.schema(), fork_bias=self.fork_bias)
        except ValidationError as e:  # an extension out of range ("min_p": 3): a 400 naming it, not a crash
            raise BadRequest(first_error(e)) from None
        return wire.to_sampling(default_max, defaults)

    @property
    def include_usage(self) -> bool:
        return bool(self.stream_options and self.stream_options.get("include_usage"))


class CompletionRequest(_OpenAIBase):
    prompt: str | list[str] | list[int] | list[list[int]]
    suffix: str | None = None
    echo: bool = False
    max_tokens: int | None = Field(16, ge=0)

    @model_validator(mode="after")
    def _no_echo(self):
        if self.echo:
            raise ValueError("echo is not supported by aspd serve")
        if self.suffix:
            raise ValueError("suffix is not supported by aspd serve")
        return self

    def prompts(self) -> list[tuple[str | None, list[int] | None]]:
        """(text, input_ids) per prompt."""
        p = self.prompt
        if isinstance(p, str):
            return [(p, None)]
        if p and isinstance(p[0], str):
            return [(x, None) for x in p]
        if p and isinstance(p[0], list):
            return [(None, x) for x in p]
        return [(None, list(p))]


class ChatMessage(Wire):
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
